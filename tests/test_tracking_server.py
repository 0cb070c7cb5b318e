"""The whole pipeline against a team's MLflow server: a real PostgreSQL (initdb and pg_ctl in a
temporary folder, as an unprivileged user when the tests run as root) behind a real `mlflow
server` that proxies the artifacts and asks for MLflow's accounts, both on 127.0.0.1; and what
the other users of the host can no longer do to either."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import psycopg
import pytest
from mlflow import MlflowClient
from support.cli import CLI, COMMAND_TIMEOUT
from support.data import GOOD
from support.servers import free_port, post, running

from surrogate_ops import registry
from surrogate_ops.registry import tracking
from surrogate_ops.registry.server import DATABASE, ROLE, BasicAuth, MlflowServer, Postgres
from surrogate_ops.runtime.inference import Predictor

# PostgreSQL and an MLflow server started here; the tests that share `team` are slow by its start alone
pytestmark = [pytest.mark.server, pytest.mark.system]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(PostgreSQL, its MLflow server), with accounts; this process's MLflow, and the commands it
    starts, log in as the admin. PostgreSQL's folder is under /tmp itself: pytest's own folders are
    private to root, and PostgreSQL may run as another user."""
    root = Path(tempfile.mkdtemp(prefix="surrogate-ops-team-"))
    root.chmod(0o755)
    database = Postgres(root / "postgres", free_port()).start()
    try:
        server = MlflowServer(database.uri, root / "artifacts", free_port(), log=root / "mlflow-server.log",
                              auth=BasicAuth(root / "auth", database.auth_uri), env=database.env()).start()
        try:
            with pytest.MonkeyPatch.context() as env:
                for name, value in server.client_env().items():
                    env.setenv(name, value)
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
                   check=True, capture_output=True, timeout=COMMAND_TIMEOUT)
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
    with psycopg.connect(database.uri, password=database.password) as connection:
        return connection.execute(query, args).fetchall()


