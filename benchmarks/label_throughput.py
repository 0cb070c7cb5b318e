"""Labeling throughput: the LlvmMca adapter (N workers) against one plain batched llvm-mca process.

Both label the same BHive blocks, already disassembled, with the same llvm-mca command line; the
plain process gets all blocks as code regions in one input and its output is thrown away. Runs
alternate (plain, adapter with 1 worker, adapter with N workers) so that noise hits all alike.

    python benchmarks/label_throughput.py [--bhive ../shared/data/bhive/hsw.csv] [--blocks 10000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from common import DEFAULT_BHIVE, bhive_hexes

from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.programs import LlvmMca
from surrogate_ops.programs import llvm_mca as adapter_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bhive", type=Path, default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    dis = disassemble(bhive_hexes(args.bhive, args.blocks))
    blocks = [b for b in dis.blocks if b]
    print(f"{len(blocks):,} blocks from {args.bhive} ({len(dis.errors)} not disassembled)")

    program = LlvmMca(mcpu="haswell", workers=args.workers)
    single = LlvmMca(mcpu="haswell", workers=1)
    text = "".join(f"# LLVM-MCA-BEGIN b{i}\n{b}\n# LLVM-MCA-END b{i}\n" for i, b in enumerate(blocks))

    def plain() -> None:
        subprocess.run(program.command(), input=text, capture_output=True, text=True, check=True)

    parse_time = [0.0]
    original = LlvmMca._parse

    def timed_parse(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            parse_time[0] += time.perf_counter() - start

    adapter_module.LlvmMca._parse = staticmethod(timed_parse)
    times: dict[str, list[float]] = {"plain": [], "adapter-1": [], f"adapter-{args.workers}": []}
    parse_share = []
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("adapter-1", lambda: single.run(blocks)),
                         (f"adapter-{args.workers}", lambda: program.run(blocks))):
            parse_time[0] = 0.0
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            if name == "adapter-1":
                parse_share.append(parse_time[0] / elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'run':<12} {'median s':>9} {'blocks/s':>10}   (runs: s)")
    for name, value in med.items():
        print(f"{name:<12} {value:9.3f} {len(blocks) / value:10,.0f}   " + " ".join(f"{t:.2f}" for t in times[name]))
    print(f"speed-up, adapter with {args.workers} workers vs one plain process: {med['plain'] / med[f'adapter-{args.workers}']:.2f}x")
    print(f"adapter overhead, 1 worker vs plain (checking, chunking, parsing): {med['adapter-1'] / med['plain'] - 1:+.1%}")
    print(f"time in output parsing, 1 worker: {statistics.median(parse_share):.1%} of the run")


if __name__ == "__main__":
    main()
