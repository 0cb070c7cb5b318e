"""Labeled datasets: blocks from sources, labeled by llvm-mca, written as Parquet.

`collect()` gathers blocks (BHive-format CSVs, ELF binaries, assembly text files), labels every
distinct block with llvm-mca for each requested `mcpu`, and writes one row per block and source:

    block      canonical AT&T text, one instruction a line
    hex        machine code when the source has it
    source     where the block came from ("bhive:hsw.csv", a binary's path, an asm file)
    measured   measured cycles per 100 iterations (BHive-format sources), else null
    measured_mcpu  the microarchitecture `measured` was taken on, else null
    may_alias  the block is in BHive's may-alias list (exclude it from error figures)
    mca_cycles_<mcpu>, mca_uops_<mcpu>, mca_rthroughput_<mcpu>
    split      train / val / test, stable: a hash of the block text

With `sample_params=N` (one mcpu) each distinct block is labeled under one of N random settings of
llvm-mca's parameters instead of the defaults, and the row also carries `setting` (its index) and
`param_<name>` for every parameter: the data a parameter-conditioned surrogate learns from.

Labeling writes parts to `<out>.partial/` as it goes; an interrupted run resumes from them, and
the final file replaces the parts in one rename. Blocks that cannot be disassembled or that
llvm-mca rejects on every requested CPU are kept out of the dataset and listed, with the reason, in
`<out stem>.rejected.csv`; a block some CPUs reject (AVX2 code on Ivy Bridge) is kept with no
labels for those.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from surrogate_ops import presets
from surrogate_ops.blocks import corners, generate
from surrogate_ops.blocks.asm import BlockError, normalize_block, read_asm_file
from surrogate_ops.blocks.elf import blocks_from_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.config import work_dir
from surrogate_ops.data.labeling import (
    SPLITS,
    Record,
    Sampling,
    TableSampling,
    label,
    label_parts,
    sampling_for,
    split_of,
)
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.files import written
from surrogate_ops.metrics import kendall_tau, mape
from surrogate_ops.programs import LlvmMca, McaSetting, tables
from surrogate_ops.programs.base import scale_settings
from surrogate_ops.programs.cluster import Cluster

# With no source: this machine's programs and libraries, at most DEFAULT_PER_BINARY blocks from each,
# so 20,000 blocks come from about a hundred binaries, not from the first two
DEFAULT_BINARIES = ("/usr/bin", "/usr/lib/x86_64-linux-gnu")
DEFAULT_PER_BINARY = 200
PART_ROWS = 2000
ROW_GROUP = 65536  # rows per Parquet row group: the unit `train --stream` reads (`training.streaming`)


def mcpu_of_bhive_file(path: Path) -> str | None:
    """The -mcpu a BHive measurement file is for, from its name (hsw.csv -> haswell)."""
    for mcpu, spec in presets.load("microarchitectures").items():
        if path.stem == spec["bhive"]:
            return mcpu
    return None


def read_hex_list(path: Path) -> set[str]:
    """The hex column (or first column) of a CSV, e.g. BHive's may-alias.csv."""
    with open(path, newline="") as handle:
        return {row[0].strip().lower() for row in csv.reader(handle) if row and row[0] != "hex"}


def default_binaries() -> list[str]:
    return [p for p in DEFAULT_BINARIES if Path(p).is_dir()] or ["/usr/bin"]


@dataclass
class CollectResult:
    """What `collect` wrote: the dataset, its rejects, and the counts for the summary."""

    path: Path
    rows: int
    rejected: int
    rejected_path: Path | None
    resumed_rows: int = 0
    mcpus: list[str] = field(default_factory=list)


