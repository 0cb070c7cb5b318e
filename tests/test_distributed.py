"""Data-parallel training (`training.distributed`): `train` under torchrun with two CPU processes
(gloo) gives one MLflow run and one registered model that answers; a worker killed mid-run is
restarted by torchrun and the run resumes from its last checkpoint, every epoch's metric logged once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from surrogate_ops import registry
from surrogate_ops.data import datasets
from surrogate_ops.registry import tracking
from surrogate_ops.runtime.inference import Predictor

pytestmark = [pytest.mark.slow, pytest.mark.system]  # several processes training, through torchrun
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_binary) -> Path:
    out = tmp_path_factory.mktemp("data") / "blocks.parquet"
    datasets.collect(out, binaries=[tiny_binary, "/usr/bin/ls", "/usr/bin/grep"], limit=1500, progress=False)
    return out


def _train(home: Path, dataset: Path, *extra: str, epochs: int = 3, batch: int = 64) -> subprocess.Popen:
    command = [*TORCHRUN, *extra, "-m", "surrogate_ops", "train", "--data", str(dataset), "--preset", "tiny",
               "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", str(batch), "--threads", "1",
               "--register", "ddp", "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SURROGATE_OPS_HOME": str(home)})


def _run_of(home: Path):
    tracking.configure(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    version = client.get_model_version_by_alias("ddp", "champion")
    return client, client.get_run(version.run_id)


def test_two_processes_train_one_run_and_register_one_model(tmp_path, dataset):
    done = _train(tmp_path, dataset)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    assert out.count("registered models:/ddp/1") == 1 and out.count("best val MAPE") == 1  # rank 0 alone reports
    client, run = _run_of(tmp_path)
    assert run.data.params["processes"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_mape")
    assert [m.step for m in history] == [1, 2, 3]
    assert len(client.search_model_versions("name='ddp'")) == 1
    answers = Predictor(registry.open("models:/ddp@champion").model).cycles(["addq %rax, %rbx\nimulq %rbx, %rcx"])
    assert np.isfinite(answers).all() and answers[0] > 0


def _worker(torchrun: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank`, from the workers' environments."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent == torchrun and f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(tmp_path, dataset):
    done = _train(tmp_path, dataset, "--max-restarts", "1", epochs=6, batch=16)  # epochs long enough to die in
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while not any(checkpoints.glob("*/last.pt")) and time.time() < deadline and done.poll() is None:
        time.sleep(0.05)  # the first epoch is done and saved
    victim = _worker(done.pid, 1)
    assert victim is not None and done.poll() is None
    os.kill(victim, signal.SIGKILL)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    assert "exitcode: -9" in err and f"pid: {victim}" in err  # torchrun saw it die, and started the group again
    client, run = _run_of(tmp_path)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_mape")]
    assert steps == [1, 2, 3, 4, 5, 6]  # each epoch once: the restarted group resumed, not started over
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert np.isfinite(Predictor(registry.open("models:/ddp@champion").model).cycles(["addq %rax, %rbx"])).all()


def test_ray_train_on_a_local_cluster_trains_one_run_and_registers_one_model(tmp_path, dataset):
    """`train --ray local --workers 2`: Ray Train's two workers, the same run and model as torchrun's."""
    done = subprocess.run([sys.executable, "-m", "surrogate_ops", "train", "--data", dataset.name, "--preset", "tiny",
                           "--epochs", "2", "--threads", "1", "--register", "ddp", "--ray", "local", "--workers", "2",
                           "--quiet"], capture_output=True, text=True, timeout=600, cwd=dataset.parent,
                          env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path)})  # a relative path, as users type it
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs on 2 Ray workers" in done.stdout and "registered models:/ddp/1" in done.stdout
    client, run = _run_of(tmp_path)
    assert run.data.params["processes"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mape")] == [1, 2]
    assert np.isfinite(Predictor(registry.open("models:/ddp@champion").model).cycles(["addq %rax, %rbx"])).all()


def _ray_train_workers() -> list[int]:
    """The pids of Ray Train's worker actors on this machine."""
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_ray_train_resumes_after_a_worker_is_killed(tmp_path, dataset):
    """`--max-restarts 1`: a Ray Train worker killed after the first checkpoint; Ray starts the group
    again and the new group resumes the run, every epoch's metric logged once."""
    done = subprocess.Popen([sys.executable, "-m", "surrogate_ops", "train", "--data", str(dataset), "--preset", "tiny",
                             "--epochs", "6", "--patience", "6", "--batch-size", "16", "--threads", "1", "--register",
                             "ddp", "--ray", "local", "--workers", "2", "--max-restarts", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path)})
    deadline = time.time() + 300
    while not any((tmp_path / "checkpoints").glob("*/last.pt")) and time.time() < deadline and done.poll() is None:
        time.sleep(0.05)
    workers = _ray_train_workers()
    assert workers and done.poll() is None
    os.kill(workers[-1], signal.SIGKILL)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    client, run = _run_of(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mape")] == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1 and "registered models:/ddp/1" in out
