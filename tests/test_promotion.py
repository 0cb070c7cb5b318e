"""Champion and challenger on a registry as a team uses it (issue 30): a bundled name starts with
its bundled surrogate, a user's model enters as challenger, `promote` refuses what cannot stand in
for the champion and says so in its exit status, and `evaluate` and `promote` leave their figures
on MLflow runs. Real MLflow store, real llvm-mca, tiny models."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support.cli import CLI, COMMAND_TIMEOUT
from support.stores import in_home

from surrogate_ops.config import PRETRAINED
from surrogate_ops.data import datasets
from surrogate_ops.registry import promotion, versions


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_binary) -> Path:
    """A few hundred real blocks from local binaries, labeled by llvm-mca for Haswell."""
    out = tmp_path_factory.mktemp("promotion") / "small.parquet"
    datasets.collect(out, binaries=[tiny_binary, "/usr/bin/ls"], limit=400, progress=False)
    return out


@pytest.fixture
def home(fresh_home) -> Path:
    return fresh_home


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["SURROGATE_OPS_HOME"] = str(home)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)


def logged_run(stdout: str):
    run_id = re.search(r"logged to run (\w+)", stdout).group(1)
    return MlflowClient().get_run(run_id)


def artifacts(run_id: str, folder: str) -> set[str]:
    return {a.path for a in MlflowClient().list_artifacts(run_id, folder)}


def aliases(name: str) -> dict[str, str]:
    return {alias: versions.alias_version(name, alias) for alias in ("champion", "challenger")}


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory, data):
    """The README's walkthrough on an empty store: `train --register llvm-mca-haswell` (a tiny model,
    one epoch); what it printed and the aliases it left."""
    home = tmp_path_factory.mktemp("walkthrough")
    with in_home(home):
        trained = cli(home, "train", "--data", str(data), "--arch", "hier", "--preset", "tiny", "--epochs", "1",
                      "--threads", "1", "--quiet", "--register", "llvm-mca-haswell")
        assert trained.returncode == 0, trained.stderr
        yield home, trained.stdout, aliases("llvm-mca-haswell")


@pytest.mark.slow  # `walkthrough`: 400 blocks labeled, a model trained with `train`
@pytest.mark.system
def test_first_training_under_a_bundled_name_enters_as_challenger(walkthrough):
    home, stdout, registered = walkthrough
    # the bundled surrogate is version 1 and stays champion; the user's model is version 2, challenger
    assert "registered models:/llvm-mca-haswell/2 (aliases: challenger)" in stdout
    assert registered == {"champion": "1", "challenger": "2"}
    with in_home(home):
        bundled = MlflowClient().get_model_version("llvm-mca-haswell", "1")
    assert bundled.tags["source"] == "bundled with surrogate-ops" and bundled.description.startswith("bundled")


@pytest.mark.slow  # `walkthrough`
@pytest.mark.system
def test_promote_refuses_what_the_champion_serves_and_force_moves_it(walkthrough):
    home, _, _ = walkthrough
    with in_home(home):
        # the challenger has no error head where the champion has one: refused, exit 1, nothing moved
        rejected = cli(home, "promote", "llvm-mca-haswell")
        assert rejected.returncode == 1, rejected.stderr
        assert "not promoted; champion stays v1" in rejected.stdout and "lacks an error head" in rejected.stdout
        assert "--force promotes it anyway" in rejected.stdout
        assert aliases("llvm-mca-haswell") == {"champion": "1", "challenger": "2"}
        # the figures are on the promote run: both versions on the same blocks, the data's digest, a plot
        run = logged_run(rejected.stdout)
        m = run.data.metrics
        for key in ("champion_mape_vs_mca", "challenger_mape_vs_mca", "champion_tau_vs_mca", "challenger_tau_vs_mca",
                    "champion_answered_share", "challenger_answered_share"):
            assert key in m
        assert 0 < m["compared_blocks"] <= m["split_blocks"] and m["promoted"] == 0 and m["lacking"] == 1
        challenger = MlflowClient().get_model_version("llvm-mca-haswell", "2")
        assert run.data.params["dataset_digest"] == challenger.tags["dataset_digest"]  # the data it trained on
        assert "plots/comparison.png" in artifacts(run.info.run_id, "plots")
        # the version says what was decided, and on what figures
        assert challenger.description.startswith("not promoted; champion stays v1 (it lacks an error head")
        assert f"{100 * m['challenger_mape_vs_mca']:.2f}%" in challenger.description
        assert f"{int(m['compared_blocks']):,} held-out blocks" in challenger.description
        assert challenger.tags["promotion"] == "rejected"

        # --check decides, moves nothing and records nothing on the version; exit 1 as it would be refused
        checked = cli(home, "promote", "llvm-mca-haswell", "--check")
        assert checked.returncode == 1 and "would not be promoted" in checked.stdout
        assert aliases("llvm-mca-haswell")["champion"] == "1"
        assert MlflowClient().get_model_version("llvm-mca-haswell", "2").description == challenger.description

        forced = cli(home, "promote", "llvm-mca-haswell", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "promoted to champion by --force" in forced.stdout
        assert aliases("llvm-mca-haswell") == {"champion": "2", "challenger": "2"}
        described = MlflowClient().get_model_version("llvm-mca-haswell", "2").description
        assert described.startswith("promoted to champion by --force (it lacks an error head")


def test_promote_on_an_empty_store_starts_from_the_bundled_surrogate(home):
    decision = promotion.promote("llvm-mca-skylake")
    assert decision.promoted and decision.champion is None and decision.challenger == "1"
    assert aliases("llvm-mca-skylake") == {"champion": "1", "challenger": "1"}
    assert versions.version_tags("llvm-mca-skylake", "1")["source"] == "bundled with surrogate-ops"


@pytest.mark.system
def test_evaluate_takes_a_bhive_csv_and_logs_its_figures(home, fixture_blocks, tmp_path):
    """The CSV `finetune` takes (hex,throughput), labeled by llvm-mca once; the figures on the run."""
    rows = [f"{b['hex']},{1.2 * b['haswell']['cycles']:.1f}" for b in fixture_blocks]
    csv = tmp_path / "measured.csv"
    csv.write_text("hex,throughput\n" + "\n".join(rows) + "\n")
    bundled = PRETRAINED / "llvm-mca-haswell"
    out = cli(home, "evaluate", "--model", str(bundled), "--data", str(csv), "--split", "all")
    assert out.returncode == 0, out.stderr
    assert f"blocks evaluated: {len(fixture_blocks)}" in out.stdout
    assert "vs llvm-mca:  MAPE" in out.stdout and "llvm-mca itself: MAPE 16.67%" in out.stdout
    run = logged_run(out.stdout)
    m = run.data.metrics
    printed = re.search(r"vs llvm-mca:  MAPE ([\d.]+)%", out.stdout).group(1)
    assert f"{100 * m['mape_vs_mca']:.2f}" == printed  # the printed figure is the logged one
    assert m["answered_share"] == 1.0 and m["blocks"] == len(fixture_blocks) and "tau_vs_measured" in m
    assert run.data.params["dataset_digest"] and run.data.params["split"] == "all"
    assert {"plots/predicted_vs_mca.png", "plots/predicted_vs_measured.png"} <= artifacts(run.info.run_id, "plots")
