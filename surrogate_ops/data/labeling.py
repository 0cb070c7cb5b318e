"""Labeling: blocks through llvm-mca, a part file at a time, under the stock setting or sampled ones.

`label_parts` labels the records no earlier run labeled (an interrupted `collect` resumes from its
parts); `Sampling` and `TableSampling` draw the random settings and per-instruction tables of
`collect(sample_params=N)`, each block under one, chosen by a hash of its text; `split_of` is the
stable train/val/test split every row carries.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from surrogate_ops.files import written
from surrogate_ops.programs import LlvmMca, McaSetting, parametric, tables
from surrogate_ops.programs.base import Result, sample_settings

SPLITS = (("train", 80), ("val", 90), ("test", 100))  # cumulative percent of the block hash


def split_of(block: str, salt: str = "") -> str:
    """train/val/test for a block, from a hash of its text: stable across runs and machines. A
    `salt` draws an independent split (of blocks already kept to one split)."""
    bucket = int(hashlib.sha1((block + salt).encode()).hexdigest()[:8], 16) % 100
    return next(name for name, upper in SPLITS if bucket < upper)


@dataclass
class Record:
    block: str | None
    hex: str | None
    source: str
    measured: float | None = None
    measured_mcpu: str | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return hashlib.sha1(f"{self.source}\0{self.hex or self.block}".encode()).hexdigest()


@dataclass(frozen=True)
class Sampling:
    """Random llvm-mca settings for `collect(sample_params=N)`, and which block gets which."""

    settings: list[dict]
    seed: int

    @property
    def count(self) -> int:
        return len(self.settings)

    def index(self, block: str) -> int:
        digest = hashlib.sha1(f"{self.seed}\0{block}".encode()).hexdigest()
        return int(digest[:12], 16) % self.count


@dataclass(frozen=True)
class TableSampling(Sampling):
    """N random per-instruction tables (`programs.tables`, drawn lazily, an opcode at a time) for
    `collect(sample_params=N, per_instruction=MODE)`, and which block gets which."""

    mode: str = "centred"
    tables: int = 1

    @property
    def count(self) -> int:
        return self.tables


def _run_tables(program: LlvmMca, blocks: list[str], sampling: TableSampling,
                bar: tqdm) -> tuple[list[Result], dict[str, dict]]:
    """Each block under its own sampled table (many tables a driver process), and the columns that
    say what it ran under: `table` (its opcodes' entries, JSON) and `instructions` (each
    instruction's stock entry, as `tables.parse_entries` reads it)."""
    annotated = parametric.annotate(program.path, blocks, program.mcpu)
    readable = [i for i, a in enumerate(annotated) if a is not None]
    drawn = {i: tables.sample_block_table(annotated[i], sampling.mode, sampling.seed, sampling.index(blocks[i]))
             for i in readable}
    results = [Result(error="the parametric driver cannot read this block")] * len(blocks)
    for i, result in zip(readable, program.run([blocks[i] for i in readable], progress=bar.update,
                                               tables=[drawn[i] for i in readable]), strict=True):
        results[i] = result
    bar.update(len(blocks) - len(readable))
    columns = {blocks[i]: {"table": tables.dumps(drawn[i]), "instructions": tables.format_entries(annotated[i])}
               for i in readable}
    return results, columns


def _run_sampled(program: LlvmMca, blocks: list[str], sampling: Sampling, bar: tqdm) -> list[Result]:
    """Each block under its own setting: one llvm-mca process per setting and chunk, in parallel."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, block in enumerate(blocks):
        groups[sampling.index(block)].append(i)
    results: list[Result | None] = [None] * len(blocks)

    def work(item: tuple[int, list[int]]) -> None:
        setting, members = item
        runner = program.with_setting(McaSetting(sampling.settings[setting]), workers=1)  # the pool runs settings in parallel
        for i, result in zip(members, runner.run([blocks[i] for i in members]), strict=True):
            results[i] = result
        bar.update(len(members))

    with ThreadPoolExecutor(max_workers=program.workers) as pool:
        list(pool.map(work, groups.items()))
    return results  # type: ignore[return-value]


def label(records: list[Record], programs: dict[str, LlvmMca], may_alias: set[str], bar: tqdm,
           sampling: Sampling | None = None, salt: str = "") -> pd.DataFrame:
    blocks = sorted({r.block for r in records if r.error is None and r.block})
    columns: dict[str, dict[str, object]] = {}
    errors: dict[str, str] = {}
    for mcpu, program in programs.items():
        if sampling is None:
            results = program.run(blocks, progress=bar.update)
        elif isinstance(sampling, TableSampling):
            results, extra = _run_tables(program, blocks, sampling, bar)
            for block, values in extra.items():
                columns.setdefault(block, {}).update(values)
        else:
            results = _run_sampled(program, blocks, sampling, bar)
        for block, res in zip(blocks, results, strict=True):
            if not res.ok:  # labeled for the CPUs that take it (an AVX2 block has no Ivy Bridge label)
                errors.setdefault(block, []).append(f"llvm-mca -mcpu={mcpu}: {res.error}")
                continue
            columns.setdefault(block, {}).update({
                f"mca_cycles_{mcpu}": res.cycles, f"mca_uops_{mcpu}": res.uops, f"mca_rthroughput_{mcpu}": res.rthroughput,
            })
    rows = []
    for r in records:
        refused = errors.get(r.block, []) if r.block else []
        error = r.error or ("no block" if not r.block else "; ".join(refused) if refused and len(refused) == len(programs)
                            else None)
        rows.append({
            "key": r.key, "block": r.block, "hex": r.hex, "source": r.source, "measured": r.measured,
            "measured_mcpu": r.measured_mcpu, "may_alias": bool(r.hex and r.hex in may_alias),
            **{c: None for m in programs for c in (f"mca_cycles_{m}", f"mca_uops_{m}", f"mca_rthroughput_{m}")},
            **(columns.get(r.block, {}) if error is None else {}),
            **(_setting_columns(sampling, r.block) if sampling is not None else {}),
            "split": split_of(r.block, salt) if r.block else None, "error": error,
        })
    return pd.DataFrame(rows)


def _setting_columns(sampling: Sampling, block: str | None) -> dict[str, object]:
    index = sampling.index(block) if block else 0
    if isinstance(sampling, TableSampling):
        return {"setting": index}
    return {"setting": index, **{f"param_{k}": int(v) for k, v in sampling.settings[index].items()}}


def sampling_for(program: LlvmMca, count: int, seed: int, spread: float) -> Sampling:
    defaults = program.expert_defaults()
    space = {k: v for k, v in program.parameters.items() if k in defaults}
    return Sampling(sample_settings(space, defaults, count, seed=seed, spread=spread), seed)


def label_parts(partial: Path, records: list[Record], programs: dict[str, LlvmMca], alias: set[str],
                 sampling: Sampling | None, splits: Sequence[str] | None, part_rows: int,
                 progress: bool) -> tuple[list[Path], int]:
    """Label the records no earlier run labeled, a part file at a time; (all parts, records resumed)."""
    parts = sorted(partial.glob("part-*.parquet"))
    done = set()
    for part in parts:
        done.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
    todo = [r for r in records if r.key not in done]
    if sampling is not None:  # blocks of one setting together, so each llvm-mca process gets many
        todo.sort(key=lambda r: sampling.index(r.block) if r.block else -1)
    with tqdm(total=len({r.block for r in todo if r.block}) * len(programs), unit="block", desc="labeling",
              disable=not progress) as bar:
        for start in range(0, len(todo), part_rows):
            # blocks kept to some splits are split again, so the data still trains and validates a surrogate
            frame = label(todo[start:start + part_rows], programs, alias, bar, sampling,
                           salt="|".join(sorted(splits)) if splits else "")
            final = partial / f"part-{len(parts):05d}.parquet"
            with written(final) as tmp:
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
            parts.append(final)
    return parts, len(records) - len(todo)
