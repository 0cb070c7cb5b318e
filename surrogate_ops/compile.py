"""The deploy stage: a registered surrogate compiled with Apache TVM for a named target.

The model's ONNX graph (already checked against torch when it was saved) is imported with TVM's
Relax ONNX frontend, keeping the batch, instruction and token axes dynamic, compiled with the
default Relax pipeline for the target, and exported as a shared library:

    x86     this host's CPU (-mcpu detected, or --mcpu)
    arm64   aarch64 Linux, cross-linked with aarch64-linux-gnu-gcc
    cuda    NVIDIA GPUs; builds anywhere, loads only where a GPU is

Targets are data (presets/targets.json). A build that can run here is checked against ONNX
Runtime on real blocks and timed; the build, its figures and the target are written to the output
directory as `<target>.so` and `<target>.json`. An architecture whose ONNX graph TVM cannot import
(the ONNX LSTM of `ithemal`) is refused with that reason: ONNX Runtime stays its engine.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from surrogate_ops import presets
from surrogate_ops.errors import SurrogateOpsError

HOST_TARGET = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), "x86")
UNSUPPORTED = {"ithemal": "its ONNX LSTM operator has no importer in TVM's Relax ONNX frontend"}


@dataclass(frozen=True)
class Build:
    """A compiled surrogate: where it is, for which target, and what was checked."""

    target: str
    library: str
    target_spec: dict
    tvm_version: str
    seconds: float
    runs_here: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    blocks_per_s: float | None = None
    onnxruntime_blocks_per_s: float | None = None
    tuned: str = "no (default Relax pipeline)"


def targets() -> dict[str, dict]:
    return {k: v for k, v in presets.load("targets").items() if not k.startswith("_")}


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def resolve_target(name: str, mcpu: str | None = None) -> tuple[dict, dict]:
    """(preset, tvm target dictionary) for a target name; an unknown name lists the known ones."""
    table = targets()
    if name not in table:
        raise SurrogateOpsError(f"unknown target {name!r}; choose from {', '.join(table)}")
    preset = table[name]
    spec = json.loads(json.dumps(preset["target"]))
    if spec.get("mcpu") == "host" or (mcpu and spec["kind"] == "llvm"):
        spec["mcpu"] = mcpu or host_cpu()
    if preset["cc"] and shutil.which(preset["cc"]) is None:
        raise SurrogateOpsError(f"target {name} links with {preset['cc']}, which is missing "
                                "(Debian: apt-get install -y gcc-aarch64-linux-gnu)")
    return preset, spec


def runs_here(preset: dict) -> bool:
    if preset["runs_on"] == "cuda":
        try:
            import tvm

            return bool(tvm.cuda(0).exist)
        except Exception:  # noqa: BLE001 - no CUDA runtime at all
            return False
    return platform.machine() == preset["runs_on"]


def compile_model(model_dir: Path, target: str, out_dir: Path, mcpu: str | None = None,
                  check_tokens: np.ndarray | None = None) -> Build:
    """Compile `model_dir`'s ONNX graph for `target` into `out_dir/<target>.so` (+ `.json`)."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    meta = json.loads((model_dir / "surrogate.json").read_text())
    if meta["arch"] in UNSUPPORTED:
        raise SurrogateOpsError(f"{meta['arch']} cannot be compiled with TVM: {UNSUPPORTED[meta['arch']]}; "
                                "ONNX Runtime remains this model's engine")
    preset, spec = resolve_target(target, mcpu)
    start = time.time()
    mod = from_onnx(onnx.load(str(model_dir / "model.onnx")), keep_params_in_input=False)
    tvm_target = tvm.target.Target(spec)
    executable = tvm.compile(mod, tvm_target, relax_pipeline=relax.get_default_pipeline(tvm_target))
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / f"{target}.so"
    executable.export_library(str(library), **({"cc": preset["cc"]} if preset["cc"] else {}))
    build = Build(target=target, library=str(library), target_spec=spec, tvm_version=tvm.__version__,
                  seconds=time.time() - start, runs_here=runs_here(preset))
    if build.runs_here and check_tokens is not None:
        build = _check(build, model_dir, check_tokens)
    (out_dir / f"{target}.json").write_text(json.dumps(asdict(build), indent=1))
    return build


def load_engine(library: Path, device: str = "cpu"):
    """A TVM build as an engine: int64 (batch, instructions, tokens) -> float32 (batch,)."""
    import tvm
    from tvm import relax

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    main = vm["main"]

    def run(tokens: np.ndarray) -> np.ndarray:
        return main(tvm.runtime.tensor(tokens, dev)).numpy()

    return run


def _check(build: Build, model_dir: Path, tokens: np.ndarray) -> Build:
    """TVM against ONNX Runtime on real blocks: agreement (an error above tolerance) and speed."""
    from surrogate_ops.export import compare
    from surrogate_ops.inference import onnx_engine

    reference, candidate = onnx_engine(model_dir), load_engine(Path(build.library))
    agreement = compare(reference(tokens), candidate(tokens), ("onnxruntime", f"tvm-{build.target}"))
    speeds = {}
    for name, engine in (("tvm", candidate), ("ort", reference)):
        engine(tokens)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            engine(tokens)
            runs += 1
        speeds[name] = runs * len(tokens) / (time.perf_counter() - start)
    return Build(**{**asdict(build), "max_abs_diff": agreement.max_abs, "max_rel_diff": agreement.max_rel,
                    "blocks_per_s": speeds["tvm"], "onnxruntime_blocks_per_s": speeds["ort"]})
