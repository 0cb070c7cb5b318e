"""Saving a trained surrogate as a model directory, with its ONNX export checked against torch.

The directory (`modeldir.ModelDir`) is what the registry stores and what every engine loads.
`compare` is the one check of a candidate against its reference: torch against ONNX Runtime
here, ONNX Runtime against TVM in the compile stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surrogate_ops import models
from surrogate_ops.blocks.batching import pad, parts
from surrogate_ops.blocks.tokenizer import Tokenizer
from surrogate_ops.config import EngineName
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime.modeldir import PARTS, ModelDir

OPSET = 18
UNITS = "cycles per 100 iterations (llvm-mca Total Cycles at -iterations=100)"


@dataclass(frozen=True)
class Agreement:
    """How far a candidate engine's outputs are from its reference on the same inputs."""

    reference: str
    candidate: str
    max_abs: float
    max_rel: float
    n: int

    def __str__(self) -> str:
        return (f"{self.candidate} vs {self.reference} on {self.n} blocks: max abs diff {self.max_abs:.3g}, "
                f"max rel diff {self.max_rel:.3g}")


def agreement(reference: np.ndarray, candidate: np.ndarray, names: tuple[str, str]) -> Agreement:
    """How far a candidate is from its reference (infinite where the candidate is not finite)."""
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    diff = np.abs(reference - candidate)
    if not np.isfinite(candidate).all():
        return Agreement(names[0], names[1], float("inf"), float("inf"), len(reference))
    return Agreement(names[0], names[1], float(diff.max(initial=0)),
                     float((diff / np.maximum(np.abs(reference), 1e-6)).max(initial=0)), len(reference))


def compare(reference: np.ndarray, candidate: np.ndarray, names: tuple[str, str], rtol: float = 1e-3) -> Agreement:
    """Check a candidate against its reference (torch vs ONNX, ONNX Runtime vs TVM): raise above `rtol`."""
    found = agreement(reference, candidate, names)
    if found.max_rel > rtol:
        raise SurrogateOpsError(f"{found}: above the tolerance {rtol:g}")
    return found


def export_onnx(model: nn.Module, path: Path, example: np.ndarray) -> None:
    """Export with the torch.export-based exporter; batch, instructions and tokens stay dynamic.
    A conditioned model gets a second input, `params` (batch, parameters) float32; a confident
    model's output is (batch, 2), cycles and estimated error."""
    config = model.config
    batch = torch.export.Dim("batch", max=65536)
    dims: tuple = ({0: batch, 1: torch.export.Dim("instructions", max=config.max_instructions),
                    2: torch.export.Dim("tokens", max=config.max_tokens)},)
    inputs: tuple = (torch.from_numpy(example),)
    names = ["tokens"]
    if models.is_conditioned(model):
        dims, names = (*dims, {0: batch}), [*names, "params"]
        inputs = (*inputs, torch.full((example.shape[0], len(config.parameters)), 0.5))
    with _quiet():
        logging.getLogger("torch").setLevel(logging.ERROR)
        torch.onnx.export(model.eval(), inputs, dynamo=True, input_names=names, output_names=[_output(model)],
                          dynamic_shapes=dims, opset_version=OPSET).save(str(path))


class _Parts(nn.Module):
    """A model's `forward_parts` as the forward the exporter traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rows: torch.Tensor, ins: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return self.model.forward_parts(rows, ins, edges)


def export_parts_onnx(model: nn.Module, path: Path, example: np.ndarray) -> None:
    """The network from a batch's parts (`batching.parts`: rows, ins, edges), for a model that takes
    them (`models.takes_parts`); its sizes stay dynamic. Only ONNX Runtime reads this graph (TVM
    builds `model.onnx`), so it goes through the TorchScript exporter: 0.8 s where torch.export
    takes 10-15 s for the bundled network on two cores, once per trained model."""
    rows, ins, edges = (torch.from_numpy(x) for x in parts(example, model.config.max_instructions))
    with _quiet():
        # no folding here: the token table (vocabulary x slots x dim) would be written out whole; ONNX
        # Runtime folds it when it loads the graph, and keeps the result (`engines.optimized_session`)
        torch.onnx.export(_Parts(model.eval()), (rows, ins, edges), str(path), dynamo=False, opset_version=OPSET,
                          do_constant_folding=False, input_names=["rows", "ins", "edges"], output_names=[_output(model)],
                          dynamic_axes={"rows": {0: "distinct", 1: "width"}, "ins": {0: "batch", 1: "instructions"},
                                        "edges": {0: "batch", 2: "instructions", 3: "instructions"}})


def _output(model: nn.Module) -> str:
    return "cycles_and_error" if isinstance(model, models.Confident) else "cycles"


@contextlib.contextmanager
def _quiet():
    """The exporters' warnings and prints kept out of the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def example_batch(tokenizer: Tokenizer, blocks: Sequence[str]) -> np.ndarray:
    """A padded batch of real blocks (at least 2 instructions wide, so export keeps the axis dynamic)."""
    encoded = [tokenizer.encode_block(b) for b in blocks]
    batch = pad(encoded)
    if batch.shape[1] < 2 or batch.shape[2] < 2:
        batch = np.pad(batch, ((0, 0), (0, max(0, 2 - batch.shape[1])), (0, max(0, 2 - batch.shape[2]))))
    return batch


