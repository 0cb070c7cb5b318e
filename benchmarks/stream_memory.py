"""Peak memory of `train --stream` on a dataset of ten million blocks (issue 35: under 4 GB).

`make` writes the dataset a row group at a time (never whole in memory): generated blocks (mixed
density, lengths 1-64, a seed no training set uses) labeled by the bundled Haswell surrogate, since
llvm-mca labels ten million blocks in about 50 minutes on two cores and the memory figure depends
on the rows, not on who labeled them (the dataset's `program_version` says `distilled`). Splits
are the usual hash of the block text (80/10/10). `train` runs `surrogate-ops train --stream`
under GNU time in a fresh MLflow store and reports its peak RSS, wall time, the rows it trained on
and its figures. The epoch is cut by `--max-minutes` on two cores (one pass over eight million
blocks takes hours there); the streamed passes over the whole file (the row-selection pass, the
vocabulary), the validation split (a million blocks, every epoch) and the test split's scoring
all run whole.

    python benchmarks/stream_memory.py make --rows 10000000 --out /tmp/blocks-10m.parquet
    python benchmarks/stream_memory.py train --data /tmp/blocks-10m.parquet [--minutes 8] [--arch dep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from surrogate_ops.blocks.generate import PROBE_SEED, iter_blocks
from surrogate_ops.config import PRETRAINED
from surrogate_ops.data.datasets import ROW_GROUP, split_of
from surrogate_ops.runtime.inference import Predictor

SEED = PROBE_SEED + 11  # a held-out seed: no bundled surrogate trained on these blocks


def make(rows: int, out: Path) -> None:
    predictor = Predictor(PRETRAINED / "llvm-mca-haswell")
    schema = pa.schema([("block", pa.string()), ("source", pa.string()), ("mca_cycles_haswell", pa.float64()),
                        ("split", pa.string())],
                       metadata={b"surrogate_ops.program": b"llvm-mca", b"surrogate_ops.program_version": b"distilled",
                                 b"surrogate_ops.mcpus": b"haswell"})
    tmp = out.with_name(out.name + ".tmp")
    blocks = iter_blocks(rows, seed=SEED, density="mixed")
    with pq.ParquetWriter(tmp, schema) as writer, tqdm(total=rows, unit="block", desc="writing") as bar:
        for start in range(0, rows, ROW_GROUP):
            chunk = [next(blocks) for _ in range(min(ROW_GROUP, rows - start))]
            labels = predictor.cycles(chunk)
            writer.write_table(pa.table({"block": chunk, "source": [f"generated:mixed:{SEED}"] * len(chunk),
                                         "mca_cycles_haswell": labels, "split": [split_of(b) for b in chunk]},
                                        schema=schema), row_group_size=ROW_GROUP)
            bar.update(len(chunk))
    os.replace(tmp, out)
    print(f"{out}: {pq.ParquetFile(out).metadata.num_rows:,} rows in {pq.ParquetFile(out).num_row_groups} row groups, "
          f"{out.stat().st_size / 2**20:,.0f} MiB")


def train(data: Path, minutes: float, arch: str, preset: str) -> None:
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SURROGATE_OPS_HOME": home, "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
        command = [timer, "-f", "peak_rss_kb %M", sys.executable, "-m", "surrogate_ops", "train", "--data", str(data),
                   "--stream", "--arch", arch, "--preset", preset, "--epochs", "1", "--max-minutes", str(minutes),
                   "--quiet"]
        print(" ".join(command[3:]))
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        peak = int(re.search(r"peak_rss_kb (\d+)", proc.stderr).group(1)) / 2**20
        print(proc.stdout.strip())
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        run = mlflow.search_runs(search_all_experiments=True, max_results=1).iloc[0]
        print(f"train rows {int(float(run['params.train_blocks'])):,}, val rows {int(float(run['params.val_blocks'])):,}, "
              f"streamed {run['params.streamed']}")
    print(f"peak RSS {peak:.2f} GiB, wall {seconds:.0f} s ({minutes} min of training)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    m = sub.add_parser("make")
    m.add_argument("--rows", type=int, default=10_000_000)
    m.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "blocks-10m.parquet")
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocks-10m.parquet")
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--arch", default="dep")
    t.add_argument("--preset", default="small")
    args = parser.parse_args()
    if args.step == "make":
        make(args.rows, args.out)
    else:
        train(args.data, args.minutes, args.arch, args.preset)


if __name__ == "__main__":
    main()
