"""Surrogate adaptation: fine-tuning the bundled llvm-mca surrogate on measured throughputs made by
the test (real llvm-mc, llvm-mca, MLflow store), and the adaptation experiment in its small setting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.cli import CLI, COMMAND_TIMEOUT
from support.data import bhive_csv

from surrogate_ops import registry
from surrogate_ops.registry.versions import BUNDLED
from surrogate_ops.runtime.modeldir import ModelDir

pytestmark = [pytest.mark.slow, pytest.mark.system]  # fine-tuning and a study, through the command line


@pytest.fixture(scope="module")
def measurements(tmp_path_factory) -> Path:
    """A tiny BHive-format CSV (hex,throughput): 160 distinct blocks, some with invlpg, which the
    bundled vocabulary lacks; 'measured' throughput is a made-up function of the block."""
    blocks = []
    for i in range(160):
        body = [f"addq ${i}, %rax", "imulq %rcx, %rdx"] if i % 4 else [f"invlpg {8 * (i % 16)}(%rsi)", f"addq ${i}, %rax"]
        blocks.append(body + ([f"movq {8 * i}(%rdi), %rsi"] if i % 3 == 0 else []))
    throughputs = [100 * (1.5 * len(block) + (6 if "invlpg" in block[0] else 0)) for block in blocks]
    return bhive_csv(tmp_path_factory.mktemp("data") / "lab-measurements.csv", blocks, throughputs)


def test_finetune_extends_the_vocabulary_and_registers_with_lineage(measurements, tmp_path):
    from mlflow import MlflowClient

    from surrogate_ops.registry import tracking

    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([*CLI, "finetune", "--data", str(measurements), "--epochs", "4", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered llvm-mca-haswell-lab-measured v1" in out.stdout and "MAPE vs measured" in out.stdout

    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    client = MlflowClient()
    version = client.get_model_version_by_alias("llvm-mca-haswell-lab-measured", "challenger")
    parent = client.get_model_version("llvm-mca-haswell", "1")
    assert version.tags["parent_model"] == "llvm-mca-haswell" and version.tags["parent_version"] == "1"
    assert version.tags["parent_run_id"] == parent.run_id and version.tags["target"] == "measured"
    run = client.get_run(version.run_id)
    assert run.data.tags["parent_uri"] == "models:/llvm-mca-haswell/1" and run.data.tags["mode"] == "finetune"
    assert int(run.data.params["vocab_added"]) >= 1 and run.data.params["target"] == "measured"

    old = ModelDir.open(BUNDLED).tokenizer()
    new = registry.open("models:/llvm-mca-haswell-lab-measured@challenger").model.tokenizer()
    assert "invlpg" not in old.vocab and "invlpg" in new.vocab
    assert all(new.vocab[token] == index for token, index in old.vocab.items())  # learned ids untouched
    meta = registry.open(f"models:/llvm-mca-haswell-lab-measured/{version.version}").model.meta
    assert meta["target"] == "measured" and meta["metrics"]["test_mape_vs_measured"] > 0


def test_adaptation_experiment_small_writes_its_table_and_plot(measurements, tmp_path):
    from mlflow import MlflowClient

    from surrogate_ops.registry import tracking

    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([*CLI, "study", "adaptation", "--data", str(measurements), "--small", "--train-sizes", "40,120",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (tmp_path / "out" / "adaptation.csv").read_text().splitlines()
    assert summary[0].startswith("train_size,scratch_mape,scratch_std,finetune_mape") and len(summary) == 3
    runs = (tmp_path / "out" / "adaptation_runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 2 * 2  # two sizes, one seed, two methods
    png = (tmp_path / "out" / "adaptation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| 40 |" in out.stdout and "llvm-mca:" in out.stdout

    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    client = MlflowClient()
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("surrogate-ops").experiment_id])
                 if r.data.tags.get("study") == "adaptation"]
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "adaptation")}
    assert {"adaptation/adaptation.png", "adaptation/adaptation.csv", "adaptation/adaptation.md"} <= listed
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["mode"] for r in children) == ["finetune", "finetune", "scratch", "scratch"]
    assert "llvm_mca_mape_vs_measured" in parent.data.metrics


def test_finetune_members_register_an_ensemble_and_combine_makes_a_soup(measurements, tmp_path):
    """`finetune --members 2`: two fine-tunes with different seeds, registered as one ensemble whose
    answer is the geometric mean of its members' answers; `combine --combine soup` of the same
    members: one network with their mean weights. Members from another parent are refused."""
    import numpy as np
    import torch

    from surrogate_ops.registry import tracking
    from surrogate_ops.runtime.inference import Predictor

    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = subprocess.run([*CLI, "finetune", "--data", str(measurements), "--epochs", "2", "--members", "2",
                          "--register", "lab-ensemble", "--quiet"], capture_output=True, text=True, env=env,
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(2 members (ensemble))" in out.stdout and "registered lab-ensemble v1" in out.stdout
    assert "not answered" in out.stdout
    tracking.configure(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    ensemble = registry.open("models:/lab-ensemble/1").model
    assert ensemble.arch == "ensemble" and ensemble.meta["config"]["members"] == 2
    members = [ModelDir.open(path) for path in ensemble.meta["members"]]
    assert members[0].vocab.read_bytes() == members[1].vocab.read_bytes()

    blocks = ["addq $3, %rax\nimulq %rcx, %rdx", "invlpg 8(%rsi)\naddq $1, %rax", "movq 16(%rdi), %rsi"]
    each = np.array([Predictor(m).cycles(blocks) for m in members])
    assert not np.allclose(each[0], each[1])  # two seeds, two networks
    np.testing.assert_allclose(Predictor(ensemble).cycles(blocks), np.exp(np.log(each).mean(0)), rtol=1e-3)

    out = subprocess.run([*CLI, "combine", *map(str, members), "--data", str(measurements), "--combine", "soup",
                          "--register", "lab-soup"], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "combined 2 members (soup)" in out.stdout and "MAPE vs measured" in out.stdout
    soup = registry.open("models:/lab-soup/1").model
    assert soup.arch == "dep" and soup.meta["combined"] == "soup"
    key = "token.weight"
    weights = [m.module().state_dict()[key] for m in members]
    torch.testing.assert_close(soup.checkpoint()["state_dict"][key], (weights[0] + weights[1]) / 2)

    out = subprocess.run([*CLI, "combine", str(members[0]), str(BUNDLED), "--data", str(measurements)],
                         capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode != 0 and "another vocabulary" in out.stderr and "Traceback" not in out.stderr
