"""The training loop, and nothing around it: `fit(model, batches, config) -> (model, History)`.

The seed paper's loss (mean absolute percentage error), AdamW, linear warm-up then cosine decay
(or a constant rate), gradient clipping, early stopping on a validation function, and the best
epoch's weights returned. It knows nothing of MLflow, files or datasets: the training stage
(`train`) wraps it with logging, checkpoints, export and registration; fine-tuning and the
adaptation study go through that stage, and the optimizer's refits call `fit` directly.

A loop's whole state (`on_epoch`'s second argument) can be saved and handed back as `resume`, so
an interrupted run continues exactly where its last epoch ended.

`LoopConfig.device` says where the network trains: each batch is moved there (`DeviceBatches`
keeps the whole training set there instead, for a GPU, copied on a stream of its own, a streamed
window from pinned memory while the last one trains), the best epoch's
weights are kept on the host, and `fit` hands the model back on the CPU (export and ONNX expect it
there). `predict` runs on whatever device the module is on, so a validation function that calls it
runs beside the training.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from surrogate_ops.blocks.batching import buckets, instructions, run_batched, take
from surrogate_ops.config import DEVICES, PRECISIONS, Device
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.training.distributed import Group

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (the model's inputs, target cycles)
TRIM_EVERY = 100  # training steps between returns of freed memory to the system (`release_memory`)


class Batches(Protocol):
    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, rng: np.random.Generator) -> Iterable[Batch]: ...


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300  # at most a tenth of the run warms up
    decay: bool = True  # cosine decay to a tenth of the rate after warm-up; False: constant
    patience: int = 4  # epochs without a better validation error before stopping
    clip: float | None = 1.0  # gradient norm
    deadline: float | None = None  # time.time() past which training stops (the best epoch is kept)
    device: Device = "cpu"  # where the network trains (`device`)
    precision: str = "fp32"  # "bf16": forward and loss under bfloat16 autocast (weights and optimizer stay float32)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # train_mape, val_mape, lr, epoch_seconds per epoch
    best_val: float = float("inf")

    @property
    def epochs_run(self) -> int:
        return len(self.epochs)


def mape_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute percentage error over the finite targets (a block llvm-mca failed on has none).
    Masked, not indexed: no value goes back to the host, so a GPU step never waits on one."""
    ok = torch.isfinite(target)
    safe = torch.where(ok, target, torch.ones_like(target))  # a masked row's gradient is 0, not NaN
    error = torch.where(ok, torch.abs(predicted - safe) / safe, torch.zeros_like(safe))
    return error.sum() / ok.sum().clamp(min=1)


