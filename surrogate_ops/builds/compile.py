"""The deploy stage: a registered surrogate compiled with Apache TVM for a named platform.

The model's ONNX graph (already checked against torch when it was saved) is imported with TVM's
Relax ONNX frontend, keeping the batch, instruction and token axes dynamic, compiled with the
default Relax pipeline for the platform's TVM target, and exported as a shared library:

    x86     this host's CPU (its CPU detected, or --tvm-cpu)
    arm64   aarch64 Linux, cross-linked with aarch64-linux-gnu-gcc
    cuda    NVIDIA GPUs; builds anywhere, loads only where a GPU is

Platforms are data (presets/platforms.json). A build that can run here is checked against ONNX
Runtime on real blocks and timed; with `verify`, an arm64 build is run here under QEMU's user-mode
emulation with an aarch64 TVM runtime (`emulation`) and must agree within `EMULATED_RTOL`; the build, its figures and the TVM target are written to the
output folder as `<platform>.so` and `<platform>.json` (`modeldir.Builds`). An architecture whose
ONNX graph TVM cannot import (the ONNX LSTM of `ithemal`) is refused with that reason: ONNX Runtime
stays its engine.

CPU builds use the default Relax pipeline; `tune_minutes` adds a meta-schedule-tuned static-shape
build (`surrogate_ops.builds.tuning`). The CUDA build is scheduled by dlight (the default GPU pipeline) and
carries CUDA source that nvcc compiles for the card at load time, so a runtime-only TVM serves it
(`engines.tvm_library`). This is build-time code: serving and prediction load builds through
`engines` and never import it.
"""

from __future__ import annotations

import json
import platform as host
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from surrogate_ops.blocks import SAMPLE_BLOCKS
from surrogate_ops.builds import emulation
from surrogate_ops.builds.export import agreement, compare, example_batch, relax_module
from surrogate_ops.config import EngineName
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime import engines
from surrogate_ops.runtime.modeldir import Builds, ModelDir

EMULATED_RTOL = 1e-4  # a foreign build's largest relative difference from ONNX Runtime, run under emulation
UNSUPPORTED = {"ithemal": "its ONNX LSTM operator has no importer in TVM's Relax ONNX frontend",
               "conditioned": "its graph takes llvm-mca's parameters beside the tokens; the builds here serve "
                              "token-only surrogates"}


@dataclass(frozen=True)
class Build:
    """A compiled surrogate: where it is, for which platform and TVM target, and what was checked."""

    platform: str
    library: str
    tvm_target: dict
    tvm_version: str
    seconds: float
    runs_here: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    blocks_per_s: float | None = None
    onnxruntime_blocks_per_s: float | None = None
    tuned: str = "no (default Relax pipeline)"
    tuning: dict | None = None
    verified: str | None = None  # how a foreign build was run here against ONNX Runtime (emulation)
    emulated_blocks_per_s: float | None = None  # under emulation: for the record, not the platform's speed

    def tags(self) -> dict[str, str]:
        """What the registered version records of the build."""
        p = self.platform
        tags = {f"build_{p}_target": str(self.tvm_target), f"build_{p}_tvm": self.tvm_version, f"build_{p}_tuned": self.tuned}
        if self.max_rel_diff is not None:
            tags[f"build_{p}_max_rel_diff"] = f"{self.max_rel_diff:.3g}"
        if self.blocks_per_s is not None:
            tags.update({f"build_{p}_blocks_per_s": f"{self.blocks_per_s:.0f}",
                         f"build_{p}_onnxruntime_blocks_per_s": f"{self.onnxruntime_blocks_per_s:.0f}"})
        if self.verified:
            tags.update({f"build_{p}_verified": self.verified,
                         f"build_{p}_emulated_blocks_per_s": f"{self.emulated_blocks_per_s:.0f}"})
        return tags


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def resolve_platform(name: str, tvm_cpu: str | None = None) -> tuple[dict, dict]:
    """(platform row, TVM target dictionary) for a platform name; an unknown name lists the known ones."""
    table = engines.platforms()
    if name not in table:
        raise SurrogateOpsError(f"unknown platform {name!r}; choose from {', '.join(table)}")
    row = table[name]
    spec = json.loads(json.dumps(row["tvm_target"]))
    if spec.get("mcpu") == "host" or (tvm_cpu and spec["kind"] == "llvm"):
        spec["mcpu"] = tvm_cpu or host_cpu()
    if row["cc"] and shutil.which(row["cc"]) is None:
        raise SurrogateOpsError(f"platform {name} links with {row['cc']}, which is missing "
                                "(Debian: apt-get install -y gcc-aarch64-linux-gnu)")
    return row, spec