def _read_bhive(path: Path, measured_mcpu: str | None = None) -> list[Record]:
    mcpu = mcpu_of_bhive_file(path) or measured_mcpu
    records, seen = [], set()
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "hex" not in reader.fieldnames:
            raise SurrogateOpsError(f"--bhive {path}: expected a CSV with columns hex,throughput")
        for row in reader:
            hexcode = row["hex"].strip().lower()
            if hexcode in seen:
                continue
            seen.add(hexcode)
            try:
                measured = float(row["throughput"]) if row.get("throughput") else None
            except ValueError:
                measured = None
            records.append(Record(None, hexcode, f"bhive:{path.name}", measured, mcpu if measured else None))
    return records


@dataclass(frozen=True)
class Generated:
    """Synthetic blocks for `collect`: `count` blocks of `blocks.generate`'s stream for `seed` and
    `density` (or of `blocks.corners`' when the density is "corners"); `mcpu`, the CPU whose
    instruction set they use (None: forms every served CPU takes)."""

    count: int
    seed: int = 0
    density: str = "mixed"
    mcpu: str | None = None

    def records(self) -> list[Record]:
        source = f"generated:{self.density}:{self.seed}"
        if self.density == "corners":
            blocks = corners.iter_blocks(self.count, self.seed, mcpu=self.mcpu)
        else:
            blocks = generate.iter_blocks(self.count, self.seed, self.density, mcpu=self.mcpu)
        return [Record(block, None, source) for block in blocks]


def gather(bhive: Sequence[str | Path] = (), binaries: Sequence[str | Path] = (), asm: Sequence[str | Path] = (),
           limit: int | None = None, progress: bool = False, measured_mcpu: str | None = None,
           generated: Generated | None = None, per_binary: int | None = None,
           exclude: Sequence[str] = ()) -> list[Record]:
    """Records from every source, in a stable order, cut to `limit`; hex sources disassembled.
    `measured_mcpu` names the microarchitecture of measurement files whose name does not (hsw.csv does)."""
    records: list[Record] = generated.records() if generated else []
    for path in map(Path, bhive):
        if not path.is_file():
            raise SurrogateOpsError(f"--bhive {path}: no such file")
        records.extend(_read_bhive(path, measured_mcpu))
    if binaries:
        remaining = None if limit is None else max(limit - len(records), 0)
        if remaining != 0:
            records.extend(Record(None, h, src) for h, src in blocks_from_binaries(binaries, limit=remaining, progress=progress,
                                                                                   per_binary=per_binary, exclude=exclude))
    for path in map(Path, asm):
        if not path.is_file():
            raise SurrogateOpsError(f"--asm {path}: no such file")
        for i, text in enumerate(read_asm_file(path)):
            try:
                records.append(Record(normalize_block(text, index=i), None, str(path)))
            except BlockError as exc:
                records.append(Record(None, None, str(path), error=f"{path}: {exc}"))
    if limit is not None:
        records = records[:limit]
    pending = [r for r in records if r.block is None and r.hex is not None]
    result = disassemble([r.hex for r in pending])  # type: ignore[misc]
    for i, record in enumerate(pending):
        record.block = result.blocks[i]
        record.error = result.errors.get(i)
    return records


def table_sampled(frame: pd.DataFrame) -> bool:
    """True for a dataset labeled under sampled per-instruction tables (`table`, `instructions`)."""
    return "table" in frame.columns and "instructions" in frame.columns


def parameter_columns(frame: pd.DataFrame) -> list[str]:
    """The parameter names a dataset was labeled under, per row (collected with sample_params), else []."""
    return [c.removeprefix("param_") for c in frame.columns if c.startswith("param_")]


