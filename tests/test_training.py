"""Training, MLflow tracking, the registry and promotion, against the real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from support.cli import CLI, COMMAND_TIMEOUT, interruptible

from surrogate_ops import config, registry
from surrogate_ops.data import datasets
from surrogate_ops.registry import promotion, versions
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_binary) -> Path:
    """~1,500 real blocks from local binaries, labeled by llvm-mca, plus BHive-format measurements
    made from them (measured = 1.2 x llvm-mca's cycles) so the measured paths run too."""
    tmp = tmp_path_factory.mktemp("data")
    base = tmp / "base.parquet"
    datasets.collect(base, binaries=[tiny_binary, "/usr/bin/ls", "/usr/bin/grep"], limit=1500, progress=False)
    frame = datasets.load(base)
    bhive = tmp / "hsw.csv"
    rows = [f"{h},{c * 1.2:.1f}" for h, c in zip(frame["hex"], frame["mca_cycles_haswell"])]
    bhive.write_text("hex,throughput\n" + "\n".join(rows) + "\n")
    out = tmp / "train.parquet"
    datasets.collect(out, bhive=[bhive], progress=False)
    return out


@pytest.fixture
def home(fresh_home) -> Path:
    return fresh_home


def quick(data: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "arch": "hier", "preset": "tiny", "epochs": 3, "threads": 1, **overrides})


@pytest.mark.slow  # `dataset`: 1,500 blocks of local binaries labeled, then again as measurements
def test_train_logs_and_registers(home, dataset):
    result = train(quick(dataset), register="unit", progress=False)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["arch"] == "hier" and int(run.data.params["parameters"]) > 1000
    history = MlflowClient().get_metric_history(result.run_id, "val_mape")
    assert [m.step for m in history] == list(range(1, result.epochs_run + 1))
    for key in ("test_mape_vs_mca", "test_tau_vs_mca", "test_mape_vs_measured", "test_tau_vs_measured"):
        assert key in run.data.metrics
    assert run.data.metrics["test_mape_vs_mca"] < 1.0
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == run.data.tags["dataset_digest"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id)} | {
        a.path for a in MlflowClient().list_artifacts(result.run_id, "plots")}
    assert "vocab.json" in artifacts and "plots/test_predicted_vs_mca.png" in artifacts
    assert "plots/test_error_by_length_vs_measured.png" in artifacts
    # the first version of a name is champion and challenger, tagged with its lineage and figures
    assert result.registered.aliases == ("challenger", "champion")
    tags = versions.version_tags("unit", result.registered.version)
    assert tags["program"] == "llvm-mca" and tags["mcpu"] == "haswell" and tags["arch"] == "hier"
    assert tags["dataset_digest"] == dataset_input.dataset.digest
    assert float(tags["test_mape_vs_mca"]) == pytest.approx(run.data.metrics["test_mape_vs_mca"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.system
def test_evaluate_prints_the_figures_training_logged(home, dataset):
    result = train(quick(dataset), register="unit", progress=False)
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home)}
    out = subprocess.run([*CLI, "evaluate", "--model", "models:/unit@champion", "--data", str(dataset)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    m = result.metrics
    assert f"MAPE {100 * m['test_mape_vs_mca']:.2f}%   Kendall's tau {m['test_tau_vs_mca']:.4f}" in out.stdout
    assert f"vs measured:  MAPE {100 * m['test_mape_vs_measured']:.2f}%" in out.stdout
    # measured = 1.2 x llvm-mca in this data, so llvm-mca's own error is |1 - 1.2| / 1.2
    assert "llvm-mca itself: MAPE 16.67%" in out.stdout


@pytest.mark.slow
def test_pyfunc_model_needs_no_internals(home, dataset):
    train(quick(dataset), register="unit", progress=False)
    blocks = list(datasets.load(dataset)["block"][:20]) + [".include \"/etc/passwd\""]
    code = ("import json, sys, mlflow\n"
            "model = mlflow.pyfunc.load_model('models:/unit@champion')\n"
            "print(model.predict(json.loads(sys.stdin.read())).to_json(orient='records'))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.default_store_uri()}
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(blocks), capture_output=True, text=True,
                          env=env, cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])  # a row per block (tests/test_pyfunc.py: the policy)
    expected = Predictor(registry.open("models:/unit@champion").model).cycles(blocks)
    assert got[-1]["source"] == "error" and got[-1]["cycles"] is None and "'.include'" in got[-1]["error"]
    mine = [i for i, row in enumerate(got[:-1]) if row["source"] == "surrogate"]
    assert mine and np.allclose([got[i]["cycles"] for i in mine], expected[mine], rtol=1e-6)
    assert all(row["source"] == "llvm-mca" and row["reason"] for i, row in enumerate(got[:-1]) if i not in mine)
    assert "Warning" not in proc.stderr and "warning" not in proc.stderr


@pytest.mark.slow
def test_promotion_moves_champion_only_when_no_worse(home, dataset):
    first = train(quick(dataset, epochs=4), register="unit", progress=False)
    weak = train(quick(dataset, epochs=1, lr=1e-5, warmup_steps=1), register="unit", progress=False)
    assert weak.registered.aliases == ("challenger",)
    decision = promotion.promote("unit")
    assert not decision.promoted and decision.challenger_mape > decision.champion_mape
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("unit", "champion").version) == first.registered.version
    tags = versions.version_tags("unit", weak.registered.version)
    assert tags["promotion"] == "rejected" and float(tags["promotion_champion_error"]) == pytest.approx(
        decision.champion_mape, rel=1e-5)
    strong = train(quick(dataset, epochs=8), register="unit", progress=False)
    decision = promotion.promote("unit")
    assert decision.promoted == (decision.challenger_mape <= decision.champion_mape)
    champion = str(client.get_model_version_by_alias("unit", "champion").version)
    assert champion == (strong.registered.version if decision.promoted else first.registered.version)
    assert versions.version_tags("unit", strong.registered.version)["promotion"] in ("promoted", "rejected")


