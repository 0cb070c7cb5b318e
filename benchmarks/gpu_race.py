"""The surrogate on a GPU machine against llvm-mca on all of that machine's cores, in one run.

Blocks: the first `--blocks` distinct BHive blocks (may-alias left out) of hsw.csv, then skl.csv
and ivb.csv (Haswell alone has 52,442), as hex and as text; every engine predicts Haswell. llvm-mca runs through the adapter with one worker per core; a machine without LLVM gets
it from `benchmarks/pack_llvm.sh` (unpack, put its bin/ first on PATH: same LLVM, same cycles).
Each surrogate engine (torch and the TVM build on CUDA, ONNX Runtime and torch on the CPU cores)
runs in a fresh process, the GPU engines at each `--batch`, the CPU ones at their own default: a first pass with cold caches and a warm second pass,
from text and from hex, plus the network alone on already tokenized blocks. The model directory
holds a `builds/cuda.so` made anywhere with `surrogate-ops compile --platform cuda` for the TVM
engine. Every figure is the median of `--repeats`.

    python benchmarks/gpu_race.py --model DIR [--bhive hsw.csv ... --blocks 60000 --batch 1024 --batch 4096]

Rows go to `--json` as they come, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from common import DEFAULT_BHIVE, bhive_hexes, fresh, median_time, passes

from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor


def tokenized_rate(model: str, engine: str, batch: int, texts: list[str], repeats: int) -> float:
    """Blocks/s of the network alone (bucket, pad, run) on already tokenized blocks."""
    predictor = Predictor(model, engine=engine, batch_size=batch)
    encoded = []
    for i, text in enumerate(texts):
        try:
            encoded.append(predictor.encode(text, i)[0])
        except ValueError:
            continue
    predictor.predict_encoded(encoded[:2048])
    seconds, _ = median_time(lambda: predictor.predict_encoded(encoded), repeats)
    return len(encoded) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bhive", type=Path, action="append",
                        help="BHive CSVs read in turn [default: hsw.csv, skl.csv, ivb.csv]")
    parser.add_argument("--blocks", type=int, default=60000)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--engine", action="append", help="[default: torch-cuda, tvm-cuda, onnxruntime, torch]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()

    hexes = bhive_hexes(args.bhive or [DEFAULT_BHIVE / f for f in ("hsw.csv", "skl.csv", "ivb.csv")], args.blocks)
    decoded = disassemble(hexes)
    keep = [i for i, b in enumerate(decoded.blocks) if b]
    hexes, texts = [hexes[i] for i in keep], [decoded.blocks[i] for i in keep]
    cores = len(os.sched_getaffinity(0))
    print(f"{len(texts):,} distinct BHive blocks, {cores} CPU cores, median of {args.repeats}", flush=True)

    try:
        mca = LlvmMca(mcpu="haswell", workers=cores)
        mca_text, results = median_time(lambda: mca.run(texts), args.repeats)
        mca_hex, _ = median_time(lambda: mca.run([b or "" for b in disassemble(hexes).blocks]), args.repeats)
    except SurrogateOpsError as exc:
        raise SystemExit(f"{exc}\n(on a machine without LLVM: benchmarks/pack_llvm.sh where LLVM is, unpack it here "
                         "and put its bin/ first on PATH)") from None
    truth = np.array([r.cycles for r in results], dtype=float)
    base = {"text": len(texts) / mca_text, "hex": len(texts) / mca_hex}
    rows = [{"engine": "llvm-mca", "workers": cores, "text_blocks_per_s": base["text"], "hex_blocks_per_s": base["hex"]}]
    print(f"\n{'engine':<12} {'batch':>6} {'pass':<6} {'text b/s':>10} {'vs mca':>7} {'hex b/s':>10} {'vs mca':>7} "
          f"{'MAPE mca':>9} {'tokens b/s':>11}")
    print(f"{'llvm-mca':<12} {cores:>6} {'':<6} {base['text']:>10,.0f} {1:>6.1f}x {base['hex']:>10,.0f} {1:>6.1f}x",
          flush=True)
    engines = args.engine or ["torch-cuda", "tvm-cuda", "onnxruntime", "torch"]
    gpu = [(batch, e) for batch in args.batch or [1024, 4096] for e in engines if e.endswith("cuda")]
    for batch, engine in gpu + [(None, e) for e in engines if not e.endswith("cuda")]:
        try:
            runs = {source: [fresh(passes, str(args.model), engine, source, hexes, texts, batch)
                             for _ in range(args.repeats)] for source in ("text", "hex")}
        except (SurrogateOpsError, RuntimeError) as exc:
            print(f"{engine:<12} {batch or 'auto':>6} unavailable: {str(exc).splitlines()[0]}", flush=True)
            continue
        cycles = runs["text"][-1][2]
        ok = np.isfinite(cycles) & np.isfinite(truth)
        error = 100 * mape(cycles[ok], truth[ok])
        tokens = fresh(tokenized_rate, str(args.model), engine, batch, texts, args.repeats)
        for k, kind in enumerate(("first", "warm")):
            text_rate = len(texts) / np.median([r[k] for r in runs["text"]])
            hex_rate = len(texts) / np.median([r[k] for r in runs["hex"]])
            rows.append({"engine": engine, "batch": batch, "pass": kind, "text_blocks_per_s": text_rate,
                         "text_vs_llvm_mca": text_rate / base["text"], "hex_blocks_per_s": hex_rate,
                         "hex_vs_llvm_mca": hex_rate / base["hex"], "mape_mca": error,
                         "tokenized_blocks_per_s": tokens})
            print(f"{engine:<12} {batch or 'auto':>6} {kind:<6} {text_rate:>10,.0f} {text_rate / base['text']:>6.1f}x "
                  f"{hex_rate:>10,.0f} {hex_rate / base['hex']:>6.1f}x {error:>8.2f}% {tokens:>11,.0f}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
