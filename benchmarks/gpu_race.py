"""The surrogate on a GPU: the CUDA TVM build and torch on CUDA against ONNX Runtime on the same machine's CPUs.

For machines with an NVIDIA GPU. The model directory holds a `builds/cuda.so` made anywhere with
`surrogate-ops compile --platform cuda` (its CUDA source is compiled for the card when it is loaded);
the blocks come from a Parquet file with `block`, `mca_cycles_haswell` and `measured` columns (the
BHive Haswell test split, may-alias blocks excluded, as the CPU race uses). Every engine runs the
same end-to-end path (normalize, tokenize, bucket, pad, run) at several batch sizes, and again
from already tokenized blocks (bucket, pad, run: the part a GPU can speed up); each figure is the
median of `--repeats` runs. llvm-mca is not raced here (the CPU race does that, on the
machine where it is installed): ONNX Runtime on this machine's cores is the same-machine reference.

    python benchmarks/gpu_race.py --model DIR --blocks FILE.parquet [--batch 256 --batch 4096]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.inference import Predictor
from surrogate_ops.metrics import mape

from common import median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--blocks", type=Path, required=True)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()

    frame = pd.read_parquet(args.blocks)
    blocks, mca, measured = list(frame["block"]), frame["mca_cycles_haswell"].to_numpy(), frame["measured"].to_numpy()
    cores = len(os.sched_getaffinity(0))
    print(f"{len(blocks):,} blocks, {cores} CPU cores, median of {args.repeats} runs")
    reference = Predictor(args.model, engine="onnxruntime").cycles(blocks)
    rows = []
    print(f"{'engine':<12} {'batch':>6} {'blocks/s':>11} {'vs ORT-CPU':>10} {'max rel diff':>12} "
          f"{'MAPE mca':>9} {'MAPE meas':>10} {'from tokens':>12}")
    for batch in args.batch or [256, 1024, 4096]:
        base = None
        for engine in ("onnxruntime", "tvm-cuda", "torch-cuda", "torch"):
            try:
                predictor = Predictor(args.model, engine=engine, batch_size=batch)
            except (SurrogateOpsError, RuntimeError) as exc:
                print(f"{engine:<12} {batch:>6} unavailable: {exc}")
                continue
            predictor.cycles(blocks[:2048])  # warm: CUDA module load and compilation, first shapes
            seconds, cycles = median_time(lambda: predictor.cycles(blocks), args.repeats)
            rate = len(blocks) / seconds
            base = base or rate
            ok = np.isfinite(reference) & np.isfinite(cycles)
            diff = float(np.max(np.abs(cycles[ok] - reference[ok]) / np.abs(reference[ok])))
            row = {"engine": engine, "batch": batch, "blocks_per_s": rate, "vs_onnxruntime_cpu": rate / base,
                   "max_rel_diff": diff, "mape_mca": 100 * mape(cycles[ok], mca[ok]),
                   "mape_measured": 100 * mape(cycles[ok], measured[ok])}
            encoded = [predictor.encode(text, i)[0] for i, text in enumerate(blocks) if ok[i]]
            seconds, _ = median_time(lambda: predictor.predict_encoded(encoded), args.repeats)
            row["tokenized_blocks_per_s"] = len(encoded) / seconds
            rows.append(row)
            print(f"{engine:<12} {batch:>6} {rate:>11,.0f} {rate / base:>9.1f}x {diff:>12.2e} "
                  f"{row['mape_mca']:>8.2f}% {row['mape_measured']:>9.2f}% {row['tokenized_blocks_per_s']:>12,.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