def device(name: Device) -> torch.device:
    """The torch device `name` stands for; SurrogateOpsError for cuda where torch sees no GPU."""
    if name not in DEVICES:
        raise SurrogateOpsError(f"unknown device {name!r}: use {', '.join(DEVICES)}")
    if name == "cpu" or name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU")
        raise SurrogateOpsError(f"device cuda: {why}; train on the CPU (--device cpu), or with --device auto, "
                                "which takes a GPU where there is one")
    return torch.device("cuda", torch.cuda.current_device())  # indexed: a thread of its own (a streamed
    # window's) and DistributedDataParallel's device_ids must name this process's GPU, not the first


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library where it is glibc (what `release_memory` and `streaming` tune), else None."""
    try:
        lib = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None


def release_memory() -> None:
    """Hand the pages the allocator holds free back to the system (glibc's malloc_trim; a few ms).
    A network's tensors of many shapes, on variable-length batches, leave glibc's heaps holding
    freed memory it does not return: a gigabyte within a few hundred steps of the bundled network
    on two cores, all of it counted in the process's resident size."""
    lib = libc()
    if lib is not None:
        lib.malloc_trim(0)


def schedule(warmup: int, total: int, decay: bool = True) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not decay:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class BlockBatches:
    """Tokenized blocks (lists of token ids, or a `Flat`) with targets (and a conditioned
    surrogate's settings), in length buckets shuffled afresh each epoch."""

    def __init__(self, encoded: Sequence, targets: np.ndarray, scaled: np.ndarray | None, batch_size: int):
        self.encoded, self.scaled, self.batch_size = encoded, scaled, batch_size
        self.targets = torch.tensor(targets, dtype=torch.float32)
        self.count = len(buckets(encoded, batch_size))

    def __len__(self) -> int:
        return self.count

    def epoch(self, rng: np.random.Generator) -> Iterable[Batch]:
        batches = buckets(self.encoded, self.batch_size, order=rng.permutation(len(self.encoded)))
        rng.shuffle(batches)
        for index in batches:
            tokens = torch.from_numpy(take(self.encoded, index))
            extra = () if self.scaled is None else (torch.from_numpy(self.scaled[index]),)
            yield (tokens, *extra), self.targets[index]


class DeviceBatches:
    """Tokenized blocks held on the training device: padded once, one tensor per block length
    (instructions), so that an epoch shuffles each length's blocks and slices its batches where
    the network runs. A step then costs the host nothing (no padding, no copy): what keeps a GPU
    busy, where `BlockBatches` pads every batch on the host. With `backoff` (per token id, its
    relative's id), each token is read as its relative with probability `share` (`BackoffBatches`).
    The shuffle draws from `rng`, so a resumed run continues the same sequence."""

    def __init__(self, encoded: Sequence, targets: np.ndarray, scaled: np.ndarray | None, batch_size: int,
                 on: torch.device, backoff: Sequence[int] | None = None, share: float = 0.0, ahead: bool = False):
        self.batch_size, self.on = batch_size, on
        lengths = instructions(encoded)
        self.groups = []  # (tokens (n, i, t), targets (n,), settings (n, p) or None) per length
        with _upload(on, pinned=ahead) as upload:
            for length in np.unique(lengths):
                index = np.flatnonzero(lengths == length)
                extra = None if scaled is None else upload(torch.as_tensor(scaled[index], dtype=torch.float32))
                self.groups.append((upload(torch.from_numpy(take(encoded, index))),
                                    upload(torch.as_tensor(targets[index], dtype=torch.float32)), extra))
            self.backoff = None if backoff is None else upload(torch.as_tensor(backoff, dtype=torch.long))
        self.count = sum(math.ceil(len(g[1]) / batch_size) for g in self.groups)
        self.share = share if self.backoff is not None and bool(
            (self.backoff != torch.arange(len(backoff), device=on)).any()) else 0.0

    def __len__(self) -> int:
        return self.count

    def epoch(self, rng: np.random.Generator) -> Iterable[Batch]:
        generator = torch.Generator(device=self.on)
        generator.manual_seed(int(rng.integers(2**62)))
        batches = [(g, part) for g, (_, targets, _) in enumerate(self.groups)
                   for part in torch.randperm(len(targets), device=self.on, generator=generator).split(self.batch_size)]
        for k in rng.permutation(len(batches)):
            g, part = batches[k]
            tokens, targets, extra = self.groups[g]
            tokens = tokens.index_select(0, part)
            if self.share:
                swap = torch.rand(tokens.shape, device=self.on, generator=generator) < self.share
                tokens = torch.where(swap, self.backoff[tokens], tokens)
            yield (tokens, *(() if extra is None else (extra.index_select(0, part),))), targets.index_select(0, part)


@functools.cache
def _side_stream(on: torch.device) -> torch.cuda.Stream:
    """The one stream uploads to `on` take: the caching allocator reuses a freed block only on the
    stream that allocated it, so a stream per window would leave every finished window's memory idle."""
    return torch.cuda.Stream(on)


@contextlib.contextmanager
def _upload(on: torch.device, pinned: bool = False) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Host tensors onto `on`. On a GPU: on a stream of its own, so that a window prepared ahead
    (`training.streaming`, on its own thread, `pinned`: from page-locked memory, which copies
    without blocking) copies while the network trains on the last one; leaving the block waits for
    the copies (that thread only). Pinned memory is held by torch for the process's life, so only
    windows, not a whole training set held once, are pinned."""
    if on.type != "cuda":
        yield lambda tensor: tensor.to(on)
        return
    stream, sent = _side_stream(on), []

    def send(tensor: torch.Tensor) -> torch.Tensor:
        sent.append(tensor.pin_memory().to(on, non_blocking=True) if pinned else tensor.to(on))
        return sent[-1]

    with torch.cuda.stream(stream):
        yield send
    stream.synchronize()  # the pinned host copies may go once the device holds them
    for tensor in sent:  # read on the training's stream from here: the caching allocator must not hand
        tensor.record_stream(torch.cuda.current_stream(on))  # their memory to a later upload meanwhile


def predict(model: nn.Module, encoded: Sequence, scaled: np.ndarray | None = None, batch_size: int = 512) -> np.ndarray:
    """The module's cycles for tokenized blocks, in order, computed on the device the module is on."""
    model.eval()
    on = next(model.parameters()).device
    with torch.inference_mode():
        return run_batched(lambda *inputs: model(*(torch.from_numpy(x).to(on) for x in inputs)).cpu().numpy(),
                           encoded, batch_size, scaled)


def fit(model: nn.Module, batches: Batches, config: LoopConfig, rng: np.random.Generator,
        validate: Callable[[nn.Module], float] | None = None, resume: dict | None = None,
        on_epoch: Callable[[dict, dict], None] | None = None, progress: bool = False,
        desc: str = "training", group: Group | None = None) -> tuple[nn.Module, History]:
    """Train `model` in place on `config.device` and return it, on the CPU, with the best epoch's
    weights (by `validate`, else by training error) and the history. `on_epoch(record, state)`
    follows every epoch; `state` is what `resume` takes to continue. In a process group
    (`distributed.Group`, `batches` sharded) the model trains under DistributedDataParallel, the
    training error is the processes' mean, and rank 0 decides when to stop (at an epoch's end:
    the time budget is not checked mid-epoch there)."""
    group = group or Group()
    on = device(config.device)
    if config.precision not in PRECISIONS:
        raise SurrogateOpsError(f"unknown precision {config.precision!r}: use {', '.join(PRECISIONS)}")
    model.to(on)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=on.type == "cuda")  # one kernel for every parameter's update
    total = len(batches) * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(max(1, min(config.warmup_steps, total // 10)), total, config.decay))
    history, best_state, stale = History(), _host_copy(model), 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = History(resume["history"], resume["best_val"])
        best_state, stale = resume["best_state"], resume["stale"]
        rng.bit_generator.state = resume["rng"]
        torch.set_rng_state(resume["torch_rng"])
    bar = tqdm(total=config.epochs, initial=history.epochs_run, desc=desc, unit="epoch", disable=not progress)
    net, deadline = model, config.deadline
    if group.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[on.index or 0] if on.type == "cuda" else None)
        config = dataclasses.replace(config, deadline=None)  # not mid-epoch: every process takes the same steps
    while group.decide(history.epochs_run < config.epochs and stale < config.patience and not _past(deadline)):
        started = time.time()
        train_mape = group.mean(_epoch(net, batches, optimizer, scheduler, rng, config, progress,
                                       history.epochs_run + 1))
        val = validate(model) if validate is not None else train_mape
        if val < history.best_val:
            history.best_val, best_state, stale = val, _host_copy(model), 0
        else:
            stale += 1
        record = {"train_mape": train_mape, "val_mape": val, "lr": scheduler.get_last_lr()[0],
                  "epoch_seconds": time.time() - started}
        history.epochs.append(record)
        bar.set_postfix(train=f"{100 * train_mape:.1f}%", val=f"{100 * val:.1f}%", best=f"{100 * history.best_val:.1f}%")
        bar.update(1)
        if on_epoch is not None:
            on_epoch(record, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                              "history": history.epochs, "best_val": history.best_val, "best_state": best_state,
                              "stale": stale, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
    bar.close()
    model.load_state_dict(best_state)
    return model.cpu().eval(), history


def _host_copy(model: nn.Module) -> dict:
    """A copy of the weights on the CPU: the best epoch costs no accelerator memory, and a checkpoint
    loads anywhere (on the CPU, the same copy `copy.deepcopy(model.state_dict())` makes)."""
    state = model.state_dict()
    copied = copy.copy(state)  # the same OrderedDict, with the `_metadata` that load_state_dict reads
    for key, value in state.items():
        copied[key] = value.detach().to("cpu", copy=True)
    return copied


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def _epoch(model: nn.Module, batches: Batches, optimizer, scheduler, rng: np.random.Generator, config: LoopConfig,
           progress: bool, number: int) -> float:
    """One pass over the batches; the mean training error per target."""
    model.train()
    on = next(model.parameters()).device
    total, count, steps = 0.0, 0, 0
    for inputs, target in tqdm(batches.epoch(rng), total=len(batches), desc=f"epoch {number}", leave=False,
                               disable=not progress, unit="batch"):
        inputs, target = tuple(x.to(on) for x in inputs), target.to(on)  # on the CPU: the same tensors
        with torch.autocast(on.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            predicted = model(*inputs)
        loss = mape_loss(predicted.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        scheduler.step()
        total = total + loss.detach() * len(target)  # read once per epoch: a GPU step waits on nothing
        count += len(target)
        steps += 1
        if steps % TRIM_EVERY == 0:
            release_memory()
        if _past(config.deadline):
            break
    return float(total) / max(count, 1)
