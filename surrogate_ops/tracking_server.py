"""A team's MLflow tracking server: PostgreSQL as the backend store, artifacts proxied by the server.

One machine runs `mlflow server --backend-store-uri postgresql://... --artifacts-destination DIR`;
every client (`surrogate-ops ... --tracking-uri http://HOST:PORT`, `mlflow run` with
MLFLOW_TRACKING_URI) talks HTTP to it alone: runs, metrics and the registry go to PostgreSQL,
model files go through the server to DIR (or object storage), and clients need no access to
either. deploy/mlflow-server.md says how a team runs it for real.

`Postgres` and `MlflowServer` start both for one machine: `surrogate-ops tracking-server` (a shared
server for a small team, or to try the set-up) and the tests. PostgreSQL refuses to run as root,
so as root it runs as an unprivileged user (`postgres` where Debian's package made one, else
`nobody`), its data directory owned by that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from surrogate_ops.errors import SurrogateOpsError

HOST = "127.0.0.1"
ROLE = "surrogate_ops"  # the database role MLflow connects as
DATABASE = "mlflow"


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   key=lambda p: int(p.split("/")[4]), reverse=True)), None)
    if found is None:
        raise SurrogateOpsError(f"PostgreSQL's {name} not found: apt-get install postgresql (or point "
                                "--backend-store-uri at a PostgreSQL server you have)")
    return found


def _server_user() -> str | None:
    """Who the PostgreSQL server runs as: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise SurrogateOpsError("running as root, and no unprivileged user (postgres, nobody) to run PostgreSQL as")


@dataclass
class Postgres:
    """A PostgreSQL server of its own in `root` (created on first start), on HOST:`port`."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def uri(self) -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{DATABASE}"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, user=_server_user(),
                              cwd=self.root)
        if proc.returncode != 0:
            raise SurrogateOpsError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc

    def start(self) -> Postgres:
        """initdb on first use (trust for local connections: the port listens on loopback only), then
        start the server and create the database once."""
        user = _server_user()
        self.root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _check_reachable(self.root, user)
            shutil.chown(self.root, user)
        fresh = not (self.data / "PG_VERSION").is_file()
        if fresh:
            self._run([_postgres_bin("initdb"), "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                       "--locale=C.UTF-8"])
        self._run([_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
                   "-o", f"-p {self.port} -k {self.root} -c listen_addresses={HOST}", "start"])
        if fresh:
            self._run([_postgres_bin("createdb"), "-h", HOST, "-p", str(self.port), "-U", ROLE, DATABASE])
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
class MlflowServer:
    """`mlflow server` on HOST:`port` over `backend` (a database URI), proxying artifacts to `artifacts`."""

    backend: str
    artifacts: Path
    port: int
    host: str = HOST
    workers: int = 2
    log: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180) -> MlflowServer:
        """Start the server (its whole process group) and wait until /health answers."""
        log = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the server's stdout
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--serve-artifacts", "--host", self.host,
             "--port", str(self.port), "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
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
