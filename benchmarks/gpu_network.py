"""The network alone on a CUDA GPU: blocks/s from already tokenized blocks at several batch sizes,
in float32 and in reduced precision (bfloat16 and float16 autocast), and how far reduced precision
moves the answers (MAPE against the float32 answers, and each one's MAPE against llvm-mca).

Tells whether larger batches or reduced precision are worth adding to the torch-cuda engine
(issue 14 allows reduced precision only where MAPE moves by less than 0.1 point).

    python benchmarks/gpu_network.py --model DIR [--bhive hsw.csv ... --blocks 60000 --batch 4096 --batch 65536]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import DEFAULT_BHIVE, bhive_hexes, median_time

from surrogate_ops.blocks.batching import Flat, run_batched
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor


def cuda_engine(module, dtype, device: str = "cuda"):
    """The torch-cuda engine's call, under autocast to `dtype` (None: float32)."""
    import torch

    def run(tokens: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            host = torch.from_numpy(tokens)
            out = module(host.pin_memory().to(device, non_blocking=True) if device == "cuda" else host)
        return out.float().cpu().numpy()

    return run


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--bhive", type=Path, action="append")
    parser.add_argument("--blocks", type=int, default=60000)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cpu: try the script where there is no GPU")
    args = parser.parse_args()

    hexes = bhive_hexes(args.bhive or [DEFAULT_BHIVE / f for f in ("hsw.csv", "skl.csv", "ivb.csv")], args.blocks)
    texts = [b for b in disassemble(hexes).blocks if b]
    predictor = Predictor(args.model, engine="onnxruntime", workers=1)
    encoded, where = predictor._encode_part(texts, 0)[:2]
    flat = Flat.of(encoded)
    truth = np.array([r.cycles for r in LlvmMca(mcpu="haswell").run(texts)], dtype=float)[where]
    module = predictor.model.module().to(args.device).eval()
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{len(flat):,} tokenized blocks on {name}, median of {args.repeats}", flush=True)
    print(f"{'dtype':<9} {'batch':>6} {'blocks/s':>10} {'vs fp32 answers':>16} {'MAPE mca':>9}")
    rows, reference = [], None
    for batch in args.batch or [4096, 16384, 65536]:
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            engine = cuda_engine(module, dtype, args.device)
            run = lambda: run_batched(engine, flat, batch, overlap=True)  # noqa: E731
            run()
            seconds, out = median_time(run, args.repeats)
            cycles = out[:, 0] if out.ndim == 2 else out
            if reference is None:
                reference = cycles
            ok = np.isfinite(truth)
            row = {"dtype": name, "batch": batch, "blocks_per_s": len(flat) / seconds,
                   "mape_vs_float32": 100 * mape(cycles, reference), "mape_mca": 100 * mape(cycles[ok], truth[ok])}
            rows.append(row)
            print(f"{name:<9} {batch:>6} {row['blocks_per_s']:>10,.0f} {row['mape_vs_float32']:>15.3f}% "
                  f"{row['mape_mca']:>8.2f}%", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