@pytest.mark.slow
def test_training_is_deterministic(home, dataset):
    a = train(quick(dataset, epochs=2), progress=False)
    b = train(quick(dataset, epochs=2), progress=False)
    assert a.metrics["best_val_mape"] == b.metrics["best_val_mape"]
    assert a.metrics["test_mape_vs_mca"] == b.metrics["test_mape_vs_mca"]


@pytest.mark.slow
@pytest.mark.system
def test_interrupted_training_resumes(home, dataset):
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home)}
    args = [*CLI, "train", "--data", str(dataset), "--preset", "tiny", "--epochs", "40", "--patience", "40",
            "--threads", "1", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=interruptible)
    first_line = proc.stdout.readline()
    run_id = first_line.split()[1]
    checkpoint = home / "checkpoints" / run_id / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    done = len(MlflowClient().get_metric_history(run_id, "val_mape"))
    assert 1 <= done < 40
    resumed = subprocess.run([*CLI, "train", "--data", str(dataset), "--resume", run_id, "--quiet"],
                             capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "val_mape")]
    assert steps == list(range(1, 41))  # each epoch once: picked up after the last checkpoint
    assert "test_mape_vs_mca" in mlflow.get_run(run_id).data.metrics


def test_bundled_default_registers_once(home):
    first = versions.ensure_default()
    assert first is not None and first.aliases == ("challenger", "champion")
    assert versions.ensure_default() is None
    predictor = Predictor(registry.open("models:/llvm-mca-haswell@champion").model)
    [cycles] = predictor.cycles(["movq (%rdi), %rax\naddq $1, %rax\nmovq %rax, 8(%rdi)"])
    assert 50 < cycles < 400  # llvm-mca says 109


def test_bad_training_inputs_are_clear(home, dataset):
    from surrogate_ops.errors import SurrogateOpsError

    with pytest.raises(SurrogateOpsError, match="no mca_cycles_skylake column"):
        train(quick(dataset, mcpu="skylake"), progress=False)
    with pytest.raises(SurrogateOpsError, match="unknown architecture"):
        train(quick(dataset, arch="gpt"), progress=False)
    with pytest.raises(SurrogateOpsError, match="no checkpoint for run"):
        train(quick(dataset), resume="0123", progress=False)


@pytest.mark.system
def test_source_weights_repeat_training_rows(home, dataset):
    """--weight counts a source's training rows several times (or a share of them); the validation
    split is left alone; a glob no source matches, or a factor that is not positive, is an error."""

    from surrogate_ops.errors import SurrogateOpsError
    from surrogate_ops.training.train import check_weights, weighted

    rows = pd.DataFrame({"block": [f"b{i}" for i in range(1000)],
                         "source": ["generated:loops:5"] * 100 + ["bhive:hsw.csv"] * 900})
    out = weighted(rows, {"generated:loops:*": 3, "bhive:*": 0.5}, np.random.default_rng(0))
    assert (out["source"] == "generated:loops:5").sum() == 300
    assert 400 < (out["source"] == "bhive:hsw.csv").sum() < 500
    assert weighted(rows, {}, np.random.default_rng(0)) is rows
    check_weights({"generated:loops:*": 3, "bhive:*": 0.5}, rows["source"])
    with pytest.raises(SurrogateOpsError, match="no training row's source matches"):
        check_weights({"corners-*": 2}, rows["source"])
    with pytest.raises(SurrogateOpsError, match="that an earlier --weight has not taken"):
        check_weights({"bhive:*": 2, "bhive:hsw*": 3}, rows["source"])  # the second would change nothing
    with pytest.raises(SurrogateOpsError, match="a factor must be positive"):
        check_weights({"bhive:*": 0}, rows["source"])
    result = subprocess.run([*CLI, "train", "--data", str(dataset), "--weight", "bhive=x"], capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT)
    assert result.returncode != 0 and "expected SOURCE=FACTOR" in result.stderr


@pytest.mark.parametrize("arch", ["bert", "ithemal"])
@pytest.mark.slow
def test_every_architecture_trains_and_exports(home, dataset, arch):
    result = train(quick(dataset, arch=arch, epochs=1), progress=False)
    meta = result.model.meta
    assert meta["arch"] == arch and meta["parameters"] > 1000
    assert mlflow.get_run(result.run_id).data.metrics["onnx_max_rel_diff"] < 1e-3
    torch_engine = Predictor(result.model, engine="torch").cycles(["addq %rax, %rbx\nimulq %rcx, %rdx"])
    onnx_engine = Predictor(result.model, engine="onnxruntime").cycles(["addq %rax, %rbx\nimulq %rcx, %rdx"])
    assert np.allclose(torch_engine, onnx_engine, rtol=1e-4)


def test_capacity_refuses_an_unknown_size_before_training(home, dataset):
    """`study capacity` checks every size before it trains any (the sweep itself: test_mlproject)."""
    bad = subprocess.run([*CLI, "study", "capacity", "--data", str(dataset), "--sizes", "dep:tiny,dep:huge"],
                         capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=home)
    assert bad.returncode != 0 and "unknown preset 'huge' for dep; choose from tiny, small, base" in bad.stderr
    assert not mlflow.search_runs(experiment_names=["surrogate-ops"], filter_string="tags.study = 'capacity'").shape[0]