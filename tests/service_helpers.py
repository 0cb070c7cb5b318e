"""The real service over HTTP for the tests: `surrogate-ops serve` on a free localhost port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FIXTURES

from surrogate_ops.serving import wait_ready

CLI = [sys.executable, "-m", "surrogate_ops"]
GOOD = [b["block"] for b in json.loads((FIXTURES / "blocks.json").read_text())["blocks"]]
UNKNOWN = "invlpg (%rax)\naddq %rax, %rbx"  # invlpg (privileged, in no training set): outside the bundled vocabulary
LONG = "\n".join(["addq %rax, %rbx", "imulq %rcx, %rdx"] * 40)  # 80 instructions, over the model's 64


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


def store_with(tmp_path_factory, **bundles: str) -> Path:
    """A fresh store in which the test registers bundled surrogates: name=bundle, e.g.
    svc_test="llvm-mca-haswell" registers svc-test."""
    from conftest import in_home

    from surrogate_ops import registry

    home = tmp_path_factory.mktemp("home")
    with in_home(home):
        for name, bundle in bundles.items():
            registry.ensure_default(name.replace("_", "-"), bundle=bundle)
    return home


def script(folder: Path, name: str, text: str) -> str:
    """An executable shell script (a stand-in llvm-mca that hangs, crashes or passes through)."""
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)