def compile_model(model: ModelDir, platform: str, out_dir: Path, tvm_cpu: str | None = None,
                  check_tokens: np.ndarray | None = None, tune_minutes: float = 0,
                  tune_shape: tuple[int, int, int] = (256, 16, 16), tune_kernels: int = 4,
                  verify: bool = False, log=print) -> Build:
    """Compile `model`'s ONNX graph for `platform` into `out_dir/<platform>.so` (+ `.json`); with
    `tune_minutes`, also a meta-schedule-tuned static-shape build `<platform>-tuned.so` (host only).
    A build that runs here is checked against ONNX Runtime on `check_tokens`; with `verify`, a
    foreign one too, run under emulation (`emulation`), and refused above `EMULATED_RTOL`."""
    import tvm
    from tvm import relax

    model = ModelDir.open(model)
    if model.arch in UNSUPPORTED:
        raise SurrogateOpsError(f"{model.arch} cannot be compiled with TVM: {UNSUPPORTED[model.arch]}; "
                                "ONNX Runtime remains this model's engine")
    row, spec = resolve_platform(platform, tvm_cpu)
    runs_here = engines.runs_here(platform)
    if verify and not runs_here and "emulate" not in row:
        raise SurrogateOpsError(f"the {platform} build cannot be verified here: it runs only on {row['runs_on']}, "
                                "and the platform has no emulator entry")
    if verify and not runs_here:
        emulation.emulator(platform)  # missing QEMU is said before the compile, not after
    start = time.time()
    mod = relax_module(model.onnx)
    tvm_target = tvm.target.Target(spec)
    executable = tvm.compile(mod, tvm_target, relax_pipeline=relax.get_default_pipeline(tvm_target))
    out = Builds(Path(out_dir))
    out.folder.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(out.library(platform)), **({"cc": row["cc"]} if row["cc"] else {}))
    tuned = "no (default Relax pipeline)" if spec["kind"] == "llvm" else "dlight default GPU schedules"
    build = Build(platform=platform, library=str(out.library(platform)), tvm_target=spec, tvm_version=tvm.__version__,
                  seconds=time.time() - start, runs_here=runs_here, tuned=tuned)
    if build.runs_here and check_tokens is not None:
        build = _check(build, model, check_tokens)
    elif verify:
        build = _check_emulated(build, model, check_tokens if check_tokens is not None else
                                example_batch(model.tokenizer(), list(SAMPLE_BLOCKS)), log)
    if tune_minutes:
        build = _tune(build, model, out, check_tokens, tune_minutes, tune_shape, tune_kernels, log)
    out.record_path(platform).write_text(json.dumps(asdict(build), indent=1))
    return build


@dataclass(frozen=True)
class Registered:
    """A registered version's build, logged to the version's run under `builds/<platform>`."""

    build: Build
    name: str
    version: str
    run_id: str
    blocks: int  # the real blocks it was checked on


def compile_registered(model_uri: str, platform: str, out_dir: Path, tvm_cpu: str | None = None,
                       tune_minutes: float = 0, tune_shape: tuple[int, int, int] = (256, 16, 16),
                       tune_kernels: int = 4, verify: bool = False, log=print) -> Registered:
    """Compile a registered surrogate (`models:/NAME@ALIAS` or `/VERSION`) for `platform` into
    `out_dir`, checked on the version's own validation blocks (else the bundled sample); log the
    build to the version's run and tag the version; a build for this host also goes into the local
    copy of the version at once. `log` hears the ONNX check before the build starts."""
    from surrogate_ops import registry
    from surrogate_ops.builds.export import check_onnx, onnx_opset
    from surrogate_ops.registry import versions

    opened = registry.open(model_uri, registered=True)
    model, name, version = opened.model, opened.name, opened.version
    blocks = check_blocks(versions.version_tags(name, version).get("dataset_path"))
    log(f"ONNX (opset {onnx_opset(model)}, dynamic batch/instructions/tokens): {check_onnx(model, blocks)}")
    build = compile_model(model, platform, out_dir, tvm_cpu, example_batch(model.tokenizer(), blocks),
                          tune_minutes=tune_minutes, tune_shape=tune_shape, tune_kernels=tune_kernels,
                          verify=verify, log=log)
    folder = Builds(out_dir)
    versions.attach_build(name, version, platform, folder.files(platform), folder.database(platform), build.tags())
    if platform == engines.HOST_PLATFORM:  # the local copy of the version picks its host build up at once
        install(out_dir, platform, model)
    return Registered(build, name, version, versions.run_of(name, version), len(blocks))