def save_model_dir(model: nn.Module, tokenizer: Tokenizer, meta: dict, path: str | Path,
                   check_blocks: Sequence[str]) -> tuple[ModelDir, Agreement]:
    """Write the model directory (checkpoint, vocabulary, metadata, ONNX graph); returns it with the
    ONNX-vs-torch agreement on `check_blocks` (real blocks), raising when the export disagrees."""
    model = model.eval()
    config = model.config
    full = {**meta, "arch": models.arch_of(model), "config": dataclasses.asdict(config),
            "max_instructions": config.max_instructions, "max_tokens": config.max_tokens, "units": UNITS,
            "parameters": models.parameter_count(model)}
    directory = ModelDir.write(path, models.to_checkpoint(model), tokenizer, full)
    example = example_batch(tokenizer, list(check_blocks)[:4])
    export_onnx(model, directory.onnx, example)
    if models.takes_parts(model):
        export_parts_onnx(model, directory.path / PARTS, example)
    return directory, check_onnx(directory, list(check_blocks)[:64])


def check_onnx(directory: ModelDir, blocks: Sequence[str]) -> Agreement:
    """A model directory's ONNX graph (ONNX Runtime) against its torch checkpoint (torch) on real
    blocks, both through their engines; raises above tolerance."""
    from surrogate_ops.runtime import engines

    tokens = example_batch(directory.tokenizer(), blocks)
    params = None
    if directory.arch == "conditioned":  # settings across the unit cube, a different one per block
        count = len(directory.meta["config"]["parameters"])
        params = np.random.default_rng(0).random((len(tokens), count), dtype=np.float32)
    reference = engines.torch_engine(directory)(tokens, params)
    if directory.parts_onnx is not None:  # the graph from tokens too, which TVM builds from
        compare(reference, engines.onnx_engine(directory, whole=True)(tokens), (EngineName.TORCH, EngineName.ONNXRUNTIME))
    return compare(reference, engines.onnx_engine(directory)(tokens, params), (EngineName.TORCH, EngineName.ONNXRUNTIME))


def onnx_opset(directory: ModelDir) -> int:
    import onnx

    graph = onnx.load(str(directory.onnx), load_external_data=False)
    return max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def relax_module(onnx_path: str | Path, shape_dict: dict | None = None):
    """The ONNX graph imported into TVM Relax (what `compile` and `tuning` build), every lookup
    bounded (`_bounded_takes`); `shape_dict` fixes input shapes (a tuned build's static shape)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return _bounded_takes(from_onnx(onnx.load(str(onnx_path)), shape_dict=shape_dict, keep_params_in_input=False))


def _bounded_takes(mod):
    """`mod` with every `take` in "fast" mode (the ONNX frontend's Gather: the embedding lookups)
    made "clip": an id past the table clamps instead of reading outside it, and TVM no longer
    warns, once per lookup at every compile, that fast mode segfaults on such ids. Answers for ids
    in range are the same (`compile` checks builds against ONNX Runtime), as fast within this machine's noise
    (the bundled Haswell surrogate, medians of 3: 14,345 blocks/s fast, 16,742 clip)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Clip(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.take" and call.attrs.mode == "fast":
                return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="clip")
            return call

    clip = Clip(mod)
    for var, function in mod.functions_items():
        if isinstance(function, relax.Function):
            mod[var] = clip.visit_expr(function)
    return mod
