"""A team's MLflow tracking server: PostgreSQL as the backend store, artifacts proxied by the server.

One machine runs `mlflow server --backend-store-uri postgresql://... --artifacts-destination DIR`;
every client (`surrogate-ops ... --tracking-uri http://HOST:PORT`, `mlflow run` with
MLFLOW_TRACKING_URI) talks HTTP to it alone: runs, metrics and the registry go to PostgreSQL,
model files go through the server to DIR (or object storage), and clients need no access to
either. deploy/mlflow-server.md says how a team runs it for real.

`Postgres` and `MlflowServer` start both for one machine: `surrogate-ops tracking-server` (a shared
server for a small team, or to try the set-up) and the tests. Neither trusts the other users of the
host: PostgreSQL asks for a password (scram-sha-256) on its port and keeps its socket in a private
folder, MLflow connects as a role that is no superuser, and the MLflow server asks for MLflow's own
accounts (`BasicAuth`). Every secret is generated on first start into a 0600 file beside the data
and handed over in files or the environment, never on a command line (`ps` shows those to all).
PostgreSQL refuses to run as root, so as root it runs as an unprivileged user (`postgres` where
Debian's package made one, else `nobody`) in that user's own group, its folder owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from surrogate_ops.errors import SurrogateOpsError

HOST = "127.0.0.1"
ROLE = "surrogate_ops"  # the database role MLflow connects as: no superuser, owner of its databases
DATABASE = "mlflow"
AUTH_DATABASE = "mlflow_auth"  # MLflow's basic-auth users and permissions
ADMIN = "admin"  # the MLflow account created on first start


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   key=lambda p: int(p.split("/")[4]), reverse=True)), None)
    if found is None:
        raise SurrogateOpsError(f"PostgreSQL's {name} not found: apt-get install postgresql (or point "
                                "--backend-store-uri at a PostgreSQL server you have)")
    return found


def _server_user() -> pwd.struct_passwd | None:
    """Who the PostgreSQL server runs as: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SurrogateOpsError("running as root, and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _write_private(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner alone (0600) from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _secret(path: Path) -> str:
    """The secret in `path`: generated (URL-safe, 256 bits) on first use, the same on every restart."""
    if not path.is_file():
        _write_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


@dataclass
class Postgres:
    """A PostgreSQL server of its own in `root` (created on first start), on HOST:`port`.

    Its port asks everyone for a password (scram-sha-256). Its socket lies in `root`/socket (0700,
    the server user's; `root` is too), where only the server user gets in, as the superuser named
    after it (peer). MLflow connects as ROLE: no superuser, the owner of DATABASE and AUTH_DATABASE
    (enough for MLflow's migrations). ROLE's password is generated on first start into
    `root`/pgpass, libpq's password file (0600): clients get it as PGPASSFILE (`env`), so the URIs
    carry no password.
    """

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "socket"

    @property
    def passfile(self) -> Path:
        return self.root / "pgpass"

    @property
    def password(self) -> str:
        """ROLE's password, generated on first use."""
        if not self.passfile.is_file():
            _write_private(self.passfile, f"{HOST}:*:*:{ROLE}:{secrets.token_urlsafe(32)}\n")
        return self.passfile.read_text().strip().split(":", 4)[4]

    @property
    def uri(self) -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{DATABASE}"

    @property
    def auth_uri(self) -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{AUTH_DATABASE}"

    def env(self) -> dict[str, str]:
        """What a client of `uri` needs in its environment: the password file."""
        return {"PGPASSFILE": str(self.passfile)}

    def _run(self, args: list[str], timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
        """A PostgreSQL program as the server user, in that user's own group alone (never root's)."""
        user = _server_user()
        as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.root, input=stdin,
                              umask=0o077, **as_user)
        if proc.returncode != 0:
            raise SurrogateOpsError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc

    def start(self) -> Postgres:
        """initdb on first use, start the server, then make sure ROLE and its databases are there
        with the password of `passfile` (so a restart on the same folder keeps its credentials)."""
        user = _server_user()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket.mkdir(exist_ok=True)
        for folder in (self.root, self.socket):
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)
            folder.chmod(0o700)
        if user is not None:
            _check_reachable(self.root, user.pw_name)
        if (self.data / "PG_VERSION").is_file() and not self.passfile.is_file():
            raise SurrogateOpsError(f"{self.data} was made by an earlier surrogate-ops, whose PostgreSQL trusted "
                                    "every local user: dump it (pg_dump) and restore it into a new folder, or "
                                    "remove it to start afresh")
        password = self.password
        if not (self.data / "PG_VERSION").is_file():
            # the superuser is the server user's namesake, reached over the private socket alone
            self._run([_postgres_bin("initdb"), "-D", str(self.data), "--auth-local=peer",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        self._run([_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
                   "-o", f"-p {self.port} -k {self.socket} -c listen_addresses={HOST}", "start"])
        # SQL on stdin, so that the password is on no command line
        setup = [f"SELECT 'CREATE ROLE {ROLE}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')\\gexec",
                 f"ALTER ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}';"]
        setup += [f"SELECT 'CREATE DATABASE {name} OWNER {ROLE}' WHERE NOT EXISTS "
                  f"(SELECT FROM pg_database WHERE datname = '{name}')\\gexec" for name in (DATABASE, AUTH_DATABASE)]
        self._run([_postgres_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket), "-p",
                   str(self.port), "-d", "postgres"], stdin="\n".join(setup) + "\n")
        return self

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run([_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])


def _check_reachable(path: Path, user: str) -> None:
    """PostgreSQL's user must be able to reach `path`: every folder above it searchable by others."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise SurrogateOpsError(f"{path}: PostgreSQL runs as {user}, who cannot enter {parent}; "
                                    "choose a folder under one others can enter (e.g. /srv or /tmp)")


@dataclass
class BasicAuth:
    """MLflow's own accounts on the server (`mlflow server --app-name basic-auth`).

    The admin's password and the app's session secret are generated on first start into `folder`
    (0700; 0600 files), and are the same on every restart; MLflow's auth config goes there too
    (MLFLOW_AUTH_CONFIG_PATH). Users and permissions live in `database` (a SQLAlchemy URI: the
    server's PostgreSQL, or a sqlite file in `folder`). Clients log in the MLflow way, with
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`client_env`). MLflow reads the admin
    password only to create the admin: one changed through MLflow's API is no longer the file's.
    """

    folder: Path
    database: str
    username: str = ADMIN

    @property
    def password_file(self) -> Path:
        return self.folder / "admin-password"

    @property
    def password(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        return _secret(self.password_file)

    def server_env(self) -> dict[str, str]:
        """The server's environment: its auth config (rewritten on every start) and session secret.

        A checked login is cached for a minute: MLflow otherwise hashes the password (PBKDF2, about
        half a second of CPU) on every request, and a training logs metrics by the hundred. The
        price, MLflow's: a password changed or a user deleted still logs in, on the workers that
        did not handle the change, for up to that minute.
        """
        config = self.folder / "basic_auth.ini"
        _write_private(config, f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {self.database}\n"
                               f"admin_username = {self.username}\nadmin_password = {self.password}\n"
                               "auth_cache_ttl_seconds = 60\n")
        return {"MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(self.folder / "secret-key")}

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


@dataclass
class MlflowServer:
    """`mlflow server` on HOST:`port` over `backend` (a database URI), proxying artifacts to `artifacts`.

    With `auth`, it asks for MLflow's accounts; without, anyone who reaches the port reads and
    writes everything. `env` is added to the server's environment (a database's PGPASSFILE); the
    backend URI goes there too, so a password in it is on no command line.
    """

    backend: str
    artifacts: Path
    port: int
    host: str = HOST
    workers: int = 2
    log: Path | None = None
    auth: BasicAuth | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What a client needs in its environment beside MLFLOW_TRACKING_URI: the admin's login."""
        return self.auth.client_env() if self.auth else {}

    def start(self, timeout: float = 180) -> MlflowServer:
        """Start the server (its whole process group) and wait until /health answers."""
        log = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the server's stdout
        env = {**os.environ, **self.env, "MLFLOW_BACKEND_STORE_URI": self.backend,
               **(self.auth.server_env() if self.auth else {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(self.artifacts),
             "--serve-artifacts", "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
             *(["--app-name", "basic-auth"] if self.auth else [])],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_healthy(time.time() + timeout)
        except BaseException:  # Ctrl-C while it starts too: the server goes with it
            self.stop()
            raise
        return self

    def _wait_healthy(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.time() > deadline:
                tail = self.log.read_text()[-2000:] if self.log and self.log.is_file() else ""
                raise SurrogateOpsError(f"mlflow server on {self.url} did not come up\n{tail}")
            time.sleep(0.5)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None
