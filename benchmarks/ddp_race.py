"""Data-parallel training on these cores (issue 35): one process against two under torchrun (gloo)
and two Ray Train workers on a local cluster, the same model, data, seed and global batch, a fixed
number of epochs. Prints each mode's best validation MAPE (two processes must land within 0.2
points of one) and its wall time, median of --repeats runs.

    python benchmarks/ddp_race.py --data hsw.parquet [--epochs 8 --batch 128 --repeats 2]

hsw.parquet: `surrogate-ops collect --bhive ../shared/data/bhive/hsw.csv --mcpu haswell --out hsw.parquet`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128, help="the global batch, every mode")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    common = ["train", "--data", args.data, "--preset", "tiny", "--epochs", str(args.epochs), "--patience",
              str(args.epochs), "--batch-size", str(args.batch), "--quiet"]
    cores = len(os.sched_getaffinity(0))
    modes = {
        "1 process": [sys.executable, "-m", "surrogate_ops", *common, "--threads", str(cores)],
        "2 processes (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                         "-m", "surrogate_ops", *common, "--threads", str(max(1, cores // 2))],
        "2 Ray Train workers (local)": [sys.executable, "-m", "surrogate_ops", *common,
                                        "--threads", str(max(1, cores // 2)), "--ray", "local", "--workers", "2"],
    }
    results = {}
    for name, command in modes.items():
        seconds, val = [], None
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as home:
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "SURROGATE_OPS_HOME": home})
                seconds.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
            val = float(re.search(r"best val MAPE ([\d.]+)%", done.stdout).group(1))
        results[name] = {"best_val_mape": val, "seconds": statistics.median(seconds), "runs": seconds}
        print(json.dumps({name: results[name]}), flush=True)
    base = results["1 process"]
    for name, row in results.items():
        print(f"{name:32s} best val MAPE {row['best_val_mape']:6.2f}% ({row['best_val_mape'] - base['best_val_mape']:+.2f}) "
              f"wall {row['seconds']:6.1f} s ({base['seconds'] / row['seconds']:.2f}x one process)")


if __name__ == "__main__":
    main()
