"""`train --ray local|ADDRESS --workers N`: the same data-parallel training as under torchrun
(`training.distributed`), its processes placed by Ray Train on a Ray cluster's workers.

Ray Train's `TorchTrainer` starts N workers and opens their process group (gloo on CPUs, NCCL on
GPUs); each runs the training stage's `train`, which finds the group open and trains its share
of every batch. Rank 0 keeps the MLflow run (the store this command uses: workers get its URI and
the work directory), the checkpoints and the registration, and reports its run back. A worker
lost mid-run: Ray Train starts the group again (`--max-restarts`), and the new group resumes the
run from its last checkpoint, as a restarted torchrun group does. The workers import this package:
on a cluster of several machines, install it on each (deploy/cluster-plan.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid
from pathlib import Path

from surrogate_ops.config import child_environ, work_dir
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import tracking
from surrogate_ops.training.train import TrainConfig


def _worker(loop_config: dict) -> None:
    """One Ray Train worker: the training stage in this worker's share of the process group."""
    import ray.train

    from surrogate_ops.training.train import train

    os.environ.update(loop_config["env"])
    config = TrainConfig(**loop_config["config"])
    result = train(config, register=loop_config["register"], progress=False)
    if result is None:  # every worker reports once; rank 0's report is the run's
        ray.train.report({})
        return
    report = {"run_id": result.run_id, "epochs_run": result.epochs_run, "seconds": result.seconds,
              "registered": f"{result.registered.name}/{result.registered.version}" if result.registered else "",
              **{k: float(v) for k, v in result.metrics.items()}}
    with tempfile.TemporaryDirectory() as folder:  # Ray keeps a report's metrics with its checkpoint
        Path(folder, "report.json").write_text(json.dumps(report))
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_on_ray(config: TrainConfig, workers: int, register: str | None = None, max_restarts: int = 0) -> dict:
    """Train with `workers` Ray Train workers on the cluster this process joined (`cluster.connect`);
    returns rank 0's report: run_id, registered (NAME/VERSION or ""), and the run's figures."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise SurrogateOpsError("--workers must be at least 1")
    cuda = config.device == "cuda"
    config = dataclasses.replace(config, data=str(Path(config.data).resolve()))  # workers start elsewhere
    job = uuid.uuid4().hex
    env = {**child_environ({}, home=work_dir(), job=job), "MLFLOW_TRACKING_URI": tracking.current(),
           "OMP_NUM_THREADS": str(config.threads or 1)}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": dataclasses.asdict(config), "register": register, "env": env},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cuda,
                                               resources_per_worker={"CPU": 1, **({"GPU": 1} if cuda else {})}),
        run_config=ray.train.RunConfig(name=f"surrogate-ops-{job[:8]}", storage_path=str(work_dir() / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=max_restarts)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps a worker's error in its own types
        raise SurrogateOpsError(f"training on Ray failed: {exc}") from None
    if result.error is not None:
        raise SurrogateOpsError(f"training on Ray failed: {result.error}")
    if not result.metrics or "run_id" not in result.metrics:
        raise SurrogateOpsError("training on Ray ended without rank 0's report")
    return dict(result.metrics)
