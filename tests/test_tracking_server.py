"""The whole pipeline against a team's MLflow server: a real PostgreSQL (initdb and pg_ctl in a
temporary folder, as an unprivileged user when the tests run as root) behind a real `mlflow
server` that proxies the artifacts, both on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import psycopg
import pytest
from mlflow import MlflowClient
from service_helpers import GOOD, free_port, post, running

from surrogate_ops import registry, tracking
from surrogate_ops.inference import Predictor
from surrogate_ops.tracking_server import MlflowServer, Postgres

CLI = [sys.executable, "-m", "surrogate_ops"]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(PostgreSQL, its MLflow server). PostgreSQL's folder is under /tmp itself: pytest's own
    folders are private to root, and PostgreSQL may run as another user."""
    root = Path(tempfile.mkdtemp(prefix="surrogate-ops-team-"))
    root.chmod(0o755)
    database = Postgres(root / "postgres", free_port()).start()
    try:
        server = MlflowServer(database.uri, root / "artifacts", free_port(), log=root / "mlflow-server.log").start()
        try:
            yield database, server
        finally:
            server.stop()
    finally:
        database.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "generated.parquet"
    subprocess.run([*CLI, "collect", "--generate", "1500", "--generate-seed", "3", "--quiet", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    return out


def _env(home: Path, server: MlflowServer) -> dict:
    return {**os.environ, "SURROGATE_OPS_HOME": str(home), "MLFLOW_TRACKING_URI": server.url}


def _train(data: Path, env: dict, name: str, *extra: str) -> list[str]:
    return [*CLI, "train", "--data", str(data), "--preset", "tiny", "--epochs", "2", "--register", name, "--quiet",
            *extra]


def _client(server: MlflowServer) -> MlflowClient:
    """A client of the server for runs and registry both (an earlier test's registry URI, which
    MLflow keeps process-wide, must not answer for it)."""
    return MlflowClient(server.url, registry_uri=server.url)


@contextmanager
def through(server: MlflowServer):
    """This process's MLflow pointed at the server, as it was afterwards."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    tracking.configure(server.url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _rows(database: Postgres, query: str, *args) -> list[tuple]:
    with psycopg.connect(database.uri) as connection:
        return connection.execute(query, args).fetchall()


def test_collect_train_register_promote_serve(team, data, tmp_path):
    database, server = team
    home = tmp_path / "home"
    env = _env(home, server)
    for _ in range(2):
        out = subprocess.run(_train(data, env, "team"), capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr
    assert "registered models:/team/2 (aliases: challenger)" in out.stdout
    out = subprocess.run([*CLI, "promote", "team"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "challenger v2" in out.stdout, out.stderr
    out = subprocess.run([*CLI, "evaluate", "--model", "models:/team@champion", "--data", str(data)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "vs llvm-mca" in out.stdout, out.stderr
    # the registry is PostgreSQL's, the model files the server's; nothing was written beside the client
    assert _rows(database, "select version from model_versions where name = %s order by version", "team") == [(1,), (2,)]
    assert any((Path(server.artifacts)).rglob("model.onnx"))
    assert not (home / "mlflow.db").exists() and not (home / "mlruns").exists()

    champion = _client(server).get_model_version_by_alias("team", "champion").version
    with running(home, "--model", "models:/team@champion", MLFLOW_TRACKING_URI=server.url) as service:
        code, answers = post(service, {"blocks": GOOD, "mcpu": "haswell"})
    assert code == 200 and len(answers) == len(GOOD)
    # the service's surrogate is the registry's champion, fetched through the server
    answered = [(block, a["cycles"]) for block, a in zip(GOOD, answers) if a["source"] == "surrogate"]
    assert len(answered) > len(GOOD) // 2  # the rest use opcodes the generated training data never showed it
    with through(server):
        expected = Predictor(registry.model_dir(f"models:/team/{champion}")).cycles([b for b, _ in answered])
    assert np.allclose([c for _, c in answered], expected, rtol=1e-5)


def test_two_trainings_register_into_one_model_at_once(team, data, tmp_path):
    database, server = team
    env = _env(tmp_path / "home", server)
    runs = [subprocess.Popen(_train(data, env, "race", "--seed", str(seed)), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr
        assert "lock" not in stderr.lower()
    registered = sorted(line.split()[1] for stdout, _ in outputs for line in stdout.splitlines()
                        if line.startswith("registered models:/race/"))
    assert registered == ["models:/race/1", "models:/race/2"]  # both landed, each its own version
    client = _client(server)
    assert client.get_model_version_by_alias("race", "challenger").version == "2"
    assert client.get_model_version_by_alias("race", "champion").version == "1"


def test_a_server_restart_mid_training_loses_no_metric(team, data, tmp_path):
    """The server is killed (SIGKILL, no clean shutdown) after the second epoch and started again
    seconds later; the training's client retries, and every epoch's metrics are in the store."""
    database, server = team
    env = _env(tmp_path / "home", server)
    epochs = 10
    proc = subprocess.Popen(_train(data, env, "restarted", "--epochs", str(epochs), "--patience", "100"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = _client(server)
    deadline = time.time() + 300
    run_id = None
    while time.time() < deadline and proc.poll() is None:
        runs = client.search_runs([client.get_experiment_by_name("surrogate-ops").experiment_id],
                                  "attributes.status = 'RUNNING'")
        run_id = runs[0].info.run_id if runs else None
        if run_id and len(client.get_metric_history(run_id, "val_mape")) >= 2:
            break
        time.sleep(0.2)
    assert run_id is not None and proc.poll() is None, proc.communicate()
    server.stop(signal.SIGKILL)
    time.sleep(3)
    assert proc.poll() is None  # training goes on while the server is away
    server.start()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    steps = [m.step for m in client.get_metric_history(run_id, "val_mape")]
    assert sorted(steps) == list(range(1, epochs + 1))  # every epoch once
    logged = _rows(database, "select count(distinct step) from metrics where run_uuid = %s and key = 'val_mape'", run_id)
    assert logged == [(epochs,)]
    assert "test_mape_vs_mca" in client.get_run(run_id).data.metrics  # the run finished through the new server