def scaled_parameters(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(rows, parameters) float32: each row's setting as scaled (`programs.base.scale_settings`)."""
    missing = [n for n in names if f"param_{n}" not in frame]
    if missing:
        raise SurrogateOpsError(f"the dataset has no parameter columns for {', '.join(missing)} "
                                "(collect it with --sample-params)")
    settings = frame[[f"param_{n}" for n in names]].set_axis(list(names), axis=1).to_dict("records")
    return scale_settings({name: LlvmMca.parameters[name] for name in names}, settings)


def collect(out: str | Path, bhive: Sequence[str | Path] = (), binaries: Sequence[str | Path] = (),
            asm: Sequence[str | Path] = (), mcpus: Sequence[str] = ("haswell",), limit: int | None = None,
            workers: int | None = None, may_alias: str | Path | None = None, setting: McaSetting | None = None,
            progress: bool = True, part_rows: int = PART_ROWS, measured_mcpu: str | None = None,
            sample_params: int = 0, seed: int = 0, splits: Sequence[str] | None = None,
            spread: float = 1.0, generated: Generated | None = None,
            per_instruction: str | None = None, cluster: Cluster | None = None, per_binary: int | None = None,
            exclude: Sequence[str] = ()) -> CollectResult:
    """Build a labeled dataset at `out` (Parquet). Writes `<out>.partial/` while running (resumable)
    and `<out stem>.rejected.csv` for blocks that could not be labeled. `sample_params=N` labels
    each block under one of N random parameter settings (drawn with `seed`, within `spread` of the
    defaults on the unit scale, see `programs.base.sample_settings`) instead of `setting`;
    `splits` keeps only blocks of those splits (e.g. train: spend no labels on held-out blocks); the
    kept blocks get a fresh train/val/test split of their own (another hash) for training.
    `generated` adds synthetic blocks (`blocks.generate`) before the other sources.
    `per_instruction` ("centred" or "wide", with `sample_params=N`) draws N per-instruction
    tables instead (`programs.tables`), labels through the parametric driver, and adds the columns
    `table` and `instructions` that a per-instruction surrogate learns from (`table_search`).
    `cluster` labels on a Ray cluster's CPUs (`programs.cluster`): the same labels, more cores.
    `per_binary` takes at most that many blocks from each binary, spread over its code; `exclude`
    leaves out binaries whose path matches one of these globs (libraries held out of training)."""
    out = Path(out)
    if generated and generated.seed >= generate.PROBE_SEED:
        raise SurrogateOpsError(f"generator seeds from {generate.PROBE_SEED} up are kept for held-out probe sets; "
                                "train on a lower seed")
    if not (bhive or binaries or asm or generated):
        binaries, per_binary = default_binaries(), per_binary or DEFAULT_PER_BINARY
    mcpus = list(dict.fromkeys(mcpus))
    programs = {m: LlvmMca(mcpu=m, workers=workers, setting=setting, cluster=cluster) for m in mcpus}
    sampling = _sampling(programs, setting, sample_params, seed, spread, per_instruction)
    alias = _may_alias(bhive, may_alias)
    records = gather(bhive, binaries, asm, None if splits else limit, progress, measured_mcpu, generated, per_binary,
                     exclude)
    if splits:
        records = [r for r in records if r.block is None or split_of(r.block) in splits][:limit]
    if not records:
        raise SurrogateOpsError("no blocks found in the given sources")
    program = programs[mcpus[0]]
    settings = {"mcpus": mcpus, "params": program.setting.to_json(), "iterations": program.iterations,
                "llvm_mca": program.path, "llvm_mca_version": program.version,
                **({"sample_params": sample_params, "seed": seed, "spread": spread} if sampling else {}),
                **({"per_instruction": per_instruction} if per_instruction else {}),
                **({"splits": sorted(splits)} if splits else {}),
                **({"per_binary": per_binary} if per_binary else {}), **({"exclude": sorted(exclude)} if exclude else {}),
                **({"generated": dataclasses.asdict(generated)} if generated else {})}
    partial = _partial(out, settings)
    if cluster is not None:  # a part's chunks keep every CPU of the cluster busy (parts are labeled one after another)
        part_rows = max(part_rows, 2 * cluster.cpus * program.chunk_size)
    parts, resumed = label_parts(partial, records, programs, alias, sampling, splits, part_rows, progress)
    metadata = {"program": program.name, "program_version": program.version, "mcpus": ",".join(mcpus),
                "iterations": str(program.iterations),
                **({"expert_defaults": json.dumps(program.expert_defaults()), "sample_params": str(sample_params)}
                   if sampling else {}),
                **({"per_instruction": per_instruction} if per_instruction else {})}
    good, bad, rejected_path = _finish(out, parts, records, metadata)
    shutil.rmtree(partial)
    return CollectResult(out, good, bad, rejected_path, resumed, mcpus)


def _sampling(programs: dict[str, LlvmMca], setting: McaSetting | None, count: int, seed: int, spread: float,
              per_instruction: str | None) -> Sampling | None:
    """The settings or tables `collect(sample_params=N)` labels under, checked against its other options."""
    if count and (len(programs) != 1 or setting):
        raise SurrogateOpsError("--sample-params labels with one --mcpu and no --params (it draws the parameters itself)")
    if per_instruction and not count:
        raise SurrogateOpsError("--per-instruction samples tables: give --sample-params N as well")
    if per_instruction:
        return TableSampling([], seed, tables.check_mode(per_instruction), count)
    return sampling_for(next(iter(programs.values())), count, seed, spread) if count else None


def _may_alias(bhive: Sequence[str | Path], explicit: str | Path | None = None) -> set[str]:
    """BHive's may-alias list: the given file, else may-alias.csv beside a measurement file."""
    alias_file = Path(explicit) if explicit else next(
        (Path(b).parent / "may-alias.csv" for b in bhive if (Path(b).parent / "may-alias.csv").is_file()), None)
    return read_hex_list(alias_file) if alias_file is not None else set()


def _partial(out: Path, settings: dict) -> Path:
    """The folder of an in-progress collection, refused when it holds one under other settings."""
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    manifest = partial / "settings.json"
    if manifest.is_file() and json.loads(manifest.read_text()) != settings:
        raise SurrogateOpsError(f"{partial} holds an interrupted collection with other settings "
                                f"({manifest.read_text().strip()}); rerun with those, or delete it to start over")
    manifest.write_text(json.dumps(settings))
    return partial


def _finish(out: Path, parts: list[Path], records: list[Record], metadata: dict[str, str]) -> tuple[int, int, Path | None]:
    """The parts as one dataset in source order, written in one rename, rejects beside it:
    (rows kept, rows rejected, the rejects' file)."""
    # a row per record, in order, by key: a record repeated in its source (the same block twice) gets
    # its row twice whether its labels came from this run or from a part an earlier run wrote
    frame = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    frame = frame.drop_duplicates("key").set_index("key").loc[[r.key for r in records]].reset_index(drop=True)
    bad = frame[frame["error"].notna()]
    good = frame[frame["error"].isna()].drop(columns=["error"]).reset_index(drop=True)
    rejected_path = out.with_name(out.stem + ".rejected.csv")
    if len(bad):
        bad[["source", "hex", "block", "error"]].to_csv(rejected_path, index=False)
    elif rejected_path.exists():
        rejected_path.unlink()
    _write(good, out, metadata)
    return len(good), len(bad), rejected_path if len(bad) else None


def _write(frame: pd.DataFrame, out: Path, metadata: dict[str, str]) -> None:
    """A dataset file with its metadata (`surrogate_ops.<key>` in the Parquet schema), in one rename."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           **{f"surrogate_ops.{k}".encode(): str(v).encode() for k, v in metadata.items()}})
    with written(out) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP)


def combine(paths: Sequence[str | Path], out: str | Path, leave_out: Sequence[str | Path] = ()) -> tuple[int, int]:
    """One training set from several datasets (a CPU's labels where its dataset has them, none
    elsewhere), written with their metadata; rows whose block is in a `leave_out` dataset (held-out
    libraries) are dropped, wherever they came from. Returns (rows written, rows dropped)."""
    frames = [load(p) for p in paths]
    versions = {f.attrs.get("program_version") for f in frames}
    if len(versions) > 1:
        raise SurrogateOpsError(f"the datasets were labeled by different llvm-mca versions: {', '.join(map(str, versions))}")
    frame = pd.concat(frames, ignore_index=True)
    held = {b for p in leave_out for b in load(p)["block"]}
    kept = frame[~frame["block"].isin(held)] if held else frame
    mcpus = list(dict.fromkeys(m for f in frames for m in mcpus_of(f)))
    metadata = {**frames[0].attrs, "mcpus": ",".join(mcpus), "combined_from": ",".join(map(str, paths))}
    _write(kept.reset_index(drop=True), Path(out), metadata)
    return len(kept), len(frame) - len(kept)


def measured_rows(frame: pd.DataFrame, mcpu: str) -> pd.DataFrame:
    """The rows measured on `mcpu`, BHive's may-alias blocks left out: every error figure against
    measured throughput is taken on these."""
    if "measured" not in frame:  # a dataset of llvm-mca's labels alone (one written outside `collect`)
        return frame.iloc[:0]
    return frame[frame["measured"].notna() & (frame["measured"] > 0) & (frame["measured_mcpu"] == mcpu)
                 & ~frame["may_alias"].astype(bool)]


def _measurement_file(data: str | Path) -> Path:
    data = Path(data)
    if not data.is_file():
        raise SurrogateOpsError(f"--data {data}: no such file")
    if data.suffix not in (".parquet", ".csv"):
        raise SurrogateOpsError(f"--data {data}: expected a collected .parquet dataset or a BHive-format .csv")
    return data


def measured_dataset(data: str | Path, mcpu: str, progress: bool = True) -> Path:
    """A dataset of measurements labeled by llvm-mca: a collected dataset as it is, or a BHive-format
    CSV (hex,throughput) collected once (cached in the work directory by the file's content)."""
    data = _measurement_file(data)
    if data.suffix == ".parquet":
        return data
    digest = hashlib.sha1(data.read_bytes()).hexdigest()[:10]  # a changed file is collected anew
    out = work_dir() / "datasets" / f"{data.stem}-{mcpu}-{digest}.parquet"
    if not out.is_file():
        collect(out, bhive=[data], mcpus=[mcpu], progress=progress, measured_mcpu=mcpu)
    return out


def measured_blocks(data: str | Path, mcpu: str) -> pd.DataFrame:
    """The distinct blocks measured on `mcpu` (block, measured, split, ...), may-alias blocks left
    out. A CSV is only disassembled: no llvm-mca evaluation is spent on it."""
    data = _measurement_file(data)
    if data.suffix == ".parquet":
        frame = load(data)
    else:
        rows = label(gather(bhive=[data], measured_mcpu=mcpu), {}, _may_alias([data]), bar=None)
        frame = rows[rows["error"].isna()]
    if frame.empty:
        raise SurrogateOpsError(f"{data}: no readable blocks")
    frame = measured_rows(frame, mcpu)
    if frame.empty:
        raise SurrogateOpsError(f"{data}: no measurements on {mcpu} (name the file's microarchitecture with --mcpu)")
    return frame.drop_duplicates("block").reset_index(drop=True)


def load(path: str | Path, splits: Sequence[str] | None = None, leave_out: Sequence[str] = ()) -> pd.DataFrame:
    """A dataset written by `collect`, as a DataFrame: the rows of `splits` only where named (read
    with a filter: the other rows never reach memory), without the columns in `leave_out`."""
    path = Path(path)
    if not path.is_file():
        raise SurrogateOpsError(f"dataset {path} not found (make one with `surrogate-ops collect`)")
    try:
        columns = [c for c in pq.read_schema(path).names if c not in leave_out] if leave_out else None
        table = _read_splits(path, columns, splits) if splits else pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SurrogateOpsError(f"{path} is not a readable Parquet dataset: {exc}") from None
    if "block" not in table.column_names or "split" not in table.column_names:
        raise SurrogateOpsError(f"{path} is not a surrogate-ops dataset (no block/split columns)")
    meta = table.schema.metadata or {}
    frame = table.to_pandas(self_destruct=True, split_blocks=True)  # the Arrow buffers freed as the frame fills
    del table
    pa.default_memory_pool().release_unused()  # and handed back to the system, not kept for Arrow's next read
    frame.attrs.update({k.decode().removeprefix("surrogate_ops."): v.decode() for k, v in meta.items()
                        if k.startswith(b"surrogate_ops.")})
    return frame


def _read_splits(path: Path, columns: list[str] | None, splits: Sequence[str]) -> pa.Table:
    """The rows of `splits`, a row group at a time: memory holds them and one group, where a filtered
    `read_table` decodes every column of the whole file first (2.4 GB for the 20% of ten million blocks)."""
    file = pq.ParquetFile(path)
    wanted = pa.array(list(splits))
    parts = []
    for group in range(file.num_row_groups):
        rows = file.read_row_group(group, columns=columns)
        parts.append(rows.filter(pc.is_in(rows["split"], value_set=wanted)))
    return pa.concat_tables(parts) if parts else file.schema_arrow.empty_table()


def file_digest(path: str | Path) -> str:
    """A digest of a Parquet dataset read from its footer (schema, row groups, their sizes and column
    statistics), not its rows: what a streamed dataset is tagged with, for any size."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        length = int.from_bytes(f.read(4), "little")
        f.seek(-8 - length, os.SEEK_END)
        return hashlib.sha256(f.read(length)).hexdigest()[:10]


def mcpus_of(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("mca_cycles_") for c in frame.columns if c.startswith("mca_cycles_")]


def summary(frame: pd.DataFrame) -> str:
    """A short human-readable summary of a dataset: sizes, splits, sources, label statistics."""
    lengths = frame["block"].str.count("\n") + 1
    lines = [
        f"blocks: {len(frame):,}   instructions per block: median {int(lengths.median())}, max {int(lengths.max())}",
        "splits: " + ", ".join(f"{k} {v:,}" for k, v in frame["split"].value_counts().reindex([s for s, _ in SPLITS], fill_value=0).items()),
        "sources: " + ", ".join(f"{Path(k).name} {v:,}" for k, v in frame["source"].value_counts().head(8).items()),
    ]
    for mcpu in mcpus_of(frame):
        cycles = frame[f"mca_cycles_{mcpu}"] / 100
        lines.append(f"llvm-mca -mcpu={mcpu}: cycles/iteration median {cycles.median():.2f}, "
                     f"p90 {cycles.quantile(0.9):.2f}, max {cycles.max():.2f}")
    if table_sampled(frame):
        lines.append(f"labeled under {frame['setting'].nunique():,} random per-instruction tables "
                     f"({frame.attrs.get('per_instruction', '?')})")
        return "\n".join(lines)
    if parameter_columns(frame):  # labels under sampled settings: no llvm-mca-vs-measured figure
        lines.append(f"labeled under {frame['setting'].nunique():,} random llvm-mca parameter settings "
                     f"({', '.join(parameter_columns(frame))})")
        return "\n".join(lines)
    for mcpu in sorted(frame["measured_mcpu"].dropna().unique()):
        column, group = f"mca_cycles_{mcpu}", measured_rows(frame, mcpu)
        if column in group and len(group):
            lines.append(f"measured on {mcpu}: {len(group):,} blocks (may-alias excluded); llvm-mca error "
                         f"{100 * mape(group[column].to_numpy(), group['measured'].to_numpy()):.1f}% MAPE, "
                         f"Kendall's tau {kendall_tau(group[column].to_numpy(), group['measured'].to_numpy()):.3f}")
    return "\n".join(lines)


__all__ = ["Generated", "collect", "combine", "file_digest", "table_sampled", "gather", "load", "measured_blocks", "measured_dataset", "measured_rows", "parameter_columns",
           "scaled_parameters", "split_of", "summary"]
