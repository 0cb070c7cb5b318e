"""Data-parallel training over several processes, with torch's own DistributedDataParallel.

`torchrun --nproc-per-node 2 -m surrogate_ops train ...` starts the same `train` command in each
process; torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) says it is one of several.
`Group.join` then opens the process group (gloo on the CPU, NCCL on GPUs), and training runs as
one process would, with these differences:
- `--batch-size` is the **global** batch: each process trains on its share of every batch
  (`Shard`), and DDP averages the gradients, so two processes take the steps one process takes;
- every process holds the same data, weights and random state, and computes the same validation
  figure; the training error is averaged over the processes (`Group.mean`);
- rank 0 alone keeps the MLflow run, its metrics, the checkpoints, the export and the registration;
- whether to stop (the time budget, early stopping) is rank 0's decision, sent to all.

A process lost mid-run: `torchrun --max-restarts N` starts the group again, and each process
finds the run rank 0 recorded for this job (`TORCHELASTIC_RUN_ID`, torchrun's `--rdzv-id`; Ray
Train's job, `on_ray`) and resumes it from its last checkpoint, so each epoch's metric is logged
once. Ray Train's workers find their group already open (`Group.join`).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from surrogate_ops.config import settings, work_dir
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.files import written


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def join(cls, on: torch.device) -> Group:
        """Open the process group torchrun's environment describes; a lone process is `Group()`."""
        if dist.is_available() and dist.is_initialized():  # opened for us (Ray Train's workers)
            return cls(dist.get_rank(), dist.get_world_size())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_available():
            raise SurrogateOpsError("this torch build has no torch.distributed: train in one process")
        if not dist.is_initialized():
            backend = "nccl" if on.type == "cuda" else "gloo"
            rank, timeout = int(os.environ["RANK"]), datetime.timedelta(minutes=30)
            # torchrun's store outlives a restart, and a restarted group would read the addresses its
            # dead predecessors published there: each incarnation of the group keys its own
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
                                  timeout=timeout)
            store = dist.PrefixStore(f"surrogate-ops/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        if on.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls(dist.get_rank(), dist.get_world_size())

    def mean(self, value: float) -> float:
        """`value` averaged over the processes."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def decide(self, flag: bool) -> bool:
        """Rank 0's `flag`, the same in every process."""
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)])
        dist.broadcast(tensor, 0)
        return bool(tensor.item())

    def share(self, value: str | None) -> str | None:
        """Rank 0's string, in every process."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def leave(self) -> None:
        """All processes leave together: the others wait here while rank 0 exports, scores and
        registers (a process that tore its group down alone could abort the others' connections)."""
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class Shard:
    """Each process's share of every batch of `batches`: rows rank, rank + world, ... A batch with
    fewer rows than processes is skipped by all of them (each process sees the same batches, so
    each takes the same number of steps, as DDP's collectives need)."""

    def __init__(self, batches, group: Group):
        self.batches, self.group = batches, group

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, rng: np.random.Generator) -> Iterable:
        part = slice(self.group.rank, None, self.group.world)
        for inputs, target in self.batches.epoch(rng):
            if len(target) >= self.group.world:
                yield tuple(x[part] for x in inputs), target[part]


def follower() -> bool:
    """Whether this process is one of several torchrun started, and not rank 0 (from the environment alone)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0


def job_id() -> str | None:
    """The training job this process belongs to: Ray Train's (`on_ray`), or torchrun's (its --rdzv-id)."""
    if settings().job:
        return settings().job
    return os.environ.get("TORCHELASTIC_RUN_ID") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _record(job: str) -> Path:
    return work_dir() / "distributed" / f"{job}.json"


def remembered_run(job: str | None) -> str | None:
    """The MLflow run rank 0 recorded for the job (`remember_run`), or None; whether it has a
    checkpoint to resume from is for the caller to ask (`train`)."""
    if job is None or not _record(job).is_file():
        return None
    return json.loads(_record(job).read_text())["run_id"]


def remember_run(job: str | None, run_id: str) -> None:
    if job is None:
        return
    with written(_record(job)) as tmp:
        tmp.write_text(json.dumps({"run_id": run_id}))
