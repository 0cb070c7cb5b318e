"""Every MLproject entry point through the real `mlflow run . -e NAME --env-manager local`, on one
fresh store (SURROGATE_OPS_HOME empty, as on a fresh clone), each checked for what it made: a
dataset file, a registered version, a metric on the project's run. The README's `mlflow run` lines
run as written; the pipeline runs end to end, then again, reusing its finished steps. Entry points
on BHive measurements take a slice of ../shared/data/bhive/hsw.csv, and skip without it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from support.cli import COMMAND_TIMEOUT
from support.data import BHIVE

pytestmark = [pytest.mark.slow, pytest.mark.system]  # `mlflow run` of every entry point
ROOT = Path(__file__).resolve().parents[1]
HSW = BHIVE / "hsw.csv"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One fresh home and its SQLite store for the module; env for `mlflow run` and a client."""
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(SURROGATE_OPS_HOME=str(home), MLFLOW_TRACKING_URI=uri)
    # the store made in the home, so MLflow's Default experiment keeps its artifacts there (./mlruns)
    subprocess.run(["python", "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"], cwd=home, env=env,
                   check=True)
    return {"home": home, "env": env, "client": MlflowClient(uri, uri)}


def mlflow_run(store, argv: list[str]):
    """Run `mlflow run ...` (argv after `mlflow`) in the checkout; the newest run of its entry point."""
    out = subprocess.run(["mlflow", *argv], cwd=ROOT, env=store["env"], capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    entry = argv[argv.index("-e") + 1]
    runs = store["client"].search_runs([e.experiment_id for e in store["client"].search_experiments()],
                                       filter_string=f"tags.`mlflow.project.entryPoint` = '{entry}'",
                                       order_by=["attributes.start_time DESC"])
    assert runs and runs[0].info.status == "FINISHED"
    return runs[0]


def entry(store, name: str, **params):
    return mlflow_run(store, ["run", ".", "-e", name, "--env-manager", "local",
                              *[x for k, v in params.items() for x in ("-P", f"{k}={v}")]])


def readme_lines() -> list[list[str]]:
    section = (ROOT / "README.md").read_text().split("### MLflow Projects", 1)[1].split("\n### ", 1)[0]
    return [shlex.split(line.split("#")[0])[1:] for line in section.splitlines() if line.strip().startswith("mlflow run")]


@pytest.fixture(scope="module")
def hsw_slice(tmp_path_factory) -> Path:
    """The first 1,500 blocks of BHive's Haswell measurements: real data, a small budget."""
    if not HSW.is_file():
        pytest.skip(f"needs BHive's measurements at {HSW}")
    path = tmp_path_factory.mktemp("bhive") / "hsw.csv"
    path.write_text("".join(HSW.open().readlines()[:1501]))
    return path


@pytest.fixture(scope="module")
def readme_runs(store):
    """The README's `mlflow run` lines, as written (collect, then train on what it wrote)."""
    lines = readme_lines()
    assert [argv[argv.index("-e") + 1] for argv in lines] == ["collect", "train"]
    return {argv[argv.index("-e") + 1]: mlflow_run(store, argv) for argv in lines}


def test_readme_collect_writes_its_dataset_under_home_and_logs_it(store, readme_runs):
    run = readme_runs["collect"]
    dataset = store["home"] / "datasets" / "default.parquet"
    assert dataset.is_file() and not (ROOT / "datasets").exists()
    assert run.data.metrics["blocks"] == int(run.data.params["limit"])
    assert [f.path for f in store["client"].list_artifacts(run.info.run_id, "dataset")] == ["dataset/default.parquet"]
    import pandas as pd

    assert pd.read_parquet(dataset)["source"].nunique() >= 5  # many binaries, not one


def test_readme_train_logs_its_params_beside_the_entry_points_and_registers(store, readme_runs):
    """Before: `data` was a `path` parameter, so MLflow logged it as given and train logged it again
    absolute: MLflow refused the change and the run failed."""
    run = readme_runs["train"]
    params = run.data.params
    assert params["data"] == "datasets/default.parquet"
    assert params["max_minutes"] == "1" and params["train_limit"] == "0"
    assert "test_mape_vs_mca" in run.data.metrics
    versions = store["client"].search_model_versions(f"run_id='{run.info.run_id}'")
    assert [v.name for v in versions] == ["llvm-mca-haswell"]


def test_generate_evaluate_promote_with_their_defaults(store, readme_runs):
    run = entry(store, "generate", count=60, out="datasets/generated.parquet")
    assert (store["home"] / "datasets" / "generated.parquet").is_file() and run.data.metrics["blocks"] == 60
    run = entry(store, "evaluate")  # the champion on datasets/default.parquet, the defaults
    assert run.data.metrics, "evaluate logged no figure on its run"
    entry(store, "promote")  # a decision either way finishes the run
    name = "llvm-mca-haswell"
    assert store["client"].get_model_version_by_alias(name, "champion").version


def test_pipeline_chains_its_steps_and_reuses_finished_ones(store):
    params = dict(limit=400, epochs=1, max_minutes=0.1, register="pipeline-haswell")
    first = entry(store, "pipeline", **params)
    tags = first.data.tags
    steps = {s: tags[f"step_{s}"] for s in ("collect", "train", "evaluate", "promote", "compile")}
    client = store["client"]
    for step, run_id in steps.items():
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == first.info.run_id, step
    assert tags["dataset_uri"].endswith("/dataset/pipeline-haswell-400.parquet")
    assert client.get_run(steps["train"]).data.params["data"].endswith("pipeline-haswell-400.parquet")
    name, version = re.fullmatch(r"models:/(.+)/(\d+)", tags["model_uri"]).groups()
    assert client.get_model_version(name, version).run_id == steps["train"]
    assert "build_x86" in client.get_model_version(name, version).tags  # compiled
    again = entry(store, "pipeline", **params)
    reused = {s: again.data.tags[f"step_{s}"] for s in steps}
    assert reused == steps  # promote too: it runs again only when train did


def test_capacity_trains_times_and_draws_each_size(store, readme_runs):
    """`study capacity` through its entry point, on the README's collected data: each size trained on
    the same data as a nested run, scored and timed, the smaller network the faster, the Pareto
    front marked, the table and plot written and logged."""
    import pandas as pd

    run = entry(store, "capacity", small="true", sizes="dep:tiny:dim=16:layers=1,dep:small")
    out = store["home"] / "capacity"
    table = pd.read_csv(out / "capacity.csv").set_index("size")
    small, large = table.loc["dep:tiny:dim=16:layers=1"], table.loc["dep:small"]
    assert small["parameters"] < large["parameters"] / 10
    assert small["network_blocks_per_s"] > large["network_blocks_per_s"]  # far fewer parameters: faster
    assert small["pareto"]  # nothing is faster
    assert (table["test_mape_vs_mca"] > 0).all() and (out / "capacity.png").stat().st_size > 10_000
    assert "| `dep:small` |" in (out / "capacity.md").read_text()
    client = store["client"]
    sizes = client.search_runs([run.info.experiment_id], filter_string="tags.study = 'capacity'")
    assert {r.info.run_id for r in sizes} == set(table["run_id"])
    assert all("network_blocks_per_s" in r.data.metrics for r in sizes)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "capacity")} >= {"capacity/capacity.png"}


