"""Training rows read from disk as training goes: a dataset larger than memory trains.

`train` loads a dataset whole by default; with `--stream` (and by itself past `STREAM_ROWS` rows)
it holds only the validation split in memory and reads the training split from the Parquet
file a few row groups at a time (the format `collect` writes, in row groups of
`datasets.ROW_GROUP` rows). A first pass (`Rows`) picks the usable rows (labeled, within the
network's length, measured on the CPU for a measured target) and keeps, as positions per row
group, which of them train: a block from several sources once (by a 64-bit hash of its text), at
most `train_limit` of them. Every epoch (`Stream`) then visits the row groups in a fresh order,
`window` at a time: their rows shuffled together, tokenized and cut into length buckets
(`BackoffBatches`), the next window read and tokenized on a thread while the network trains on
this one. Memory holds the row positions, two windows and the val split (test is read after
training, to score), whatever the number of training rows; `map_large_allocations` and
`loop.release_memory` keep the allocator from holding what the batches' tensors freed.

Each window draws from a generator seeded from the epoch's `rng` before any thread starts, so an
epoch's batches are a function of the seed: a resumed run continues the same sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.training.loop import libc

Select = Callable[[pd.DataFrame], pd.DataFrame]  # a row group's usable training rows (index: row in the group)
MMAP_THRESHOLD = 2 << 20  # bytes: glibc allocations this large get mappings of their own (`map_large_allocations`)


def map_large_allocations() -> None:
    """Allocations of MMAP_THRESHOLD bytes and more from mappings of their own, returned to the
    system when freed. glibc's threshold otherwise grows with the largest block freed (to 32 MB),
    after which batches' tensors come from its heaps and fragment them: on ten million blocks the
    resident size climbed 1.8 GB over the first epoch; with this and `loop.release_memory` it stays
    flat. Costs a few percent of step time on two cores; streamed training only."""
    lib = libc()
    if lib is not None:
        lib.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (fixing it also stops the threshold's growth)


class Rows:
    """The training split of a Parquet dataset, found in one pass and read again on demand."""

    def __init__(self, path: str | Path, columns: list[str], select: Select, column: str, dedupe: bool,
                 limit: int | None, rng: np.random.Generator):
        self.file, self.columns, self.select, self.column = pq.ParquetFile(path), columns, select, column
        positions, hashes, targets = [], [], []
        self.sources: set[str] = set()  # of the usable rows: what `--weight` globs are checked against
        for group in range(self.file.num_row_groups):
            rows = self._usable(group)  # indexed by row within the group
            positions.append(rows.index.to_numpy())
            hashes.append(pd.util.hash_pandas_object(rows["block"], index=False).to_numpy())
            targets.append(rows[column].to_numpy(dtype=np.float64))
            if "source" in rows:
                self.sources.update(rows["source"].astype(str).unique())
        sizes = np.array([len(p) for p in positions])
        keep = np.ones(int(sizes.sum()), dtype=bool)
        if dedupe:  # the first row of each block, as `drop_duplicates("block")` keeps
            keep[:] = False
            keep[np.unique(np.concatenate(hashes), return_index=True)[1]] = True
        if limit is not None and keep.sum() > limit:
            chosen = np.flatnonzero(keep)[np.sort(rng.permutation(int(keep.sum()))[:limit])]
            keep[:] = False
            keep[chosen] = True
        cuts = np.cumsum(sizes)[:-1]
        self.kept = [p[k] for p, k in zip(positions, np.split(keep, cuts))]  # rows of each group that train
        self.targets = np.concatenate(targets)[keep] if len(targets) else np.zeros(0)
        if not len(self.targets):
            raise SurrogateOpsError(f"{path}: no usable rows in the train split")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def groups(self) -> int:
        return self.file.num_row_groups

    def _read(self, group: int) -> pd.DataFrame:
        return self.file.read_row_group(group, columns=self.columns).to_pandas()

    def _usable(self, group: int) -> pd.DataFrame:
        rows = self._read(group)
        return self.select(rows[rows["split"] == "train"])

    def frame(self, group: int) -> pd.DataFrame:
        """The training rows of one row group."""
        return self._read(group).iloc[self.kept[group]]

    def blocks(self) -> Iterator[str]:
        """Every training block, row group after row group (for building a vocabulary)."""
        for group in range(self.groups):
            if len(self.kept[group]):
                yield from self.frame(group)["block"]


class Stream:
    """`loop.Batches` over `Rows`: each epoch the row groups in a fresh order, `window` at a time,
    shuffled, tokenized and bucketed; the next window prepared on a thread meanwhile.
    `prepare(frame, rng)` turns a window's rows into a `Batches` (the in-memory kind)."""

    def __init__(self, rows: Rows, prepare: Callable[[pd.DataFrame, np.random.Generator], object],
                 batch_size: int, window: int = 4):
        self.rows, self.prepare, self.window = rows, prepare, max(1, window)
        # batches per epoch, for the schedule and the progress bar: buckets cut at the token budget,
        # each window's last batch and --weight change it, so this is an estimate
        self.count = max(1, math.ceil(len(rows) / batch_size))

    def __len__(self) -> int:
        return self.count

    def epoch(self, rng: np.random.Generator) -> Iterable:
        order = [g for g in rng.permutation(self.rows.groups) if len(self.rows.kept[g])]
        windows = [order[i: i + self.window] for i in range(0, len(order), self.window)]
        seeds = rng.integers(2**62, size=len(windows))

        def load(k: int):
            window_rng = np.random.default_rng(int(seeds[k]))
            frame = pd.concat([self.rows.frame(g) for g in windows[k]], ignore_index=True)
            return self.prepare(frame, window_rng), window_rng

        with ThreadPoolExecutor(1, thread_name_prefix="stream") as ahead:
            pending = ahead.submit(load, 0) if windows else None
            for k in range(len(windows)):
                batches, window_rng = pending.result()
                pending = ahead.submit(load, k + 1) if k + 1 < len(windows) else None
                yield from batches.epoch(window_rng)


def row_count(path: str | Path) -> int:
    """Rows in a Parquet dataset, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows
