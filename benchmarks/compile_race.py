"""The race: llvm-mca against its surrogate on the same blocks and the same cores, end to end.

Blocks: the first `--blocks` distinct BHive Haswell blocks (may-alias blocks left out), as hex (the
BHive form: disassembled first, by both contenders) and as assembly text. llvm-mca runs through the
adapter with one worker per core. Each surrogate engine runs in a fresh process, so its first pass
meets cold caches (every line new to the canonicalizer, the dependency analysis and the tokenizer)
and its second pass warm ones; both are timed, from text and from hex. Then the CLI as a user meets
it: `surrogate-ops predict` on a hex CSV against `--program llvm-mca`, marginal time per block
(the one-block run's start-up subtracted), and the one-block run's wall time and peak memory.
Last, the seed paper's setting: one thread, batch 1. Every figure is the median of `--repeats`.

`--baseline REV` races the product as it was at a git revision beside today's: that revision's
code and its bundled Haswell surrogate, run from an extracted copy of its package (first and warm
passes, the CLI), each surrogate's figures also given as a ratio to it. Issue 13 asks the new
default to stay within 1.5x of the one it replaced (`--baseline 1463139`, the `hier` default).

    python benchmarks/compile_race.py --model surrogate_ops/pretrained/llvm-mca-haswell [--model DIR ...] [--baseline REV]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_BHIVE, bhive_hexes, median_time

from surrogate_ops import registry
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.builds import compile as compiler
from surrogate_ops.builds.export import example_batch
from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime import engines
from surrogate_ops.runtime.inference import Predictor

PASSES = """
import json, sys
import surrogate_ops
from common import passes  # the Predictor of whichever package PYTHONPATH puts first
job = json.load(open(sys.argv[1]))
first, warm, cycles = passes(job["model"], job["engine"], job["source"], job["hexes"], job["texts"])
print(json.dumps([first, warm, [float(c) for c in cycles], surrogate_ops.__file__]))
"""


def extract(revision: str, into: Path) -> Path:
    """The `surrogate_ops` package as it was at a git revision (code and bundled surrogates), under `into`."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", revision, "surrogate_ops"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def lean_passes(tree: Path | None, model: Path, engine: str, source: str, hexes: list[str], texts: list[str],
                ) -> tuple[float, float, np.ndarray]:
    """`passes` in a fresh interpreter that imports only what a predictor needs (this script's
    imports hold ten times the objects, and every full garbage collection of the first pass walks
    them all), from the baseline's package `tree` or today's (None)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as job:
        json.dump({"model": str(model), "engine": engine, "source": source, "hexes": hexes, "texts": texts}, job)
        job.flush()
        proc = subprocess.run([sys.executable, "-c", PASSES, job.name], capture_output=True, text=True,
                              env=package_env(tree), cwd=tree or Path(__file__).resolve().parent)
    if proc.returncode:
        raise SystemExit(f"the passes over {model} failed: {proc.stderr[-1500:]}")
    first, warm, cycles, package = json.loads(proc.stdout.splitlines()[-1])
    if tree is not None and not Path(package).is_relative_to(tree):
        raise SystemExit(f"the baseline's passes imported {package}, not the package under {tree}")
    return first, warm, np.array(cycles)


def package_env(tree: Path | None) -> dict[str, str]:
    """An environment that imports the benchmarks' helpers and, with `tree`, the baseline's
    `surrogate_ops` (PYTHONPATH comes before the installed package; the child runs in `tree`, since
    `python -c` and `-m` put the working directory first, and this checkout's would win)."""
    here = str(Path(__file__).resolve().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), here] if tree else [here])}


