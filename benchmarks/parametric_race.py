"""The parametric llvm-mca against llvm-mca itself, on the same blocks and cores.

Runs BHive Haswell blocks (may-alias excluded) through stock llvm-mca (the adapter, one worker per
core) and through the parametric driver under three tables: none, every opcode's stock values
written out, and a table of its own for every block (each opcode's latency moved by -1 to +2 cycles,
as sampling for `collect` will do). Blocks/s is the median of `--repeats`; the first two tables
must give llvm-mca's cycles exactly.

    python benchmarks/parametric_race.py [--blocks 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from common import DEFAULT_BHIVE, bhive_hexes

from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.programs import LlvmMca, parametric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bhive", default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    blocks = [b for b in disassemble(bhive_hexes(args.bhive, args.blocks)).blocks if b]
    cores = len(os.sched_getaffinity(0))
    stock = LlvmMca(workers=cores)
    binary = parametric.build(stock.path)
    written = parametric.defaults(stock.path, blocks)
    rng = random.Random(0)
    names = [line.split() for line in parametric._ask(stock.path, "NAMES", blocks, "haswell")]
    moved = [{op: {**written[op], "latency": max(0, written[op].get("latency", 1) + rng.randint(-1, 2))}
              for op in set(ops) if op in written} for ops in names]
    step = -(-len(blocks) // (4 * cores))
    parts = [range(s, min(s + step, len(blocks))) for s in range(0, len(blocks), step)]

    def driver(shared: dict, own: list[dict] | None = None) -> list[float | None]:
        """Cycles from the driver: every block under `shared`, or block i under `own[i]`."""

        def one(part: range) -> list[float | None]:
            text = ("".join(parametric.job_text({}, own[i], [blocks[i]]) for i in part) if own is not None
                    else parametric.job_text({}, shared, [blocks[i] for i in part]))
            return [c for c, _ in parametric.run(binary, "haswell", 100, text, len(part), 600)]

        with ThreadPoolExecutor(cores) as pool:
            return [c for part in pool.map(one, parts) for c in part]

    contenders = {
        f"llvm-mca ({cores} workers)": lambda: [r.cycles for r in stock.run(blocks)],
        "driver, no table": lambda: driver({}),
        "driver, stock values written out": lambda: driver(written),
        "driver, a table of its own per block": lambda: driver({}, moved),
    }
    results, rates = {}, {}
    for name, run in contenders.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = run()
            times.append(time.perf_counter() - start)
        rates[name] = len(blocks) / statistics.median(times)
    reference = results[next(iter(contenders))]
    print(f"{len(blocks):,} BHive Haswell blocks, {cores} cores, median of {args.repeats}")
    for name, rate in rates.items():
        same = sum(a == b for a, b in zip(results[name], reference, strict=True))
        print(f"{name:<40} {rate:>8,.0f} blocks/s  {rate / rates[next(iter(rates))]:>5.2f}x  "
              f"same cycles as llvm-mca: {same:,} of {len(blocks):,}")


if __name__ == "__main__":
    main()
