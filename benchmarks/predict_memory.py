"""Peak memory of `surrogate-ops predict` as the input grows: it should not grow with the file.

Writes `--small` and `--large` generated blocks (mixed density, lengths 1-64, a seed in the held-out
range so no training set holds them: nearly every block and many lines are distinct, which is what
fills caches) as assembly text files, runs `predict` on each through GNU time, and reports wall
time, blocks/s and peak RSS, and the ratio of the peaks. Checks that every block is answered, in
input order.

    python benchmarks/predict_memory.py [--small 10000 --large 1000000] [--model DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from surrogate_ops.blocks.generate import PROBE_SEED, iter_blocks


def write_blocks(path: Path, count: int) -> None:
    with open(path, "w") as handle:
        for block in iter_blocks(count, seed=PROBE_SEED + 3, density="mixed"):
            handle.write(block + "\n\n")


def run(path: Path, count: int, extra: list[str]) -> tuple[float, float]:
    timer = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r") as record, tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.run([timer, "-f", "%M", "-o", record.name, sys.executable, "-m", "surrogate_ops", "predict",
                               "--input", str(path), *extra], stdout=out, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stderr[-1000:])
        out.seek(0)
        answered = 0
        for expected, line in enumerate(out):
            if int(line.split(",", 1)[0]) != expected:
                raise SystemExit(f"answer {expected} out of order: {line!r}")
            answered += 1
        if answered != count:
            raise SystemExit(f"{answered:,} answers for {count:,} blocks")
        return seconds, int(record.read().split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--model", help="model directory or URI [default: the champion of haswell]")
    args = parser.parse_args()
    extra = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {}
        for count in (args.small, args.large):
            path = Path(tmp) / f"{count}.s"
            write_blocks(path, count)
            seconds, peak = run(path, count, extra)
            peaks[count] = peak
            print(f"{count:>10,} blocks ({path.stat().st_size / 1e6:,.0f} MB of text): {seconds:7.1f} s, "
                  f"{count / seconds:8,.0f} blocks/s, peak RSS {peak:6.0f} MB")
            path.unlink()
        print(f"peak RSS ratio, {args.large:,} vs {args.small:,} blocks: {peaks[args.large] / peaks[args.small]:.2f}x")


if __name__ == "__main__":
    main()
