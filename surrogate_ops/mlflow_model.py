"""The registered surrogate as an MLflow pyfunc model, logged "from code".

`mlflow.pyfunc.load_model("models:/llvm-mca-haswell@champion").predict(["addq %rax, %rbx"])`
returns cycles per 100 iterations, one per block (NaN for a block that cannot be read), without
the caller importing surrogate_ops: the package travels with the model (`code_paths`) and the
weights, vocabulary and ONNX graph are the model's artifacts. Inference runs on ONNX Runtime's
CPU provider.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class SurrogateModel(PythonModel):
    def load_context(self, context) -> None:
        from surrogate_ops.inference import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"], engine="onnxruntime")

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[float]:
        return [float("nan") if p.cycles is None else p.cycles for p in self.predictor.predict(model_input)]


mlflow.models.set_model(SurrogateModel())
