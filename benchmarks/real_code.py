"""Real code (issue 31): how much of held-out libraries and of llvm-mca's scheduling corner cases
each bundled surrogate answers itself, how closely, and how fast `predict` is on real code.

- `libraries`: blocks cut from ELF libraries that training never used (`HELD_OUT`, left out of
  every training collect with `--exclude`; their blocks were also dropped from the training mix),
  at most `--limit` per library spread over its code. Per library and CPU: the blocks llvm-mca
  takes, the share of those the surrogate answers itself (the service's policy, `coverage`), the
  MAPE and tau of those answers against llvm-mca, and why the rest went to llvm-mca.
- `corners`: `--corners` blocks of every `blocks.corners` kind from a held-out seed (no training
  used seeds from `PROBE_SEED` up), the same figures per kind.
- `race`: `surrogate-ops predict --input` on the held-out libraries' blocks (hex CSV) against
  `predict --program llvm-mca` on the same file, in turns, the median of `--repeats` runs each.

    python benchmarks/real_code.py [--mcpu haswell ...] [--limit 3000] [--corners 1000] [--out real_code/]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from surrogate_ops.blocks import corners
from surrogate_ops.blocks.generate import PROBE_SEED
from surrogate_ops.data.datasets import Record
from surrogate_ops.metrics import kendall_tau, mape
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.serving.coverage import CpuCoverage, bundled_mcpus, coverage, read_blocks

SITE = Path(np.__file__).resolve().parents[1]
HELD_OUT = {  # never in training: `collect --exclude` with these names, and their blocks dropped from the mix
    "glibc": Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
    "libcrypto (OpenSSL)": Path("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
    "GMP": Path("/usr/lib/x86_64-linux-gnu/libgmp.so.10"),
    "OpenBLAS (numpy's)": next(iter(sorted((SITE / "numpy.libs").glob("libscipy_openblas*.so*"))), Path("-")),
    "dav1d (hand-written AVX2 / AVX-512)": Path("/usr/lib/x86_64-linux-gnu/libdav1d.so.6"),
    "libsodium": Path("/usr/lib/x86_64-linux-gnu/libsodium.so.23"),
}
CORNER_SEED = PROBE_SEED + 31


def figures(cpu: CpuCoverage, rows: pd.DataFrame | None = None) -> dict:
    """Share answered of the blocks llvm-mca takes on this CPU, MAPE and tau of those answers, reasons."""
    rows = cpu.rows if rows is None else rows
    taken = rows[np.isfinite(rows["mca_cycles"]) & (rows["mca_cycles"] > 0)]
    mine = taken[taken["source"] == "surrogate"]
    tokens = Counter(t for ts in taken.loc[taken["rule"] == "unknown_tokens", "unknown_tokens"] for t in set(ts.split()))
    return {"blocks": len(rows), "taken": len(taken), "answered": len(mine),
            "share": len(mine) / len(taken) if len(taken) else float("nan"),
            "mape": mape(mine["surrogate_cycles"].to_numpy(), mine["mca_cycles"].to_numpy()) if len(mine) else float("nan"),
            "tau": kendall_tau(mine["surrogate_cycles"].to_numpy(), mine["mca_cycles"].to_numpy()) if len(mine) > 1 else float("nan"),
            "reasons": Counter(taken.loc[taken["source"] != "surrogate", "rule"]).most_common(),
            "tokens": tokens.most_common(8)}


def libraries(mcpus: list[str], limit: int) -> list[dict]:
    out = []
    for name, path in HELD_OUT.items():
        if not path.is_file():
            print(f"{name}: {path} not on this machine, skipped", flush=True)
            continue
        records = read_blocks([path], limit=limit)
        for cpu in coverage(records, {m: ModelDir.bundled(f"llvm-mca-{m}") for m in mcpus}):
            row = {"set": "library", "name": name, "mcpu": cpu.mcpu, **figures(cpu)}
            out.append(row)
            print(line(row), flush=True)
    return out


def corner_cases(mcpus: list[str], count: int) -> list[dict]:
    out = []
    for mcpu in mcpus:
        records, kinds = [], []
        for kind in corners.KINDS:
            for block in corners.generate(count, CORNER_SEED, mcpu=mcpu, kind=kind):
                records.append(Record(block, None, f"corners:{kind}"))
                kinds.append(kind)
        (cpu,) = coverage(records, {mcpu: ModelDir.bundled(f"llvm-mca-{mcpu}")})
        rows = cpu.rows.assign(kind=[kinds[i] for i in cpu.rows["index"]])
        for kind in [*corners.KINDS, "all"]:
            row = {"set": "corners", "name": kind, "mcpu": mcpu,
                   **figures(cpu, rows if kind == "all" else rows[rows["kind"] == kind])}
            out.append(row)
            print(line(row), flush=True)
    return out


def race(mcpu: str, limit: int, repeats: int, out: Path) -> dict:
    """predict's surrogate path against llvm-mca's on the held-out libraries' blocks, in turns."""
    records = [r for path in HELD_OUT.values() if path.is_file() for r in read_blocks([path], limit=limit) if r.hex]
    data = out / "heldout-blocks.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["hex"])
        writer.writerows([r.hex] for r in records)
    commands = {"surrogate": ["predict", "--input", str(data), "--mcpu", mcpu],
                "llvm-mca": ["predict", "--input", str(data), "--mcpu", mcpu, "--program", "llvm-mca"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, args in commands.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "surrogate_ops", *args], check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    result = {"mcpu": mcpu, "blocks": len(records), **{f"{k}_s": v for k, v in medians.items()},
              "times": times, "speedup": medians["llvm-mca"] / medians["surrogate"]}
    print(f"race on {len(records):,} held-out blocks ({mcpu}): surrogate {medians['surrogate']:.2f} s, "
          f"llvm-mca {medians['llvm-mca']:.2f} s: {result['speedup']:.2f}x", flush=True)
    return result


def line(row: dict) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in row["reasons"]) or "-"
    tokens = ", ".join(f"{t} {n}" for t, n in row["tokens"])
    return (f"| {row['set']} | {row['name']} | {row['mcpu']} | {row['taken']:,} of {row['blocks']:,} | "
            f"{100 * row['share']:.2f}% | {100 * row['mape']:.2f}% | {row['tau']:.3f} | {reasons}"
            + (f" ({tokens})" if tokens else "") + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mcpu", action="append", help="CPU (repeatable) [default: every bundled one]")
    parser.add_argument("--limit", type=int, default=3000, help="blocks per held-out library")
    parser.add_argument("--corners", type=int, default=500, help="blocks per corner kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[], choices=["libraries", "corners", "race"])
    parser.add_argument("--out", type=Path, default=Path("real_code"))
    args = parser.parse_args()
    mcpus = args.mcpu or bundled_mcpus()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| set | name | mcpu | llvm-mca takes | answered by the surrogate | MAPE vs llvm-mca | tau | sent to llvm-mca |")
    print("|---|---|---|---|---|---|---|---|")
    results: dict = {}
    if "libraries" not in args.skip:
        results["libraries"] = libraries(mcpus, args.limit)
    if "corners" not in args.skip:
        results["corners"] = corner_cases(mcpus, args.corners)
    if "race" not in args.skip:
        results["race"] = race(mcpus[0], args.limit, args.repeats, args.out)
    (args.out / "real_code.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
