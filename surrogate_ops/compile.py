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

CPU builds use the default Relax pipeline; `tune_minutes` adds a meta-schedule-tuned static-shape
build (`surrogate_ops.tuning`). The CUDA build is scheduled by dlight (the default GPU pipeline) and
carries CUDA source that nvcc compiles for the card at load time, so a runtime-only TVM serves it.
"""

from __future__ import annotations

import contextlib
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
UNSUPPORTED = {"ithemal": "its ONNX LSTM operator has no importer in TVM's Relax ONNX frontend",
               "conditioned": "its graph takes llvm-mca's parameters beside the tokens; the builds here serve "
                              "token-only surrogates"}


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
    tuning: dict | None = None


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


def cuda_runtime():
    """TVM with its CUDA runtime loaded; a runtime-only install (no compiler) skips that step itself."""
    import ctypes

    import tvm
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        sidecar = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
        with contextlib.suppress(OSError):  # no CUDA driver or runtime: no device either
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(sidecar), mode=ctypes.RTLD_LOCAL)
    return tvm


def _register_nvcc(tvm) -> None:
    """The hook TVM's CUDA module calls at load time to compile its source: nvcc for this card.
    (TVM's own hook asks the compiler library for the current target, which a runtime-only
    deployment does not have.)"""
    import subprocess
    import tempfile

    import tvm_ffi

    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"

    def compile_cuda(code: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            source, fatbin = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
            source.write_text(code)
            proc = subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(fatbin), str(source)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                raise SurrogateOpsError(f"nvcc could not compile the CUDA build for {arch}: {proc.stderr[-2000:]}")
            return fatbin.read_bytes()

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


def runs_here(preset: dict) -> bool:
    if preset["runs_on"] == "cuda":
        try:
            return bool(cuda_runtime().cuda(0).exist)
        except Exception:  # noqa: BLE001 - no CUDA runtime at all
            return False
    return platform.machine() == preset["runs_on"]


def compile_model(model_dir: Path, target: str, out_dir: Path, mcpu: str | None = None,
                  check_tokens: np.ndarray | None = None, tune_minutes: float = 0,
                  tune_shape: tuple[int, int, int] = (256, 16, 16), tune_kernels: int = 4,
                  log=print) -> Build:
    """Compile `model_dir`'s ONNX graph for `target` into `out_dir/<target>.so` (+ `.json`); with
    `tune_minutes`, also a meta-schedule-tuned static-shape build `<target>-tuned.so` (host only)."""
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
    tuned = "no (default Relax pipeline)" if spec["kind"] == "llvm" else "dlight default GPU schedules"
    build = Build(target=target, library=str(library), target_spec=spec, tvm_version=tvm.__version__,
                  seconds=time.time() - start, runs_here=runs_here(preset), tuned=tuned)
    if build.runs_here and check_tokens is not None:
        build = _check(build, model_dir, check_tokens)
    if tune_minutes:
        build = _tune(build, model_dir, out_dir, check_tokens, tune_minutes, tune_shape, tune_kernels, log)
    (out_dir / f"{target}.json").write_text(json.dumps(asdict(build), indent=1))
    return build


def build_files(out_dir: Path, target: str) -> list[Path]:
    """A build's files in `out_dir`: library and record, and the tuned build's when there is one."""
    names = (f"{target}.so", f"{target}.json", f"{target}-tuned.so", f"{target}-tuned.json")
    return [out_dir / name for name in names if (out_dir / name).is_file()]


def load_engine(library: Path, device: str = "cpu"):
    """A TVM build as an engine: int64 (batch, instructions, tokens) -> float32 (batch,)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine  # the runtime alone: a deployed build needs no compiler

    if device == "cuda":  # the module carries CUDA source, compiled for the card when it is loaded
        _register_nvcc(cuda_runtime())
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    vm = VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    main = vm["main"]

    def run(tokens: np.ndarray) -> np.ndarray:
        return main(tvm.runtime.tensor(tokens, dev)).numpy()

    return run


def _check(build: Build, model_dir: Path, tokens: np.ndarray) -> Build:
    """TVM against ONNX Runtime on real blocks: agreement (an error above tolerance) and speed."""
    from surrogate_ops.export import compare
    from surrogate_ops.inference import onnx_engine

    device = "cuda" if build.target_spec["kind"] == "cuda" else "cpu"
    reference, candidate = onnx_engine(model_dir), load_engine(Path(build.library), device)
    agreement = compare(reference(tokens), candidate(tokens), ("onnxruntime", f"tvm-{build.target}"))
    return Build(**{**asdict(build), "max_abs_diff": agreement.max_abs, "max_rel_diff": agreement.max_rel,
                    "blocks_per_s": time_engine(candidate, tokens),
                    "onnxruntime_blocks_per_s": time_engine(reference, tokens)})


def time_engine(engine, tokens: np.ndarray, seconds: float = 1.0) -> float:
    """Blocks per second of an engine on one batch, after a warm-up call."""
    engine(tokens)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine(tokens)
        runs += 1
    return runs * len(tokens) / (time.perf_counter() - start)


def _tune(build: Build, model_dir: Path, out_dir: Path, tokens: np.ndarray | None, minutes: float,
          shape: tuple[int, int, int], kernels: int, log) -> Build:
    from surrogate_ops import tuning

    if not build.runs_here or build.target_spec["kind"] != "llvm":
        raise SurrogateOpsError(f"tuning measures kernels on the machine it runs on: tune the {build.target} "
                                f"build on a {build.target} host (this one is {platform.machine()})")
    if tokens is None:
        raise SurrogateOpsError("tuning needs real blocks to check and time the tuned build on")
    record = tuning.tune(model_dir / "model.onnx", build.target_spec, shape, minutes,
                         out_dir / f"{build.target}-tuned.so", tokens, top_tasks=kernels, log=log)
    return Build(**{**asdict(build), "tuned": record.summary(), "tuning": asdict(record)})