def cli(args: list[str], tree: Path | None = None) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MB, from GNU time where it is installed: a child forked from this
    large process would report this process's memory as its own) of one `surrogate-ops` command,
    from the baseline's package `tree` or today's (None)."""
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").is_file() else None)
    with tempfile.NamedTemporaryFile("r") as record:
        command = [sys.executable, "-m", "surrogate_ops", *args]
        if timer:
            command = [timer, "-f", "%M", "-o", record.name, *command]
        start = time.perf_counter()
        proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=package_env(tree) if tree else None, cwd=tree)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"surrogate-ops {' '.join(args)} failed: {proc.stderr[-500:]}")
        return seconds, int(record.read().split()[-1]) / 1024 if timer else None


def race_rows(label: str, runs: dict[str, list], texts: list[str], truth: np.ndarray, rate: dict[str, float],
              base_rates: dict[str, tuple[float, float]], is_baseline: bool = False) -> None:
    """Print a contender's first and warm pass, from text and from hex, against llvm-mca and the
    baseline's (whose own rows fill `base_rates`)."""
    cycles = runs["text"][-1][2]
    ok = np.isfinite(cycles) & np.isfinite(truth)
    for k, kind in enumerate(("first", "warm")):
        text_rate = len(texts) / np.median([r[k] for r in runs["text"]])
        hex_rate = len(texts) / np.median([r[k] for r in runs["hex"]])
        against = ""
        if is_baseline:
            base_rates[kind] = (text_rate, hex_rate)
        elif kind in base_rates:
            against = f" {base_rates[kind][0] / text_rate:>6.2f}x {base_rates[kind][1] / hex_rate:>6.2f}x"
        print(f"{label:<40} {kind:<6} {text_rate:>10,.0f} {text_rate / rate['text']:>6.1f}x "
              f"{hex_rate:>10,.0f} {hex_rate / rate['hex']:>6.1f}x {100 * mape(cycles[ok], truth[ok]):>8.2f}%{against}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model directory or models:/ URI")
    parser.add_argument("--bhive", type=Path, default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", action="append", help="engines to race [default: onnxruntime, torch, tvm]")
    parser.add_argument("--single", type=int, default=1000, help="blocks for the one-thread, batch-1 race")
    parser.add_argument("--baseline", metavar="REV", help="git revision whose package (code and bundled Haswell "
                        "surrogate) is raced beside today's, every figure also as a ratio to it")
    args = parser.parse_args()

    hexes = bhive_hexes(args.bhive, args.blocks)
    decoded = disassemble(hexes)
    keep = [i for i, b in enumerate(decoded.blocks) if b]
    hexes, texts = [hexes[i] for i in keep], [decoded.blocks[i] for i in keep]
    cores = len(os.sched_getaffinity(0))
    print(f"{len(texts):,} distinct BHive Haswell blocks (may-alias excluded), {cores} cores, median of {args.repeats}")

    mca = LlvmMca(mcpu="haswell", workers=cores)
    mca_text, results = median_time(lambda: mca.run(texts), args.repeats)
    mca_hex, _ = median_time(lambda: mca.run([b or "" for b in disassemble(hexes).blocks]), args.repeats)
    truth = np.array([r.cycles for r in results], dtype=float)
    rate = {"text": len(texts) / mca_text, "hex": len(texts) / mca_hex}
    print(f"\n{'contender':<40} {'pass':<6} {'text b/s':>10} {'vs mca':>7} {'hex b/s':>10} {'vs mca':>7} {'MAPE mca':>9}")
    print(f"{'llvm-mca (adapter, %d workers)' % cores:<40} {'':<6} {rate['text']:>10,.0f} {1:>6.1f}x "
          f"{rate['hex']:>10,.0f} {1:>6.1f}x {0:>8.2f}%")

    scratch = Path(tempfile.mkdtemp(prefix="race-"))
    tree = extract(args.baseline, scratch / "baseline") if args.baseline else None
    contenders = []  # (label, package tree or None for today's, model directory, engine)
    if tree is not None:
        model = tree / "surrogate_ops" / "pretrained" / "llvm-mca-haswell"
        contenders.append((f"baseline {args.baseline} onnxruntime", tree, model, "onnxruntime"))
    for uri in args.model:
        directory = scratch / Path(str(uri)).name.replace("@", "-")
        shutil.copytree(registry.open(uri).model.path, directory)  # builds go beside a copy, never into the package
        meta = Predictor(directory).meta
        engines_here = args.engine or ["onnxruntime", "torch", "tvm"]
        if "tvm" in engines_here and meta["arch"] in compiler.UNSUPPORTED:
            engines_here = [c for c in engines_here if c != "tvm"]
        if "tvm" in engines_here and not (directory / "builds" / f"{engines.HOST_PLATFORM}.so").is_file():
            tokens = example_batch(Predictor(directory).tokenizer, texts[:256])
            compiler.compile_model(directory, engines.HOST_PLATFORM, directory / "builds", check_tokens=tokens)
        contenders += [(f"{meta['arch']} ({Path(str(uri)).name}) {engine}", None, directory, engine)
                       for engine in engines_here]
    # in turns, every contender once a round, so that the machine's drift falls on all alike
    runs = {label: {"text": [], "hex": []} for label, *_ in contenders}
    for _ in range(args.repeats):
        for label, package, directory, engine in contenders:
            for source in ("text", "hex"):
                runs[label][source].append(lean_passes(package, directory, engine, source, hexes, texts))
    if tree is not None:
        print(f"{'':<40} {'':<6} {'':>10} {'':>7} {'':>10} {'':>7} {'':>9} slower than the baseline (text, hex)")
    base_rates: dict[str, tuple[float, float]] = {}  # pass -> the baseline's (text, hex) blocks/s
    single_rows = []
    for label, package, directory, engine in contenders:
        race_rows(label, runs[label], texts, truth, rate, base_rates, is_baseline=package is not None)
        if package is None:
            single = Predictor(directory, engine=engine, threads=1, batch_size=1)
            subset = texts[: args.single]
            single.predict(subset[:50])
            s_seconds, _ = median_time(lambda: single.cycles(subset), 1)
            single_rows.append((label, len(subset) / s_seconds))

    # the CLI, as a user runs it: hex CSV in, cycles out
    many, one = scratch / "blocks.csv", scratch / "one.csv"
    for path, rows in ((many, hexes), (one, hexes[:1])):
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([["hex"], *[[h] for h in rows]])
    print(f"\nCLI, `surrogate-ops predict --input HEX.csv`, {len(hexes):,} blocks vs 1 (marginal: start-up subtracted)")
    print(f"{'command':<52} {'1 block':>8} {'peak MB':>8} {'all':>8} {'marginal b/s':>13} {'vs mca':>7}"
          + (" slower than the baseline" if tree else ""))
    commands = [("--program llvm-mca", ["--program", "llvm-mca"], None)]  # (label, arguments, package tree)
    if tree is not None:
        commands.append((f"baseline {args.baseline}: --model its haswell", ["--model", str(model)], tree))
    commands += [(f"--model {Path(str(uri)).name}", ["--model", str(scratch / Path(str(uri)).name.replace("@", "-"))],
                  None) for uri in args.model]
    commands.append(("(default: the champion of --mcpu)", [], None))
    for label, extra, package in commands:  # untimed: the default is resolved (and cached) on its first run
        cli(["predict", "--input", str(one), *extra], package)
    timed = {label: ([], [], []) for label, *_ in commands}  # one-block seconds, all-blocks seconds, peaks
    for _ in range(args.repeats):  # in turns, as above
        for label, extra, package in commands:
            for k, path in enumerate((one, many)):
                seconds, peak = cli(["predict", "--input", str(path), *extra], package)
                timed[label][k].append(seconds)
                if k == 0 and peak:
                    timed[label][2].append(peak)
    base = baseline = None
    for label, extra, package in commands:
        t_one, t_all = float(np.median(timed[label][0])), float(np.median(timed[label][1]))
        peak = max(timed[label][2]) if timed[label][2] else float("nan")
        marginal = (len(hexes) - 1) / max(t_all - t_one, 1e-9)
        base = base or marginal
        if package is not None:
            baseline = marginal
        slower = f" {baseline / marginal:>6.2f}x" if baseline and package is None and extra[:1] != ["--program"] else ""
        print(f"{label:<52} {t_one:>7.2f}s {peak:>8.0f} {t_all:>7.1f}s {marginal:>13,.0f} "
              f"{marginal / base:>6.1f}x{slower}")

    one_mca = LlvmMca(mcpu="haswell", workers=1)
    subset = texts[: args.single]
    s_seconds, _ = median_time(lambda: one_mca.run(subset), 1)
    mca_single = len(subset) / s_seconds
    print(f"\nseed setting: one thread, batch 1, {len(subset):,} blocks (llvm-mca: one process, all blocks batched)")
    print(f"{'llvm-mca (1 worker)':<40} {mca_single:>10,.0f} {1:>6.1f}x")
    for label, single_rate in single_rows:
        print(f"{label:<40} {single_rate:>10,.0f} {single_rate / mca_single:>6.1f}x")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