def install(out_dir: Path, platform: str, model: ModelDir) -> None:
    """Copy a build from `compile`'s output folder into the model directory, where the engines find it."""
    model.builds.folder.mkdir(parents=True, exist_ok=True)
    for path in Builds(Path(out_dir)).files(platform):
        shutil.copy2(path, model.builds.folder / path.name)


def check_blocks(dataset_path: str | None) -> list[str]:
    """Real blocks to check a build on: the model's validation blocks when its dataset is here,
    else the bundled sample."""
    if dataset_path and Path(dataset_path).is_file():
        frame = datasets.load(dataset_path)
        return list(frame[frame["split"] == "val"]["block"][:256])
    return list(SAMPLE_BLOCKS)


def _check(build: Build, model: ModelDir, tokens: np.ndarray) -> Build:
    """TVM against ONNX Runtime on real blocks: agreement (an error above tolerance) and speed."""
    device = "cuda" if build.tvm_target["kind"] == "cuda" else "cpu"
    reference, candidate = engines.onnx_engine(model), engines.tvm_library(Path(build.library), device)
    agreement = compare(reference(tokens), candidate(tokens), (EngineName.ONNXRUNTIME, f"tvm-{build.platform}"))
    return Build(**{**asdict(build), "max_abs_diff": agreement.max_abs, "max_rel_diff": agreement.max_rel,
                    "blocks_per_s": engines.time_engine(candidate, tokens),
                    "onnxruntime_blocks_per_s": engines.time_engine(reference, tokens)})


def _check_emulated(build: Build, model: ModelDir, tokens: np.ndarray, log) -> Build:
    """A foreign build run under emulation against ONNX Runtime here on real blocks; refused above
    `EMULATED_RTOL`. The record is written either way, so a refused build says why."""
    ran = emulation.run_build(build.platform, Path(build.library), tokens, log=log)
    found = agreement(engines.onnx_engine(model)(tokens), ran.outputs, (EngineName.ONNXRUNTIME, f"tvm-{build.platform}"))
    build = Build(**{**asdict(build), "max_abs_diff": found.max_abs, "max_rel_diff": found.max_rel,
                     "verified": f"{len(tokens)} blocks under {ran.emulator} (Python {ran.python}, TVM {ran.tvm} runtime) "
                                 "against ONNX Runtime here",
                     "emulated_blocks_per_s": ran.blocks_per_s})
    if found.max_rel > EMULATED_RTOL:
        Builds(Path(build.library).parent).record_path(build.platform).write_text(json.dumps(asdict(build), indent=1))
        raise SurrogateOpsError(f"the {build.platform} build disagrees with ONNX Runtime under emulation: max rel diff "
                                f"{build.max_rel_diff:.3g} above {EMULATED_RTOL:g} (record: {build.platform}.json)")
    return build


def _tune(build: Build, model: ModelDir, out: Builds, tokens: np.ndarray | None, minutes: float,
          shape: tuple[int, int, int], kernels: int, log) -> Build:
    from surrogate_ops.builds import tuning

    if not build.runs_here or build.tvm_target["kind"] != "llvm":
        raise SurrogateOpsError(f"tuning measures kernels on the machine it runs on: tune the {build.platform} "
                                f"build on a {build.platform} host (this one is {host.machine()})")
    if tokens is None:
        raise SurrogateOpsError("tuning needs real blocks to check and time the tuned build on")
    record = tuning.tune(model, build.tvm_target, shape, minutes, out.library(build.platform, tuned=True), tokens,
                         top_tasks=kernels, log=log)
    return Build(**{**asdict(build), "tuned": record.summary(), "tuning": asdict(record)})