def test_train_ddp_trains_under_torchrun_into_the_project_run(store, readme_runs):
    """Two processes under torchrun; rank 0 logs into the entry point's run and registers once."""
    run = entry(store, "train_ddp", preset="tiny", epochs=2, processes=2, register="ddp-project")
    assert run.data.params["processes"] == "2" and "best_val_mape" in run.data.metrics
    assert [str(v.version) for v in store["client"].search_model_versions("name='ddp-project'")] == ["1"]


@pytest.mark.shared_data
def test_finetune_with_declared_limits(store, hsw_slice):
    run = entry(store, "finetune", measurements=hsw_slice, epochs=1, max_minutes=0.1, train_limit=100)
    assert run.data.params["train_limit"] == "100" and "test_mape_vs_measured" in run.data.metrics
    assert store["client"].search_model_versions(f"run_id='{run.info.run_id}'")


@pytest.mark.shared_data
def test_adaptation_small_with_sizes(store, hsw_slice):
    """Before: `-P sizes=40` clashed with the study's own `sizes` ([40]) and the run failed. (Its first
    400 blocks: the study is test_adaptation's, this is the entry point's parameters.)"""
    few = hsw_slice.with_name("hsw-400.csv")
    few.write_text("".join(hsw_slice.open().readlines()[:401]))
    run = entry(store, "adaptation", measurements=few, small="true", sizes="40", step_budget=20)
    assert run.data.params["sizes"] == "40" and run.data.params["sizes_resolved"] == "[40]"
    assert "llvm_mca_mape_vs_measured" in run.data.metrics
    assert (store["home"] / "adaptation" / "adaptation.md").is_file()


@pytest.mark.shared_data
def test_collect_tables_then_optimize_table(store, hsw_slice):
    run = entry(store, "collect_tables", measurements=hsw_slice, limit=300, out="datasets/tables.parquet")
    assert (store["home"] / "datasets" / "tables.parquet").is_file() and run.data.metrics["blocks"] > 0
    run = entry(store, "optimize_table", measurements=hsw_slice, labels="datasets/tables.parquet", epochs=1, steps=5,
                checks=1, baseline="none", **{"min-count": 5, "search-blocks": 50, "test-limit": 50})
    assert "surrogate_test_mape" in run.data.metrics and (store["home"] / "table.json").is_file()


@pytest.mark.shared_data
def test_optimize(store, hsw_slice):
    sampled = store["home"] / "datasets" / "sampled.parquet"
    cli = ["python", "-m", "surrogate_ops"]
    for command in (["collect", "--bhive", str(hsw_slice), "--limit", "200", "--sample-params", "4", "--split",
                     "train", "--out", str(sampled), "--quiet"],
                    ["train", "--data", str(sampled), "--from", "models:/llvm-mca-haswell/1", "--epochs", "1",
                     "--register", "llvm-mca-haswell-params", "--quiet"]):
        out = subprocess.run(cli + command, env=store["env"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert out.returncode == 0, out.stderr[-3000:]
    run = entry(store, "optimize", measurements=hsw_slice, evaluations=300, checked=0, baseline="none", steps=5,
                restarts=0, rounds=1, **{"search-blocks": 50, "test-limit": 50})
    assert "surrogate_test_mape" in run.data.metrics and (store["home"] / "params.json").is_file()
