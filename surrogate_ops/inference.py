"""End-to-end prediction: assembly text in, cycles out, through one of several engines.

`Predictor` does the whole path: check and normalize each block, tokenize (cached per distinct
instruction), bucket by length, pad, run the engine, put answers back in input order. Engines
share one call signature, `engine(tokens: int64 (batch, instructions, tokens)) -> float32 (batch,)`:
torch (the training module), ONNX Runtime, and TVM builds (see `surrogate_ops.compile`).

A model directory (what the registry stores) holds:
    surrogate.json  architecture, limits, mcpu, target, units
    vocab.json      the tokenizer's vocabulary
    model.pt        torch checkpoint (for fine-tuning and the torch engine)
    model.onnx      the ONNX export (for ONNX Runtime and TVM)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surrogate_ops.batching import run_batched
from surrogate_ops.blocks.asm import PREFIXES, BlockError, normalize_block
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.tokenizer import Tokenizer

Engine = Callable[[np.ndarray], np.ndarray]
_SKIP, _SLOW = object(), object()  # line-cache markers: a blank line; a bare prefix (general path)


@dataclass(frozen=True)
class Prediction:
    """A block's predicted cycles per 100 iterations, or why there is none; unknown tokens listed."""

    cycles: float | None = None
    error: str | None = None
    unknown: tuple[str, ...] = field(default=())


def torch_engine(model_dir: Path, threads: int | None = None) -> Engine:
    import torch

    from surrogate_ops import models

    if threads:
        torch.set_num_threads(threads)
    model = models.from_checkpoint(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)).eval()

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            extra = () if params is None else (torch.from_numpy(params),)
            return model(torch.from_numpy(tokens), *extra).numpy()

    return run


def onnx_engine(model_dir: Path, threads: int | None = None) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        return session.run(None, {"tokens": tokens} if params is None else {"tokens": tokens, "params": params})[0]

    return run


def torch_cuda_engine(model_dir: Path, threads: int | None = None) -> Engine:
    import torch

    from surrogate_ops import models

    if not torch.cuda.is_available():
        raise SurrogateOpsError("the torch-cuda engine needs a CUDA GPU, and torch sees none here")
    checkpoint = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    model = models.from_checkpoint(checkpoint).eval().cuda()

    def run(tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(tokens).cuda(non_blocking=True)).float().cpu().numpy()

    return run


def _tvm_build(model_dir: Path, target: str, device: str) -> Engine:
    from surrogate_ops.compile import load_engine, runs_here, targets
    from surrogate_ops.tuning import StaticEngine

    library = model_dir / "builds" / f"{target}.so"
    if not library.is_file():
        raise SurrogateOpsError(f"{model_dir} has no TVM build for {target}; "
                                f"make one with `surrogate-ops compile --target {target}`")
    if not runs_here(targets()[target]):
        raise SurrogateOpsError(f"the {target} build loads only on {targets()[target]['runs_on']}, not on this machine")
    engine = load_engine(library, device)
    tuned = model_dir / "builds" / f"{target}-tuned.json"
    if tuned.is_file():
        record = json.loads(tuned.read_text())
        if record["blocks_per_s"] > record["untuned_blocks_per_s"]:  # the tuned kernels paid off over TVM's own
            engine = StaticEngine(load_engine(tuned.with_suffix(".so"), device), record["shape"], engine)
    return engine


def tvm_engine(model_dir: Path, threads: int | None = None) -> Engine:
    from surrogate_ops.compile import HOST_TARGET

    return _tvm_build(model_dir, HOST_TARGET, "cpu")


def tvm_cuda_engine(model_dir: Path, threads: int | None = None) -> Engine:
    return _tvm_build(model_dir, "cuda", "cuda")


ENGINES: dict[str, Callable[[Path, int | None], Engine]] = {
    "torch": torch_engine, "onnxruntime": onnx_engine, "tvm": tvm_engine,
    "tvm-cuda": tvm_cuda_engine, "torch-cuda": torch_cuda_engine}


