"""The race: llvm-mca against its surrogate, end to end from assembly text, on the same blocks and cores.

For each model: torch, ONNX Runtime and (where the architecture imports into TVM) a TVM build for
this host, all through the same `Predictor` path (normalize, tokenize with the per-instruction
cache, bucket by length, pad, run); llvm-mca through the adapter with one worker per core. Blocks
are the BHive Haswell test split, may-alias blocks left out. Each figure is the median of
`--repeats` runs, alternating the contenders. Then the seed paper's setting: one thread, batch 1.

    python benchmarks/compile_race.py --model surrogate_ops/pretrained/llvm-mca-haswell [--model DIR ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from surrogate_ops import compile as compiler
from surrogate_ops import datasets, engines
from surrogate_ops.export import example_batch
from surrogate_ops.inference import Predictor
from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops import registry

from common import median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model directory or models:/ URI")
    parser.add_argument("--data", type=Path, default=Path("surrogate-ops-work/datasets/hsw.parquet"))
    parser.add_argument("--blocks", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=1000, help="blocks for the one-thread, batch-1 race")
    args = parser.parse_args()

    frame = datasets.load(args.data)
    test = frame[(frame["split"] == "test") & ~frame["may_alias"].astype(bool)].head(args.blocks)
    blocks, mca_truth = list(test["block"]), test["mca_cycles_haswell"].to_numpy()
    measured = test["measured"].to_numpy()
    cores = len(os.sched_getaffinity(0))
    print(f"{len(blocks):,} BHive Haswell test blocks (may-alias excluded), {cores} cores, median of {args.repeats}")

    mca = LlvmMca(mcpu="haswell", workers=cores)
    mca_s, mca_results = median_time(lambda: mca.run(blocks), args.repeats)
    mca_cycles = np.array([r.cycles for r in mca_results], dtype=float)
    mca_rate = len(blocks) / mca_s
    print(f"{'contender':<34} {'blocks/s':>10} {'vs llvm-mca':>11} {'MAPE mca':>9} {'MAPE meas':>10}")
    print(f"{'llvm-mca (adapter, %d workers)' % cores:<34} {mca_rate:>10,.0f} {1:>10.1f}x {0:>8.2f}% "
          f"{100 * mape(mca_cycles, measured):>9.2f}%")

    single_rows = []
    scratch = Path(tempfile.mkdtemp(prefix="race-"))
    for uri in args.model:
        directory = scratch / Path(str(uri)).name.replace("@", "-")
        shutil.copytree(registry.model_dir(uri).path, directory)  # builds go beside a copy, never into the package
        meta = Predictor(directory).meta
        contenders = ["torch", "onnxruntime"]
        if meta["arch"] not in compiler.UNSUPPORTED:
            build_dir = directory / "builds"
            if not (build_dir / f"{engines.HOST_PLATFORM}.so").is_file():
                tokens = example_batch(Predictor(directory).tokenizer, blocks[:256])
                compiler.compile_model(directory, engines.HOST_PLATFORM, build_dir, check_tokens=tokens)
            contenders.append("tvm")
        for engine in contenders:
            predictor = Predictor(directory, engine=engine)
            predictor.predict(blocks[:512])  # warm: engine start-up, first-shape compilation
            seconds, cycles = median_time(lambda: predictor.cycles(blocks), args.repeats)
            ok = np.isfinite(cycles)
            rate = len(blocks) / seconds
            label = f"{meta['arch']} ({Path(str(uri)).name}) {engine}"
            print(f"{label:<34} {rate:>10,.0f} {rate / mca_rate:>10.1f}x {100 * mape(cycles[ok], mca_truth[ok]):>8.2f}% "
                  f"{100 * mape(cycles[ok], measured[ok]):>9.2f}%")
            single = Predictor(directory, engine=engine, threads=1, batch_size=1)
            subset = blocks[: args.single]
            single.predict(subset[:50])
            s_seconds, _ = median_time(lambda: single.cycles(subset), 1)
            single_rows.append((label, len(subset) / s_seconds))

    one = LlvmMca(mcpu="haswell", workers=1)
    subset = blocks[: args.single]
    s_seconds, _ = median_time(lambda: one.run(subset), 1)
    mca_single = len(subset) / s_seconds
    print(f"\nseed setting: one thread, batch 1, {len(subset):,} blocks (llvm-mca: one process, all blocks batched)")
    print(f"{'llvm-mca (1 worker)':<34} {mca_single:>10,.0f} {1:>10.1f}x")
    for label, rate in single_rows:
        print(f"{label:<34} {rate:>10,.0f} {rate / mca_single:>10.1f}x")


if __name__ == "__main__":
    main()
