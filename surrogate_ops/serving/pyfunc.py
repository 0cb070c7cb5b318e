"""The registered surrogate as an MLflow pyfunc model, logged "from code".

    model = mlflow.pyfunc.load_model("models:/llvm-mca-haswell@champion")
    model.predict(["addq %rax, %rbx", "vfoo %xmm0", ".p2align 4"])    # a pandas DataFrame, a row per block

The pyfunc answers as `surrogate-ops predict` and the service do, through the same function
(`serving.Server.answer`, its fallback policy): a row per block, in order, with `cycles` (per 100
iterations), `source` (`surrogate`, `llvm-mca` or `error`), `reason` (why llvm-mca answered: tokens
outside the vocabulary, over the model's instruction limit), `estimated_error` (the surrogate's own
estimate of its relative error, from a model with an error head) and `error` (why a block has no
answer: unreadable text, a directive or a label, llvm-mca's own refusal); a field that does not
apply is None (null in JSON), never a NaN. Where llvm-mca is on the PATH (or
`SURROGATE_OPS_LLVM_MCA`) it answers the blocks the surrogate is not trusted on; where it is not,
those blocks get an error naming the reason, never a number the surrogate was not trusted to give.
`mlflow models serve` answers `{"inputs": [...]}` with the same rows.

The caller imports nothing of surrogate_ops: the package travels with the model (`code_paths`) and
the weights, vocabulary and ONNX graph are the model's artifacts. Inference runs on ONNX Runtime's
CPU provider.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from surrogate_ops.config import EngineName, Source  # light: the settings and the names of choices

COLUMNS = ("cycles", "source", "reason", "estimated_error", "error")


def _row(answer: dict) -> dict:
    """One answer of `Server.answer` as a row of the table (an error has no cycles and source `error`)."""
    if "error" in answer:
        return {"cycles": None, "source": Source.ERROR, "reason": None, "estimated_error": None, "error": answer["error"]}
    return {"cycles": answer["cycles"], "source": answer["source"], "reason": answer.get("reason"),
            "estimated_error": answer.get("estimated_error"), "error": None}


class SurrogateModel(PythonModel):
    def load_context(self, context) -> None:
        from surrogate_ops.runtime.inference import Predictor
        from surrogate_ops.serving.policy import Limits
        from surrogate_ops.serving.server import Server

        predictor = Predictor(context.artifacts["model_dir"], engine=EngineName.ONNXRUNTIME)
        self.mcpu = predictor.meta.get("mcpu", "haswell")
        # a batch, as `predict`'s file, not a request: no block is refused for its length (llvm-mca answers it)
        self.server = Server(predictor, limits=Limits(max_instructions=1 << 30))

    def predict(self, context, model_input: list[str], params: dict | None = None) -> pd.DataFrame:
        from surrogate_ops.errors import SurrogateOpsError
        from surrogate_ops.llvm_tools import find_tool

        try:  # looked up per call: llvm-mca installed later is used without reloading the model
            find_tool("llvm-mca")
            fallback = True
        except SurrogateOpsError:
            fallback = False  # untrusted blocks: an error naming why, not "llvm-mca unavailable"
        answers = self.server.answer(list(model_input), self.mcpu, fallback=fallback)
        # object columns: a missing field is None, null in `mlflow models serve`'s JSON, never a NaN
        return pd.DataFrame([_row(answer) for answer in answers], columns=list(COLUMNS), dtype=object)


mlflow.models.set_model(SurrogateModel())
