"""Surrogate optimization end to end on a tiny planted problem: 'measured' throughputs are the real
llvm-mca's under a non-default setting, so the parameters matter. Real llvm-mca, llvm-mc, MLflow
store, ONNX Runtime, Optuna and OpenTuner; and the parameters' round trip into llvm-mca itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.cli import CLI, COMMAND_TIMEOUT, rows
from support.data import bhive_csv
from support.stores import in_home

from surrogate_ops import registry
from surrogate_ops.data.datasets import split_of
from surrogate_ops.programs import LlvmMca
from surrogate_ops.programs.setting import McaSetting

PLANTED = {"dispatch_width": 2, "noalias": False}  # the 'machine' the measurements come from
TEMPLATES = ["addq ${i}, %rax", "imulq %rcx, %rdx", "movq {o}(%rdi), %rsi", "movq %rbx, {o}(%rdi)",
             "vaddps %ymm1, %ymm2, %ymm{r}", "leaq {o}(%rsi,%rcx,4), %r8", "xorl %eax, %eax", "subq %rsi, %r9",
             "vmulps %ymm3, %ymm4, %ymm5", "shlq ${s}, %r10", "movl {o}(%rsp), %ecx", "andq %r11, %r12"]


def planted_blocks(count: int = 260) -> list[list[str]]:
    rng = np.random.default_rng(7)
    blocks = []
    for i in range(count):
        picks = rng.choice(len(TEMPLATES), size=int(rng.integers(2, 7)))
        blocks.append([TEMPLATES[k].format(i=i, o=8 * (i % 50), r=6 + i % 8, s=1 + i % 7) for k in picks])
    return blocks


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A measured CSV from the planted setting, a sampled dataset of its training blocks, and a
    conditioned surrogate trained on it from the bundled one, in a store of its own."""
    root = tmp_path_factory.mktemp("optimize")
    blocks = planted_blocks()
    cycles = [r.cycles for r in LlvmMca("haswell", setting=McaSetting(PLANTED)).run(["\n".join(b) for b in blocks])]
    measurements = bhive_csv(root / "planted.csv", blocks, cycles)
    env = {**os.environ, "SURROGATE_OPS_HOME": str(root / "home")}
    sampled = root / "sampled.parquet"
    for command in (["collect", "--bhive", str(measurements), "--mcpu", "haswell", "--sample-params", "6",
                     "--split", "train", "--out", str(sampled), "--quiet"],
                    ["train", "--data", str(sampled), "--from", "models:/llvm-mca-haswell@champion",
                     "--epochs", "3", "--register", "planted-params", "--quiet"]):
        out = subprocess.run([*CLI, *command], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
        assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "env": env, "csv": measurements, "sampled": sampled, "blocks": blocks}


def test_parameter_units_round_trip_every_value():
    for spec in LlvmMca.parameters.values():
        values = [False, True] if spec.type == "bool" else range(spec.low, spec.high + 1)
        scaled = [spec.scale(v) for v in values]
        assert all(0.0 <= u <= 1.0 for u in scaled)
        assert [spec.unscale(u) for u in scaled] == list(values), spec.name
        if spec.zero == "unbounded":  # 0 (no limit) sits above the largest size
            assert spec.scale(0) > spec.scale(spec.high)


def test_expert_defaults_are_llvm_mca_own(fixture_blocks):
    blocks = [b["block"] for b in fixture_blocks]
    program = LlvmMca("haswell")
    defaults = program.expert_defaults()
    assert defaults["dispatch_width"] == 4 and LlvmMca("skylake").expert_defaults()["dispatch_width"] == 6
    plain = [r.cycles for r in program.run(blocks)]
    assert [r.cycles for r in LlvmMca("haswell", setting=McaSetting(defaults)).run(blocks)] == plain
    assert [r.cycles for r in LlvmMca("haswell", setting=McaSetting({"dispatch_width": 1})).run(blocks)] != plain


