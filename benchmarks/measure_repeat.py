"""`measure` checked on this machine: the classic chains against their documented latencies, two runs of
the same BHive blocks against each other (MAPE, quantiles), and the blocks that could not be measured,
by reason.

    python benchmarks/measure_repeat.py --blocks 5000 [--rounds 3] [--bhive ../shared/data/bhive/hsw.csv]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import Counter
from pathlib import Path

from common import DEFAULT_BHIVE

from surrogate_ops import config
from surrogate_ops.data.measuring import measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bhive", type=Path, default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=config.MEASURE_ROUNDS)
    args = parser.parse_args()
    runs, faults = [], Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            result = measure(Path(tmp) / f"run{k}.csv", bhive=[args.bhive], limit=args.blocks, repeats=args.repeats,
                             rounds=args.rounds, progress=False)
            runs.append({r["hex"]: float(r["throughput"]) for r in csv.DictReader(result.out.open())})
            faults = result.faults
            if k == 0:
                print(f"{result.cpu.name}: family {result.cpu.family}, model {result.cpu.model} ({result.cpu.label})")
                print("\n".join(result.calibration.lines()))
    common = [h for h in runs[0] if h in runs[1]]
    errors = sorted(abs(runs[0][h] - runs[1][h]) / runs[1][h] for h in common)
    quantiles = ", ".join(f"p{int(100 * q)} {100 * errors[int(q * (len(errors) - 1))]:.1f}%" for q in (0.5, 0.9, 0.99))
    print(f"{args.blocks:,} blocks of {args.bhive.name}, {args.rounds} rounds: {len(common):,} measured in both runs; MAPE between the "
          f"runs {100 * sum(errors) / len(errors):.2f}% ({quantiles})")
    print(f"not measured: {sum(faults.values()):,} (" + ", ".join(f"{n:,} {why}" for why, n in faults.most_common()) + ")")


if __name__ == "__main__":
    main()
