"""Labeling on a real Ray cluster: a head and a worker node started with `ray start` on loopback.

Both nodes run on this machine (a CPU each) at 127.0.0.2: Ray turns 127.0.0.1 into the machine's
network address, and the cluster must stay on loopback. They share a token of their own, as a
real cluster's nodes do, so no ~/.ray/auth_token is read or written.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import CLI, COMMAND_TIMEOUT, interruptible, script

from surrogate_ops.data import datasets
from surrogate_ops.programs.cluster import LOOPBACK

pytestmark = pytest.mark.system  # every test runs `surrogate-ops collect`
RAY = Path(sys.executable).with_name("ray")
NODE = ["--node-ip-address", LOOPBACK, "--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024),
        "--disable-usage-stats", "--block"]


def _port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A `ray start --block` node in a session of its own: killing its group kills the node."""
    with log.open("w") as out:
        return subprocess.Popen([str(RAY), "start", *args, *NODE], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _alive_nodes(address: str, env: dict) -> int:
    probe = ("import ray; ray.init(address=%r, log_to_driver=False, logging_level='error'); "
             "print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    # Ray's own messages (a node marked dead) may come on stdout too
    found = re.search(r"^alive nodes: (\d+)$", out.stdout, flags=re.MULTILINE)
    return int(found.group(1)) if found else 0


def _stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, env, worker node) of a two-node cluster; the env carries the cluster's token."""
    logs = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"{LOOPBACK}:{_port()}"
    head = _start(["--head", "--port", address.split(":")[1], "--include-dashboard=false"], env, logs / "head.log")
    worker = None
    try:
        deadline = time.time() + 120
        while _alive_nodes(address, env) < 1:
            assert head.poll() is None and time.time() < deadline, (logs / "head.log").read_text()[-2000:]
        worker = _start(["--address", address], env, logs / "worker.log")
        while _alive_nodes(address, env) < 2:
            assert worker.poll() is None and time.time() < deadline, (logs / "worker.log").read_text()[-2000:]
            time.sleep(1)
        yield address, env, worker
    finally:
        for node in (worker, head):
            if node is not None:
                _stop(node)


def _collect(out: Path, *extra: str) -> list[str]:
    return [*CLI, "collect", "--generate", "6000", "--generate-seed", "7", "--density", "dense", "--quiet",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory) -> Path:
    """The same blocks labeled on this machine's cores, the reference every cluster run must equal."""
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    subprocess.run(_collect(out), check=True, capture_output=True, timeout=COMMAND_TIMEOUT)
    return out


@pytest.mark.slow
@pytest.mark.server
def test_a_killed_worker_node_loses_no_block(cluster, local_labels, tmp_path):
    """The worker node dies mid-run (its raylet, object store and workers, by SIGKILL); its
    chunks run again on the head, and the dataset equals the local run's, row for row."""
    address, env, worker = cluster
    out = tmp_path / "ray.parquet"
    proc = subprocess.Popen(_collect(out, "--ray", address), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 300
    while not list(partial.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # still labeling when the node goes
    _stop(worker)
    stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, stderr
    assert "chunks answered by 2 Ray node(s)" in stdout  # the worker took chunks before it died
    assert datasets.load(out).equals(datasets.load(local_labels))
    deadline = time.time() + 120  # the head marks the node dead once its health checks fail
    while _alive_nodes(address, env) != 1:
        assert time.time() < deadline, "the killed worker node still counts as alive"
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.server
def test_an_interrupted_cluster_run_resumes(cluster, local_labels, tmp_path):
    """Interrupted after its first part, the run says how to resume; run again, it labels only the
    rest. llvm-mca takes a second a chunk here, so that the run is still going when this test,
    starved of CPU on a busy machine, sees the first part (6,000 blocks label in seconds)."""
    address, env, _ = cluster
    slow = script(tmp_path, "llvm-mca", f'#!/bin/sh\ncase "$*" in *-iterations=*) sleep 1;; esac\n'
                                        f'exec {shutil.which("llvm-mca")} "$@"\n')
    env = {**env, "SURROGATE_OPS_LLVM_MCA": slow}
    out = tmp_path / "ray.parquet"
    args = _collect(out, "--ray", address, "--part-rows", "1000")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)  # a suite started in the background ignores SIGINT
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 300
    while not list(partial.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # still labeling when it is interrupted
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    written = len(list(partial.glob("part-*.parquet")))
    assert written >= 1 and not out.exists()
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from an earlier run" in resumed.stdout
    assert datasets.load(out).equals(datasets.load(local_labels))


@pytest.mark.slow
@pytest.mark.server
def test_ray_local_labels_as_the_local_cores_do(local_labels, tmp_path):
    """`--ray local` starts a Ray instance of its own on loopback and writes no token to ~/.ray."""
    home = tmp_path / "home"
    out = tmp_path / "ray.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    proc = subprocess.run(_collect(out, "--ray", "local"), env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "chunks answered by 1 Ray node(s)" in proc.stdout
    assert datasets.load(out).equals(datasets.load(local_labels))
    assert not (home / ".ray").exists()


def test_an_unreachable_cluster_is_a_clear_error(tmp_path):
    proc = subprocess.run(_collect(tmp_path / "x.parquet", "--ray", f"{LOOPBACK}:{_port()}"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "cannot join the Ray cluster" in proc.stderr and "Traceback" not in proc.stderr