def fastest_engine(model_dir: Path) -> str:
    """The engine to use on this host: among the TVM builds that load here (this CPU's; the CUDA
    one where a GPU is), the one that beat ONNX Runtime by the most, each compared with the ONNX
    Runtime speed timed beside it on the same batch when it was built; else ONNX Runtime."""
    from surrogate_ops.compile import HOST_TARGET, runs_here, targets

    def gain(record: dict) -> float:
        return (record.get("blocks_per_s") or 0) / (record.get("onnxruntime_blocks_per_s") or float("inf"))

    best, best_gain = "onnxruntime", 1.0
    for target, engine in ((HOST_TARGET, "tvm"), ("cuda", "tvm-cuda")):
        record = model_dir / "builds" / f"{target}.json"
        if not (record.is_file() and record.with_suffix(".so").is_file() and runs_here(targets()[target])):
            continue
        build = json.loads(record.read_text())
        build_gain = max(gain(build), gain(build.get("tuning") or {}))  # the tuned build was timed at its own shape
        if build_gain > best_gain:
            best, best_gain = engine, build_gain
    return best


class Predictor:
    """Predicts llvm-mca-style cycles (per 100 iterations) for assembly blocks with a trained surrogate.

    A parameter-conditioned surrogate (surrogate.json names its `program_parameters`) predicts
    llvm-mca under a setting: `params` is one setting (a dict of parameter or option names, the
    rest at llvm-mca's defaults) or one row of units per block; left out, the expert defaults."""

    def __init__(self, model_dir: str | Path, engine: str = "onnxruntime", threads: int | None = None,
                 batch_size: int = 256):
        self.model_dir = Path(model_dir)
        meta_path = self.model_dir / "surrogate.json"
        if not meta_path.is_file():
            raise SurrogateOpsError(f"{self.model_dir} is not a surrogate model directory (no surrogate.json)")
        self.meta = json.loads(meta_path.read_text())
        self.tokenizer = Tokenizer.load(self.model_dir / "vocab.json")
        program = self.meta.get("program_parameters")
        self.parameter_names: list[str] = list(program["names"]) if program else []
        self.expert_defaults: dict = dict(program["expert_defaults"]) if program else {}
        if engine == "auto":
            engine = "onnxruntime" if self.parameter_names else fastest_engine(self.model_dir)
        if engine not in ENGINES:
            raise SurrogateOpsError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
        if self.parameter_names and engine not in ("onnxruntime", "torch"):
            raise SurrogateOpsError(f"a parameter-conditioned surrogate runs on onnxruntime or torch, not {engine}")
        self.engine_name = engine
        self.engine = ENGINES[engine](self.model_dir, threads)
        self.batch_size = batch_size
        self.max_instructions = int(self.meta["max_instructions"])
        self._lines: dict[str, object] = {}  # raw line -> (ids, has unknown) | BlockError | _SKIP | _SLOW

    def encode(self, text: str, index: int) -> tuple[list[tuple[int, ...]], bool]:
        """Token ids per instruction of a raw block, and whether any token is unknown; BlockError if
        the block cannot be read. Each distinct raw line is checked, normalized and encoded once."""
        lines = self._lines
        hits = [lines[raw] if raw in lines else self._encode_line(raw) for raw in text.split("\n")]
        try:  # the common case: every line an instruction, (ids, has unknown); markers are not subscriptable
            ids = [hit[0] for hit in hits]
            unknown = any([hit[1] for hit in hits])
        except TypeError:
            return self._encode_general(text, index, hits)
        if len(ids) > self.max_instructions:
            raise BlockError(f"{len(ids)} instructions, more than the limit of {self.max_instructions}", index)
        return ids, unknown

    def _encode_general(self, text: str, index: int, hits: list) -> tuple[list[tuple[int, ...]], bool]:
        """A block with blank lines, a bare prefix line or an unreadable line."""
        ids: list[tuple[int, ...]] = []
        unknown = False
        for number, hit in enumerate(hits, start=1):
            if hit is _SKIP:
                continue
            if hit is _SLOW:  # a bare prefix line joins the next instruction: take the general path
                block = normalize_block(text, index=index, max_instructions=self.max_instructions)
                ids = self.tokenizer.encode_block(block)
                return ids, any(1 in ins for ins in ids)
            if isinstance(hit, BlockError):
                raise BlockError(hit.reason, index, number)
            ids.append(hit[0])
            unknown = unknown or hit[1]
        if not ids:
            raise BlockError("empty block (no instructions)", index)
        if len(ids) > self.max_instructions:
            raise BlockError(f"{len(ids)} instructions, more than the limit of {self.max_instructions}", index)
        return ids, unknown

    def _encode_line(self, raw: str):
        line = raw.strip()
        if not line:
            hit = _SKIP
        else:
            try:
                instruction = normalize_block(line)
            except BlockError as exc:
                hit = exc
            else:
                if instruction in PREFIXES:
                    hit = _SLOW
                else:
                    encoded = self.tokenizer.encode_instruction(instruction)
                    hit = (encoded, 1 in encoded)
        if len(self._lines) >= 1 << 20:
            self._lines.clear()
        self._lines[raw] = hit
        return hit

    def units(self, params: object, count: int) -> np.ndarray | None:
        """(count, parameters) units for a conditioned model: None for a token-only one."""
        if not self.parameter_names:
            if params is not None:
                raise SurrogateOpsError(f"{self.model_dir} is not parameter-conditioned; it predicts llvm-mca's defaults only")
            return None
        from surrogate_ops.programs import LlvmMca
        from surrogate_ops.programs.base import check_setting, to_units

        space = {name: LlvmMca.parameters[name] for name in self.parameter_names}
        if isinstance(params, np.ndarray):
            if params.shape != (count, len(space)):
                raise SurrogateOpsError(f"params: expected units shaped ({count}, {len(space)}), got {params.shape}")
            return params.astype(np.float32)
        try:  # checked as llvm-mca checks them, against the parameters this surrogate was trained on
            given = check_setting(space, params or {}, LlvmMca.name)
        except ValueError as exc:
            raise SurrogateOpsError(str(exc)) from None
        return np.repeat(to_units(space, [{**self.expert_defaults, **given}]), count, axis=0)

    def predict(self, blocks: Sequence[str], params: object = None) -> list[Prediction]:
        """One Prediction per block, in order; a block that cannot be read gets its reason."""
        values, errors, unknown_at = self._run(blocks, params)
        out = [Prediction(error=errors[i]) if i in errors else Prediction(cycles=float(v)) for i, v in enumerate(values)]
        for i in unknown_at:  # name the tokens for the caller (the service's fallback policy)
            out[i] = Prediction(cycles=out[i].cycles, unknown=tuple(self.tokenizer.unknown(normalize_block(blocks[i]))))
        return out

    def cycles(self, blocks: Sequence[str], params: object = None) -> np.ndarray:
        """Predicted cycles as an array, NaN where a block could not be read."""
        return self._run(blocks, params)[0]

    def _run(self, blocks: Sequence[str], params: object = None) -> tuple[np.ndarray, dict[int, str], list[int]]:
        """Cycles (NaN where unreadable), the reasons by index, and which blocks hold unknown tokens."""
        units = self.units(params, len(blocks))
        values = np.full(len(blocks), np.nan)
        errors: dict[int, str] = {}
        encoded, where, unknown_at = [], [], []
        for i, text in enumerate(blocks):
            try:
                ids, has_unknown = self.encode(text, i)
            except BlockError as exc:
                errors[i] = str(exc)
                continue
            if has_unknown:
                unknown_at.append(i)
            encoded.append(ids)
            where.append(i)
        if encoded:
            values[where] = self.predict_encoded(encoded, None if units is None else units[where])
        return values, errors, unknown_at

    def predict_encoded(self, encoded: Sequence[list[tuple[int, ...]]], units: np.ndarray | None = None) -> np.ndarray:
        """Cycles for already tokenized blocks, in order (`units`: a conditioned model's settings, a row each)."""
        if units is None and self.parameter_names:
            units = self.units(None, len(encoded))
        return run_batched(self.engine, encoded, self.batch_size, units)