@pytest.mark.slow
def test_collect_train_register_promote_serve(team, data, tmp_path):
    database, server = team
    home = tmp_path / "home"
    env = _env(home, server)
    for _ in range(2):
        out = subprocess.run(_train(data, env, "team"), capture_output=True, text=True, env=env,
                             timeout=COMMAND_TIMEOUT)
        assert out.returncode == 0, out.stderr
    assert "registered models:/team/2 (aliases: challenger)" in out.stdout
    out = subprocess.run([*CLI, "promote", "team"], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert out.returncode == 0 and "challenger v2" in out.stdout, out.stderr
    out = subprocess.run([*CLI, "evaluate", "--model", "models:/team@champion", "--data", str(data)],
                         capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
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
        expected = Predictor(registry.open(f"models:/team/{champion}").model).cycles([b for b, _ in answered])
    assert np.allclose([c for _, c in answered], expected, rtol=1e-5)


@pytest.mark.slow
def test_two_trainings_register_into_one_model_at_once(team, data, tmp_path):
    database, server = team
    env = _env(tmp_path / "home", server)
    runs = [subprocess.Popen(_train(data, env, "race", "--seed", str(seed)), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outputs = [run.communicate(timeout=COMMAND_TIMEOUT) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr
        assert "lock" not in stderr.lower()
    registered = sorted(line.split()[1] for stdout, _ in outputs for line in stdout.splitlines()
                        if line.startswith("registered models:/race/"))
    assert registered == ["models:/race/1", "models:/race/2"]  # both landed, each its own version
    client = _client(server)
    assert client.get_model_version_by_alias("race", "challenger").version == "2"
    assert client.get_model_version_by_alias("race", "champion").version == "1"


@pytest.mark.slow
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
    stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, stderr
    steps = [m.step for m in client.get_metric_history(run_id, "val_mape")]
    assert sorted(steps) == list(range(1, epochs + 1))  # every epoch once
    logged = _rows(database, "select count(distinct step) from metrics where run_uuid = %s and key = 'val_mape'", run_id)
    assert logged == [(epochs,)]
    assert "test_mape_vs_mca" in client.get_run(run_id).data.metrics  # the run finished through the new server


def _http(url: str, method: str, path: str, body: dict | None = None, login: dict | None = None) -> int:
    """The status of one REST call to the server at `url`, with a login (client_env's) or none."""
    headers = {"Content-Type": "application/json"}
    if login:
        token = f"{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_the_mlflow_server_asks_every_client_for_an_account(team):
    """Without a login, nobody reads, deletes a registered model or moves its champion; with the
    admin's, the same calls work."""
    database, server = team
    client = _client(server)
    client.create_registered_model("guarded")
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    for _ in range(2):
        client.create_model_version("guarded", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("guarded", "champion", "1")
    move = {"name": "guarded", "alias": "champion", "version": "2"}
    assert _http(server.url, "GET", "registered-models/search") == 401
    assert _http(server.url, "POST", "registered-models/alias", move) == 401
    assert _http(server.url, "DELETE", "registered-models/delete", {"name": "guarded"}) == 401
    assert client.get_model_version_by_alias("guarded", "champion").version == "1"
    login = server.client_env()
    assert _http(server.url, "POST", "registered-models/alias", move, login=login) == 200
    assert _http(server.url, "DELETE", "registered-models/delete", {"name": "guarded"}, login=login) == 200


def _psql_as_nobody(database: Postgres, host: str, user: str) -> subprocess.CompletedProcess:
    psql = shutil.which("psql") or next(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    return subprocess.run(["runuser", "-u", "nobody", "--", str(psql), "-w", "-X", "-h", host, "-p", str(database.port),
                           "-U", user, "-d", DATABASE, "-c", "select rolsuper from pg_roles where rolname = current_user"],
                          capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]}, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs psql as another user (runuser)")
@pytest.mark.slow
def test_other_users_of_the_host_get_no_connection_to_postgres(team):
    """Another local user (nobody) connects neither as MLflow's role nor as the superuser without
    the password, and cannot reach the socket; MLflow's role is no superuser and runs no programs."""
    database, _ = team
    superuser = database.data.owner()  # the server user's namesake
    for user in (ROLE, superuser):
        out = _psql_as_nobody(database, "127.0.0.1", user)
        assert out.returncode != 0 and "password" in out.stderr, (user, out.stdout, out.stderr)
    out = _psql_as_nobody(database, str(database.socket), superuser)
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stderr
    assert _rows(database, "select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user") \
        == [(False, False, False)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _rows(database, "copy (select 1) to program 'id'")


@pytest.mark.slow
def test_postgres_keeps_its_socket_private_and_runs_without_group_root(team):
    """The socket's folder and the password file are their owners' alone; PostgreSQL's processes
    have no root group (as root, the server user's own group alone)."""
    database, _ = team
    socket = database.socket.stat()
    assert socket.st_mode & 0o077 == 0 and socket.st_uid == database.data.stat().st_uid
    assert database.passfile.stat().st_mode & 0o077 == 0
    pid = int((database.data / "postmaster.pid").read_text().split()[0])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    if os.geteuid() == 0:
        assert "0" not in status["Gid"].split() + status["Groups"].split(), status["Groups"]


@pytest.mark.slow
def test_no_password_is_on_any_command_line(team):
    """`ps` shows every process's command line to everyone: neither PostgreSQL's nor MLflow's
    password is on one (the server, its workers, PostgreSQL's processes)."""
    database, server = team
    passwords = [database.password, server.client_env()["MLFLOW_TRACKING_PASSWORD"]]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_text()
        except OSError:
            continue  # gone meanwhile
        assert not any(password in text for password in passwords), text


def _tracking_server(root: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`surrogate-ops tracking-server --dir root` once it says how clients log in: (it, what it printed)."""
    proc = subprocess.Popen([*CLI, "tracking-server", "--dir", str(root), "--port", str(free_port()), "--workers", "1",
                             *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = ""
    for line in proc.stdout:
        printed += line
        if line.startswith("(MLflow's basic auth"):
            return proc, printed
    proc.wait(timeout=60)
    pytest.fail(printed)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)  # as Ctrl-C: the MLflow server and PostgreSQL stop
    rest, _ = proc.communicate(timeout=120)
    return rest


@pytest.mark.slow
def test_tracking_server_restarts_with_its_data_and_its_credentials():
    """`surrogate-ops tracking-server` prints how a client logs in; stopped and started again on
    the same folder, the same login works, PostgreSQL's password is the same, and a registered
    model is still there. A call without the login gets 401 both times."""
    root = Path(tempfile.mkdtemp(prefix="surrogate-ops-cli-"))
    root.chmod(0o755)
    try:
        postgres_port, seen = str(free_port()), []
        for start in range(2):
            proc, printed = _tracking_server(root, "--postgres-port", postgres_port)
            try:
                settings = dict(re.findall(r"export (\w+)=(.*)", printed))
                url, password_file = settings["MLFLOW_TRACKING_URI"], settings["MLFLOW_TRACKING_PASSWORD"][6:-1]
                login = {"MLFLOW_TRACKING_USERNAME": settings["MLFLOW_TRACKING_USERNAME"],
                         "MLFLOW_TRACKING_PASSWORD": Path(password_file).read_text().strip()}
                seen.append((login, (root / "postgres" / "pgpass").read_text()))
                if start == 0:
                    assert _http(url, "POST", "registered-models/create", {"name": "kept"}, login=login) == 200
                assert _http(url, "GET", "registered-models/get?name=kept", login=login) == 200
                assert _http(url, "GET", "registered-models/get?name=kept") == 401
            finally:
                rest = _stop(proc)
            assert proc.returncode == 0 and "stopping" in rest, printed + rest
        assert seen[0] == seen[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_tracking_server_without_accounts_says_what_anyone_can_then_do(tmp_path):
    proc = subprocess.Popen([*CLI, "tracking-server", "--dir", str(tmp_path), "--no-auth", "--port", str(free_port()),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    warning = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert warning.startswith("warning: --no-auth") and "every user of this host" in warning
    for deed in ("read every run and model", "delete registered models", "move aliases such as champion"):
        assert deed in warning
