"""The deploy stage: TVM builds per target, checked against ONNX Runtime on real blocks."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.cli import CLI, COMMAND_TIMEOUT, rows
from support.data import FIXTURES

from surrogate_ops.builds import compile as compiler
from surrogate_ops.builds.export import compare, example_batch
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry.versions import BUNDLED
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir

BLOCKS = [b["block"] for b in json.loads((FIXTURES / "blocks.json").read_text())["blocks"]]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A copy of the bundled model directory, so builds land beside it."""
    import shutil

    target = tmp_path_factory.mktemp("model") / "llvm-mca-haswell"
    shutil.copytree(BUNDLED, target)
    return target


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return struct.unpack("<H", header[18:20])[0]


def test_x86_build_agrees_with_onnx_runtime(model):
    tokens = example_batch(Predictor(model).tokenizer, BLOCKS)
    build = compiler.compile_model(model, "x86", model / "builds", check_tokens=tokens)
    assert build.runs_here and build.max_rel_diff < 1e-3 and build.blocks_per_s > 0
    assert elf_machine(Path(build.library)) == 62  # EM_X86_64
    onnx = Predictor(model, engine="onnxruntime").cycles(BLOCKS)
    tvm = Predictor(model, engine="tvm").cycles(BLOCKS)
    agreement = compare(onnx, tvm, ("onnxruntime", "tvm"))
    assert agreement.n == len(BLOCKS)
    recorded = json.loads((model / "builds" / "x86.json").read_text())
    assert recorded["tvm_target"]["mcpu"] == compiler.host_cpu()


