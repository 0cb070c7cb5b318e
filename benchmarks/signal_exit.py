"""Does `surrogate-ops predict` exit when `timeout` stops it? Issue 29's target, on the real CLI.

`timeout` sends SIGTERM to the whole process group (so do systemd and CI runners): the parent and
its forked encoding and disassembly workers at once. Once a worker pool's lock left held by a killed
worker hung the parent for good (6 runs in 6, one for 14 minutes). This runs
`timeout -k KILL AFTER surrogate-ops predict --input FILE` `--runs` times on an input still running
at AFTER seconds and reports each exit: seconds from the start, exit status (124: stopped by the
SIGTERM; 137: it had to be killed KILL seconds later, a hang), rows written, the last line on
stderr, and whether any process of its group outlived it. Target: every run exits within AFTER + 2 s.

The input is BHive's hsw.csv blocks repeated: hex (disassembled, then encoded, by the worker pools)
or, with --text, assembly text (encoded by the worker pool); without BHive, generated text.

    python benchmarks/signal_exit.py [--runs 20] [--after 8] [--text] [--input FILE] [--out signal_exit.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_BHIVE

from surrogate_ops.blocks.generate import PROBE_SEED, iter_blocks
from surrogate_ops.blocks.hexcode import disassemble


def write_input(folder: Path, copies: int, text: bool) -> Path:
    """BHive's Haswell blocks `copies` times over, as a hex CSV or (`text`) as assembly text, each copy
    of a block made distinct by a line of its own; generated text where BHive is absent."""
    bhive = DEFAULT_BHIVE / "hsw.csv"
    if not bhive.is_file():
        path = folder / "blocks.s"
        with open(path, "w") as handle:
            for block in iter_blocks(60_000 * copies, seed=PROBE_SEED + 5, density="mixed"):
                handle.write(block + "\n\n")
        return path
    with open(bhive, newline="") as handle:
        hexes = [row["hex"] for row in csv.DictReader(handle)]
    if not text:
        path = folder / "blocks.csv"
        path.write_text("hex\n" + "\n".join(hexes * copies) + "\n")
        return path
    blocks = [b for b in disassemble(hexes).blocks if b]
    path = folder / "blocks.s"
    with open(path, "w") as handle:
        for k in range(copies):
            handle.writelines(f"{block}\naddq ${k}, %rax\n\n" for block in blocks)
    return path


def stop_once(path: Path, after: float, kill: float) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(["timeout", "-k", str(kill), str(after), sys.executable, "-m", "surrogate_ops",
                                 "predict", "--input", str(path), "--mcpu", "haswell"], stdout=out, stderr=err)
        proc.wait()
        seconds = time.perf_counter() - start
        time.sleep(0.2)  # the group's last processes have gone, or have outlived it
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in left:  # a worker that outlived its parent: end it, it is counted
            subprocess.run(["kill", "-9", pid], check=False)
        out.seek(0)
        err.seek(0)
        lines = err.read().strip().splitlines()
        return {"seconds": round(seconds, 2), "status": proc.returncode, "rows": max(0, sum(1 for _ in out) - 1),
                "stderr": lines[-1] if lines else "", "left_behind": len(left)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--after", type=float, default=8.0, help="seconds before timeout sends SIGTERM")
    parser.add_argument("--kill", type=float, default=60.0, help="seconds after that before timeout sends SIGKILL")
    parser.add_argument("--copies", type=int, default=6, help="copies of hsw.csv in the input (56,205 blocks each)")
    parser.add_argument("--text", action="store_true", help="the input as assembly text, not a hex CSV")
    parser.add_argument("--input", type=Path, help="input to predict on [default: written here, see --copies]")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.input or write_input(Path(tmp), args.copies, args.text)
        runs = []
        for k in range(args.runs):
            run = stop_once(path, args.after, args.kill)
            runs.append(run)
            print(f"run {k + 1:2d}: exit {run['status']} after {run['seconds']:.2f} s, {run['rows']:,} rows, "
                  f"{run['left_behind']} left behind; {run['stderr']!r}", flush=True)
    bound = args.after + 2
    times = [r["seconds"] for r in runs]
    within = sum(t <= bound and r["left_behind"] == 0 for t, r in zip(times, runs, strict=True))
    summary = {"runs": len(runs), "after": args.after, "within": within, "bound": bound, "median_s": statistics.median(times),
               "max_s": max(times), "finished": sum(r["status"] == 0 for r in runs)}
    print(f"{within} of {len(runs)} runs exited within {bound:g} s of the start (SIGTERM at {args.after:g} s) with "
          f"nothing left behind; exit times median {summary['median_s']:.2f} s, max {summary['max_s']:.2f} s"
          + (f"; {summary['finished']} finished before the SIGTERM (a larger --copies keeps them running)"
             if summary["finished"] else ""))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    sys.exit(0 if within == len(runs) else 1)


if __name__ == "__main__":
    main()
