"""The real service over HTTP for the tests: `surrogate-ops serve` on a free localhost port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.cli import CLI
from surrogate_ops.serving.server import wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service(str):
    """A running service's URL, with its `process` (`surrogate-ops serve`) and its `log` file."""

    process: subprocess.Popen
    log: Path


@contextmanager
def running(home: Path, *args: str, port: int | None = None, **env: str):
    """`surrogate-ops serve` with `args` in `home`'s store; yields its Service once it answers. Its
    output goes to a file (a pipe nobody reads would stall it); the whole process group is ended after."""
    port = port or free_port()
    log = home / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port), *args], start_new_session=True,
                                env={**os.environ, "SURROGATE_OPS_HOME": str(home), **env},
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    service = Service(f"http://127.0.0.1:{port}")
    service.process, service.log = proc, log
    try:
        try:
            wait_ready(service, timeout=120)
        except OSError:
            proc.kill()
            pytest.fail(f"the service did not come up:\n{log.read_text()[-3000:]}")
        yield service
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def post(url: str, body: dict | bytes) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/predict", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/ops/healthz", timeout=120) as response:
        return json.loads(response.read())