def test_settings_llvm_mca_runs_alike_get_the_same_units(fixture_blocks):
    """The decoders act only with a micro-op queue: without one llvm-mca ignores them, and so do
    the scaled values a surrogate sees; with one they matter, in llvm-mca and in the scaled values."""
    from surrogate_ops.programs.base import scale_settings

    blocks = [b["block"] for b in fixture_blocks]
    space = LlvmMca.parameters
    defaults = LlvmMca("haswell").expert_defaults()
    settings = [defaults, {**defaults, "decoder_throughput": 1},
                {**defaults, "micro_op_queue_size": 8}, {**defaults, "micro_op_queue_size": 8, "decoder_throughput": 1}]
    cycles = [[r.cycles for r in LlvmMca("haswell", setting=McaSetting(s)).run(blocks)] for s in settings]
    scaled = scale_settings(space, settings)
    assert cycles[0] == cycles[1] and (scaled[0] == scaled[1]).all()
    assert cycles[2] != cycles[3] and not (scaled[2] == scaled[3]).all()


@pytest.mark.system
def test_params_file_round_trip_into_llvm_mca(tmp_path, fixture_blocks):
    """optimize's params.json format, read by predict --program llvm-mca, gives what the llvm-mca
    binary itself answers when given those options on its command line."""
    from surrogate_ops.search.optimize import options

    setting = {**LlvmMca("haswell").expert_defaults(), "dispatch_width": 2, "load_queue": 3, "noalias": False}
    params = tmp_path / "params.json"
    params.write_text(json.dumps(options(LlvmMca("haswell"), setting)))
    assert json.loads(params.read_text())["dispatch"] == 2
    block = fixture_blocks[1]["block"]
    (tmp_path / "blocks.s").write_text(block + "\n")
    out = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--params", str(params), "--input",
                          str(tmp_path / "blocks.s")], capture_output=True, text=True, check=True,
                         timeout=COMMAND_TIMEOUT)
    ours = float(rows(out.stdout)[0]["cycles"])
    raw = subprocess.run(["llvm-mca", "-mtriple=x86_64-unknown-linux-gnu", "-mcpu=haswell", "-iterations=100",
                          "--dispatch=2", "--lqueue=3", "--noalias=false"], input=block + "\n",
                         capture_output=True, text=True, check=True).stdout
    assert ours == float(raw.split("Total Cycles:")[1].split()[0])
    assert ours != LlvmMca("haswell").run([block])[0].cycles


@pytest.mark.slow  # `lab`: labels and trains a conditioned surrogate through the command line
@pytest.mark.system
def test_sampled_collection_labels_each_block_under_its_setting(lab):
    from surrogate_ops.data import datasets

    frame = datasets.load(lab["sampled"])
    assert datasets.parameter_columns(frame) == list(LlvmMca.parameters)
    assert 1 < frame["setting"].nunique() <= 6
    assert set(frame["split"]) >= {"train", "val"}  # split again within the kept blocks
    assert all(split_of(b) == "train" for b in frame["block"])  # no llvm-mca run spent on held-out blocks
    for _, row in frame.groupby("setting").head(1).iterrows():  # against llvm-mca run here with the row's setting
        setting = {name: int(row[f"param_{name}"]) for name in LlvmMca.parameters}
        assert LlvmMca("haswell", setting=McaSetting(setting)).run([row["block"]])[0].cycles == row["mca_cycles_haswell"]


@pytest.mark.slow  # `lab`
@pytest.mark.system
def test_conditioned_surrogate_takes_parameters(lab):
    from surrogate_ops.errors import SurrogateOpsError
    from surrogate_ops.runtime.inference import Predictor

    with in_home(lab["root"] / "home"):
        model_dir = registry.open("models:/planted-params@champion").model
    meta = model_dir.meta
    assert meta["arch"] == "conditioned" and meta["config"]["base"] == "dep"  # the bundled surrogate's own
    assert meta["program_parameters"]["evaluations"] == pd.read_parquet(lab["sampled"])["block"].nunique()
    blocks = ["\n".join(b) for b in lab["blocks"][:40]]
    onnx, torch_ = Predictor(model_dir, engine="onnxruntime"), Predictor(model_dir, engine="torch")
    slow = onnx.cycles(blocks, {"dispatch": 1, "lqueue": 2})
    np.testing.assert_allclose(slow, torch_.cycles(blocks, {"dispatch_width": 1, "load_queue": 2}), rtol=1e-4)
    assert not np.allclose(slow, onnx.cycles(blocks))  # left out: the expert defaults, another answer
    with pytest.raises(SurrogateOpsError, match="outside"):
        onnx.cycles(blocks, {"dispatch": 99})


