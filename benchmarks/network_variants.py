"""The network alone, in the forms it could run in: the graph from padded tokens (`model.onnx`), the
graph from a batch's parts (`parts.onnx`, `batching.parts` included in its time), and the graph from
tokens with int8 weights (ONNX Runtime's dynamic quantization of MatMul, Gemm and Gather). Same
BHive blocks, the same 32,768-token batches a bulk call uses, one thread, in turns, median of
`--repeats`; how far each moves the answers from the float32 graph from tokens.

    python benchmarks/network_variants.py [--model DIR] [--blocks 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import DEFAULT_BHIVE, bhive_hexes

from surrogate_ops.blocks.batching import buckets, parts
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.runtime.inference import BULK_TOKENS, Predictor
from surrogate_ops.runtime.modeldir import ModelDir


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ModelDir.bundled("haswell").path)
    parser.add_argument("--bhive", type=Path, default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    predictor = Predictor(args.model)
    texts = [b for b in disassemble(bhive_hexes(args.bhive, args.blocks)).blocks if b is not None]
    flat = predictor.encode_many(texts)[0]
    batches = [flat.take(index) for index in buckets(flat, predictor.batch_size, token_budget=BULK_TOKENS)]
    int8 = Path(tempfile.mkdtemp(prefix="network-variants-")) / "int8.onnx"
    quantize_dynamic(str(predictor.model.onnx), str(int8), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm", "Gather"])
    whole, split, quantized = session(predictor.model.onnx), session(predictor.model.parts_onnx), session(int8)
    positions = predictor.model.max_instructions
    variants = {
        "float32, from tokens": lambda t: whole.run(None, {"tokens": t})[0],
        "float32, from parts": lambda t: split.run(None, dict(zip(("rows", "ins", "edges"), parts(t, positions))))[0],
        "int8 weights, from tokens": lambda t: quantized.run(None, {"tokens": t})[0],
    }
    answers = {name: np.concatenate([run(t) for t in batches])[:, 0] for name, run in variants.items()}
    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            for tokens in batches:
                run(tokens)
            seconds[name].append(time.perf_counter() - started)
    base = answers["float32, from tokens"]
    print(f"{len(flat):,} BHive blocks, {len(batches)} batches of up to {BULK_TOKENS:,} tokens, one thread, median of {args.repeats}")
    for name in variants:
        speed = len(flat) / float(np.median(seconds[name]))
        moved = np.abs(answers[name] / base - 1)
        print(f"{name:<28} {speed:>9,.0f} blocks/s  answers moved: mean {moved.mean():.2e}, max {moved.max():.2e}")


if __name__ == "__main__":
    main()