@pytest.mark.slow
@pytest.mark.system
def test_compile_verify_runs_the_arm64_build_under_emulation(tmp_path, monkeypatch):
    """`compile --platform arm64 --verify`: the aarch64 library, run here by QEMU with an aarch64 TVM
    runtime on real blocks, agrees with ONNX Runtime; the report goes with the build's record and
    the version's tags. A build checked against another model's ONNX graph is refused, with its record."""
    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([*CLI, "compile", "--platform", "arm64", "--verify", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert elf_machine(tmp_path / "out" / "arm64.so") == 183  # EM_AARCH64
    record = json.loads((tmp_path / "out" / "arm64.json").read_text())
    assert record["runs_here"] is False  # checked under emulation, not here
    assert record["verified"].startswith("7 blocks under qemu-aarch64") and "TVM 0.27" in record["verified"]
    assert record["max_rel_diff"] <= compiler.EMULATED_RTOL and record["emulated_blocks_per_s"] > 0
    assert "verified: 7 blocks under qemu-aarch64" in out.stdout
    from mlflow import MlflowClient

    from surrogate_ops.registry import tracking

    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("llvm-mca-haswell", "champion")
    assert float(version.tags["build_arm64_max_rel_diff"]) <= 1e-4 and "qemu-aarch64" in version.tags["build_arm64_verified"]
    # the same aarch64 library against the Skylake surrogate's graph: the check must fail, and say so
    build = compiler.Build(**{k: v for k, v in record.items() if k in compiler.Build.__dataclass_fields__})
    monkeypatch.setenv("SURROGATE_OPS_HOME", env["SURROGATE_OPS_HOME"])  # the emulated machine made above
    tokens = example_batch(Predictor(BUNDLED).tokenizer, BLOCKS)
    with pytest.raises(SurrogateOpsError, match="disagrees with ONNX Runtime under emulation"):
        compiler._check_emulated(build, ModelDir.open(BUNDLED.parent / "llvm-mca-skylake"), tokens, print)
    assert json.loads((tmp_path / "out" / "arm64.json").read_text())["max_rel_diff"] > 1e-4


def test_verify_without_an_emulator_entry_is_a_clear_error(model, tmp_path):
    with pytest.raises(SurrogateOpsError, match="cuda build cannot be verified here: it runs only on cuda"):
        compiler.compile_model(model, "cuda", tmp_path, verify=True)


def test_unknown_platform_and_unsupported_architecture(tmp_path):
    with pytest.raises(SurrogateOpsError, match="unknown platform 'riscv'; choose from x86, arm64, cuda"):
        compiler.resolve_platform("riscv")
    fake = tmp_path / "lstm"
    fake.mkdir()
    (fake / "surrogate.json").write_text(json.dumps({"arch": "ithemal"}))
    with pytest.raises(SurrogateOpsError, match="LSTM operator has no importer.*ONNX Runtime remains"):
        compiler.compile_model(fake, "x86", tmp_path / "out")


def test_tvm_engine_without_a_build_is_a_clear_error(tmp_path):
    import shutil

    shutil.copytree(BUNDLED, tmp_path / "m")
    with pytest.raises(SurrogateOpsError, match="has no TVM build for x86; make one with"):
        Predictor(tmp_path / "m", engine="tvm")
    assert Predictor(tmp_path / "m", engine="auto").engine_name == "onnxruntime"


@pytest.mark.slow
@pytest.mark.system
def test_deploy_script_builds_every_target_and_compile_logs_and_tags_each(tmp_path):
    """deploy/build_all.sh: `compile` of the champion for every platform, each build checked, logged
    with the version and tagged; a fresh cache fetches the host build with the model, and --engine
    tvm answers like ONNX Runtime."""
    from mlflow import MlflowClient

    from surrogate_ops.registry import tracking

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run(["bash", str(root / "deploy" / "build_all.sh"), "models:/llvm-mca-haswell@champion",
                          str(tmp_path / "builds")], capture_output=True, text=True, env=env,
                          timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "builds").glob("*.so")) == ["arm64.so", "cuda.so", "x86.so"]
    assert "missing" not in out.stdout + out.stderr
    assert "TVM vs ONNX Runtime" in out.stdout
    assert "ONNX (opset 18, dynamic batch/instructions/tokens): onnxruntime vs torch on 7 blocks: max abs diff" in out.stdout
    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("llvm-mca-haswell", "champion")
    assert version.tags["build_x86"] == "builds/x86/x86.so"
    assert float(version.tags["build_x86_max_rel_diff"]) < 1e-3
    listed = [a.path for a in MlflowClient().list_artifacts(version.run_id, "builds/x86")]
    assert sorted(listed) == ["builds/x86/x86.json", "builds/x86/x86.so"]
    assert {"build_arm64", "build_cuda"} <= set(version.tags)
    import shutil

    shutil.rmtree(tmp_path / "home" / "cache")
    runs = [subprocess.run([*CLI, "predict", "--input", str(FIXTURES / "blocks.s"), "--engine", engine],
                           capture_output=True, text=True, env=env, timeout=300) for engine in ("tvm", "onnxruntime")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    values = [np.array([float(row["cycles"]) for row in rows(r.stdout)]) for r in runs]
    assert np.allclose(values[0], values[1], rtol=1e-4)


def test_cuda_build_compiles_without_a_gpu_and_its_engine_says_so(tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(BUNDLED, copy)
    build = compiler.compile_model(copy, "cuda", copy / "builds")
    assert Path(build.library).stat().st_size > 0 and build.tvm_target["kind"] == "cuda"
    with pytest.raises(SurrogateOpsError, match="the cuda build loads only on cuda, not on this machine"):
        Predictor(copy, engine="tvm-cuda")
    assert Predictor(copy, engine="auto").engine_name == "onnxruntime"


@pytest.mark.slow
@pytest.mark.system
def test_tuned_build_is_recorded_and_serves_the_batches_that_fit(tmp_path):
    """A real (short) meta-schedule session: one kernel, one round, at a small static shape."""
    from mlflow import MlflowClient

    from surrogate_ops.registry import tracking
    from surrogate_ops.runtime.engines import StaticEngine, tvm_library

    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([*CLI, "compile", "--platform", "x86", "--out", str(tmp_path / "out"), "--tune-minutes", "0.01",
                          "--tune-kernels", "1", "--tune-shape", "32x4x8"], capture_output=True, text=True, env=env,
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "x86-tuned.json").read_text())
    assert record["shape"] == [32, 4, 8] and record["rounds"] == 1 and record["trials"] >= 1
    assert len(record["tasks"]) == 1 and record["tasks"][0]["best_us"] > 0 and record["max_rel_diff"] < 1e-3
    assert "tuned 1 kernels at shape 32x4x8" in out.stdout and "ONNX Runtime" in out.stdout
    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    version = MlflowClient().get_model_version_by_alias("llvm-mca-haswell", "champion")
    assert version.tags["build_x86_tuned"].startswith("tuned 1 kernels")
    listed = {a.path for a in MlflowClient().list_artifacts(version.run_id, "builds/x86")}
    assert {"builds/x86/x86-tuned.so", "builds/x86/x86-tuned.json", "builds/x86/tuning-database"} <= listed
    # the static build answers like ONNX Runtime for batches that fit (padded, in chunks), and
    # hands wider batches to the dynamic build
    tokens = example_batch(Predictor(BUNDLED).tokenizer, BLOCKS)
    engine = StaticEngine(tvm_library(tmp_path / "out" / "x86-tuned.so"), record["shape"],
                          tvm_library(tmp_path / "out" / "x86.so"))
    reference = Predictor(BUNDLED).engine
    narrow = np.concatenate([tokens[:, :4, :8]] * 7)  # 49 rows: two chunks of 32, the second padded
    assert compare(reference(narrow), engine(narrow), ("onnxruntime", "static")).max_rel < 1e-4
    wide = np.pad(tokens, ((0, 0), (0, 6 - tokens.shape[1]), (0, 0)))  # 6 instruction slots: over the shape
    assert compare(reference(wide), engine(wide), ("onnxruntime", "dynamic")).n == len(tokens)
    assert compare(reference(tokens[:3, :4, :8]), engine(tokens[:3, :4, :8]), ("onnxruntime", "small batch")).n == 3