@pytest.mark.slow  # `lab`
@pytest.mark.system
def test_optimize_end_to_end_with_both_tuners(lab):
    import mlflow

    from surrogate_ops.data import datasets
    from surrogate_ops.registry import tracking

    out_json = lab["root"] / "params.json"
    budget = 1200
    out = subprocess.run([*CLI, "optimize", "--model", "models:/planted-params@champion", "--data", str(lab["csv"]),
                          "--budget", str(budget), "--search-blocks", "60", "--steps", "50", "--restarts", "4",
                          "--out", str(out_json), "--quiet"], capture_output=True, text=True, env=lab["env"],
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out_json.read_text())
    LlvmMca("haswell", setting=McaSetting.from_json(found))  # valid llvm-mca options and values
    for method in ("defaults", "surrogate", "opentuner", "optuna"):
        assert f"  {method} " in out.stdout

    tracking.configure(f"sqlite:///{lab['root'] / 'home' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["surrogate-ops"], filter_string="tags.mode = 'optimize'",
                             output_format="list")[0]
    metrics = run.data.metrics
    # charged: its training data, its anchors and 4 checked candidates, 60 blocks each
    charged = pd.read_parquet(lab["sampled"])["block"].nunique() + 5 * 60
    assert metrics["surrogate_evaluations"] == charged <= budget
    for method in ("surrogate", "opentuner", "optuna"):  # each starts from (or falls back to) the defaults
        assert metrics[f"{method}_evaluations"] <= budget
        assert metrics[f"{method}_objective"] <= metrics["defaults_objective"]
    # the held-out figure for the defaults, against llvm-mca run here on the same test blocks
    records = [r for r in datasets.gather(bhive=[lab["csv"]]) if split_of(r.block) == "test"]  # as disassembled
    measured = np.array([r.measured for r in records])
    default = np.array([r.cycles for r in LlvmMca("haswell").run([r.block for r in records])])
    assert metrics["defaults_test_mape"] == pytest.approx(np.mean(np.abs(default - measured) / measured))
    assert run.data.params["test_blocks"] == str(len(records))
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"params.json", "settings.json", "optimization.png"} <= artifacts
    settings = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="settings.json",
                                                                 dst_path=str(lab["root"] / "dl"))).read_text())
    assert settings["surrogate"]["options"] == found


@pytest.mark.slow  # `lab`
@pytest.mark.system
@pytest.mark.server  # --ray local: a Ray instance on loopback
def test_optimize_checks_on_a_ray_cluster_find_what_local_checks_find(lab):
    """`--ray local`: every llvm-mca run of the search and of the held-out scoring goes to Ray's
    tasks; llvm-mca answers alike there, so the search ends where the local one does."""
    args = [*CLI, "optimize", "--model", "models:/planted-params@champion", "--data", str(lab["csv"]),
            "--budget", "1200", "--search-blocks", "60", "--steps", "30", "--restarts", "2", "--baseline", "optuna",
            "--quiet"]
    local = subprocess.run(args, capture_output=True, text=True, env=lab["env"], timeout=COMMAND_TIMEOUT)
    on_ray = subprocess.run([*args, "--ray", "local"], capture_output=True, text=True, env=lab["env"],
                            timeout=COMMAND_TIMEOUT)
    assert local.returncode == 0 and on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "llvm-mca on the Ray cluster at local" in on_ray.stderr
    table = [line for line in local.stdout.splitlines() if line.startswith("  ")]
    assert len(table) == 3 and table == [line for line in on_ray.stdout.splitlines() if line.startswith("  ")]


@pytest.mark.slow  # `lab`
@pytest.mark.system
def test_optimize_refuses_a_budget_below_the_surrogate_cost(lab):
    out = subprocess.run([*CLI, "optimize", "--model", "models:/planted-params@champion", "--data", str(lab["csv"]),
                          "--budget", "10", "--quiet"], capture_output=True, text=True, env=lab["env"], timeout=300)
    assert out.returncode != 0 and "over the budget of 10" in out.stderr
