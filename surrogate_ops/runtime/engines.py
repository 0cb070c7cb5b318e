"""Engines: what runs a surrogate's network, all behind one call signature.

    engine(tokens: int64 (batch, instructions, tokens), params: float32 (batch, parameters) | None)
        -> float32 (batch,)   cycles per 100 iterations
                   (batch, 2) a confident surrogate's: cycles, then its estimated relative error

`params` is a parameter-conditioned surrogate's setting, one row per block; an engine that serves
token-only surrogates (the TVM builds, torch on CUDA) refuses it. The engines:

    torch         the training module on the CPU
    onnxruntime   the ONNX export on ONNX Runtime's CPU provider
    tvm           this host's TVM build (`surrogate-ops compile`), with its tuned static-shape
                  build where tuning paid (`StaticEngine`)
    tvm-cuda      the CUDA TVM build (nvcc compiles its source for the card when it is loaded)
    torch-cuda    the training module on a CUDA GPU

This module only loads and times builds; making them is the compile stage's (`compile`,
`tuning`), which imports this one and never the other way round. Platforms (where a build runs)
are data: presets/platforms.json. To add an engine: a loader `(ModelDir, threads) -> Engine`
in ENGINES, under a new `config.EngineName`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform as host
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from surrogate_ops import presets
from surrogate_ops.blocks.batching import parts
from surrogate_ops.config import AUTO_ENGINE, BUILD_CACHE, EngineName
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime.modeldir import ModelDir


class Engine(Protocol):
    def __call__(self, tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray: ...


def platforms() -> dict[str, dict]:
    """The platform table: TVM target, linker, and where a build loads (`runs_on`)."""
    return {k: v for k, v in presets.load("platforms").items() if not k.startswith("_")}


HOST_PLATFORM = {"x86_64": "x86", "aarch64": "arm64"}.get(host.machine(), "x86")


def runs_here(name: str) -> bool:
    """Whether a build for platform `name` loads on this machine."""
    runs_on = platforms()[name]["runs_on"]
    if runs_on == "cuda":
        try:
            return bool(cuda_runtime().cuda(0).exist)
        except Exception:  # noqa: BLE001 - no CUDA runtime at all
            return False
    return host.machine() == runs_on


def _token_only(name: str, params: np.ndarray | None) -> None:
    if params is not None:
        raise SurrogateOpsError(f"the {name} engine serves token-only surrogates; this call passed llvm-mca parameters")


def torch_engine(model: ModelDir, threads: int | None = None) -> Engine:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module = model.module()

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            extra = () if params is None else (torch.from_numpy(params),)
            return module(torch.from_numpy(tokens), *extra).numpy()

    return run


def onnx_engine(model: ModelDir, threads: int | None = None, whole: bool = False) -> Engine:
    """ONNX Runtime on the CPU: the network from a batch's parts where the model directory has that
    graph (`parts.onnx`; the batch split by `batching.parts` here), else, or with `whole`, from the
    padded tokens (`model.onnx`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if model.parts_onnx is not None and not whole:
        session, positions = optimized_session(model.parts_onnx, options), model.max_instructions

        def from_parts(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
            _token_only(EngineName.ONNXRUNTIME, params)
            return session.run(None, dict(zip(("rows", "ins", "edges"), parts(tokens, positions), strict=True)))[0]

        return from_parts
    session = optimized_session(model.onnx, options)

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        return session.run(None, {"tokens": tokens} if params is None else {"tokens": tokens, "params": params})[0]

    return run


# Bytes of optimized graphs kept in the build cache (a bundled dim-32 surrogate's is 8 MB, a dim-64
# one's 16: every trained model adds its own); past it, the least recently used go first
ORT_CACHE_BYTES = 512 << 20


def optimized_session(onnx: Path, options):
    """An ONNX Runtime CPU session of `onnx`, from its graph as ONNX Runtime optimizes it, kept in
    `config.BUILD_CACHE` by the model's digest and ONNX Runtime's version. Optimizing is most of a
    session's start: it folds the token table (every token id and slot through the token MLP,
    `models.dep`) out of the weights, 0.2-0.3 s and 100 MB at its peak for a bundled surrogate; the
    optimized graph, the table already folded, loads in about 0.05 s (issue 32's one-block predict).
    The level is EXTENDED, not ALL: ALL adds layouts of this CPU's own, and the cache is per user,
    not per CPU. Where the cache cannot be written, the session optimizes in memory as before. The
    cache holds `ORT_CACHE_BYTES` of graphs at most, the least recently used dropped first."""
    import hashlib

    import onnxruntime as ort

    data = onnx.read_bytes()
    key = hashlib.sha256(data + ort.__version__.encode()).hexdigest()[:16]
    cached = BUILD_CACHE / f"ort-{key}.onnx"
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    providers = ["CPUExecutionProvider"]
    if cached.is_file():
        with contextlib.suppress(Exception):  # a damaged file: optimize again below
            session = ort.InferenceSession(str(cached), options, providers=providers)
            with contextlib.suppress(OSError):  # used now: the last to be dropped (its access time;
                os.utime(cached, ns=(time.time_ns(), cached.stat().st_mtime_ns))  # its write time stays)
            return session
    partial = cached.with_name(f"{cached.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        BUILD_CACHE.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(partial)
        session = ort.InferenceSession(data, options, providers=providers)
        os.replace(partial, cached)  # whole or absent: a reader never sees a half-written graph
        _keep_within(ORT_CACHE_BYTES, cached)
        return session
    except Exception:  # noqa: BLE001 - a cache that cannot be written (ONNX Runtime raises its own types)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        options.optimized_model_filepath = ""
        return ort.InferenceSession(data, options, providers=providers)


def _keep_within(budget: int, newest: Path) -> None:
    """Drop the least recently used optimized graphs (by access time) until those left take `budget`
    bytes at most (`newest`, just written, is always kept); one another process removed is skipped."""
    graphs = []
    for path in BUILD_CACHE.glob("ort-*.onnx"):
        with contextlib.suppress(OSError):
            graphs.append((path, path.stat()))
    total = sum(found.st_size for _, found in graphs)
    for path, found in sorted(graphs, key=lambda item: item[1].st_atime):
        if total <= budget:
            break
        if path != newest:
            with contextlib.suppress(OSError):
                path.unlink()
            total -= found.st_size


def torch_cuda_engine(model: ModelDir, threads: int | None = None) -> Engine:
    import torch

    if not torch.cuda.is_available():
        raise SurrogateOpsError("the torch-cuda engine needs a CUDA GPU, and torch sees none here")
    module = model.module().cuda()

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        _token_only(EngineName.TORCH_CUDA, params)
        with torch.inference_mode():
            # pinned host memory: the copy to the device runs asynchronously
            return module(torch.from_numpy(tokens).pin_memory().cuda(non_blocking=True)).float().cpu().numpy()

    return run


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


def tvm_library(library: Path, device: str = "cpu") -> Engine:
    """A TVM build (shared library) as an engine; the runtime alone, a deployed build needs no compiler."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if device == "cuda":  # the module carries CUDA source, compiled for the card when it is loaded
        _register_nvcc(cuda_runtime())
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    main = VirtualMachine(tvm.runtime.load_module(str(library)), dev)["main"]

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        _token_only("TVM", params)
        return main(tvm.runtime.tensor(tokens, dev)).numpy()

    return run


class StaticEngine:
    """A static-shape (tuned) build for the batches that fit its shape and fill at least half of its
    batch (padding a small batch up to it would cost more than tuning saved); the dynamic build
    otherwise."""

    def __init__(self, static: Engine, shape: list[int], dynamic: Engine):
        self.static, self.shape, self.dynamic = static, tuple(shape), dynamic

    def __call__(self, tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        _token_only("TVM", params)
        batch, instructions, width = self.shape
        if tokens.shape[1] > instructions or tokens.shape[2] > width or len(tokens) < batch // 2:
            return self.dynamic(tokens)
        parts = []
        for start in range(0, len(tokens), batch):
            part = tokens[start:start + batch]
            padded = np.zeros(self.shape, dtype=np.int64)
            padded[:len(part), :part.shape[1], :part.shape[2]] = part
            padded[len(part):, 0, 0] = 1  # padding rows hold one <UNK> token, never an empty block
            parts.append(self.static(padded)[:len(part)])
        return np.concatenate(parts)


def _tvm_build(model: ModelDir, platform: str, device: str) -> Engine:
    builds = model.builds
    if not builds.library(platform).is_file():
        raise SurrogateOpsError(f"{model} has no TVM build for {platform}; "
                                f"make one with `surrogate-ops compile --platform {platform}`")
    if not runs_here(platform):
        raise SurrogateOpsError(f"the {platform} build loads only on {platforms()[platform]['runs_on']}, not on this machine")
    engine = tvm_library(builds.library(platform), device)
    tuned = builds.record(platform, tuned=True)
    if tuned and tuned["blocks_per_s"] > tuned["untuned_blocks_per_s"]:  # the tuned kernels paid off over TVM's own
        engine = StaticEngine(tvm_library(builds.library(platform, tuned=True), device), tuned["shape"], engine)
    return engine


def tvm_engine(model: ModelDir, threads: int | None = None) -> Engine:
    return _tvm_build(model, HOST_PLATFORM, "cpu")


def tvm_cuda_engine(model: ModelDir, threads: int | None = None) -> Engine:
    return _tvm_build(model, "cuda", "cuda")


ENGINES: dict[str, Callable[[ModelDir, int | None], Engine]] = {
    EngineName.TORCH: torch_engine, EngineName.ONNXRUNTIME: onnx_engine, EngineName.TVM: tvm_engine,
    EngineName.TVM_CUDA: tvm_cuda_engine, EngineName.TORCH_CUDA: torch_cuda_engine}
CONDITIONED = (EngineName.ONNXRUNTIME, EngineName.TORCH)  # the engines that take a parameter-conditioned surrogate
LANE_ENGINES = (EngineName.ONNXRUNTIME, EngineName.TORCH)  # CPU engines whose calls may run side by side on threads


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, asked of the driver's device files (importing torch to
    ask would cost a CPU-only start a second and a hundred megabytes)."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def fastest(model: ModelDir) -> EngineName:
    """The engine to use on this host: among the TVM builds that load here (this CPU's; the CUDA
    one where a GPU is), the one that beat ONNX Runtime by the most, each compared with the ONNX
    Runtime speed timed beside it on the same batch when it was built; else torch on the GPU where
    there is one; else ONNX Runtime."""

    def gain(record: dict) -> float:
        return (record.get("blocks_per_s") or 0) / (record.get("onnxruntime_blocks_per_s") or float("inf"))

    best, best_gain = EngineName.ONNXRUNTIME, 1.0
    if importlib.util.find_spec("tvm") is None:  # a slim serving install (a container image) has no TVM
        return EngineName.TORCH_CUDA if gpu_present() and importlib.util.find_spec("torch") else best
    if importlib.util.find_spec("onnxruntime") is None and model.builds.record(HOST_PLATFORM):
        return EngineName.TVM  # a TVM-runtime install (the arm64 image): the build is the engine
    for platform, engine in ((HOST_PLATFORM, EngineName.TVM), ("cuda", EngineName.TVM_CUDA)):
        build = model.builds.record(platform)
        if build is None or not runs_here(platform):
            continue
        build_gain = max(gain(build), gain(build.get("tuning") or {}))  # the tuned build was timed at its own shape
        if build_gain > best_gain:
            best, best_gain = engine, build_gain
    if best == EngineName.ONNXRUNTIME and gpu_present():
        return EngineName.TORCH_CUDA
    return best


def load(name: str, model: ModelDir, threads: int | None = None, lane_threads: int | None = None,
         ) -> tuple[str, Engine]:
    """(the engine's name, the engine) for `name`, "auto" resolved on this host (see `fastest`);
    `lane_threads`: the threads of one of several side-by-side calls, for a `LANE_ENGINES` engine
    not given `threads`."""
    conditioned = bool(model.program_parameters)
    if name == AUTO_ENGINE:
        name = EngineName.ONNXRUNTIME if conditioned else fastest(model)
        if name == EngineName.TORCH_CUDA:
            try:
                return name, torch_cuda_engine(model, threads)
            except SurrogateOpsError:  # a GPU torch cannot use (a CPU-only torch build): the CPU engine
                name = EngineName.ONNXRUNTIME
    if name not in ENGINES:
        raise SurrogateOpsError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    if conditioned and name not in CONDITIONED:
        raise SurrogateOpsError(f"a parameter-conditioned surrogate runs on {' or '.join(CONDITIONED)}, not {name}")
    if threads is None and name in LANE_ENGINES:
        threads = lane_threads
    return name, ENGINES[name](model, threads)


def time_engine(engine: Engine, tokens: np.ndarray, seconds: float = 1.0) -> float:
    """Blocks per second of an engine on one batch, after a warm-up call."""
    engine(tokens)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine(tokens)
        runs += 1
    return runs * len(tokens) / (time.perf_counter() - start)
