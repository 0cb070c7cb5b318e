"""Training throughput: samples per second of the training loop (`loop.fit`, one epoch: batching,
forward, MAPE loss, backward, AdamW) on a device, for a bundled surrogate's network fine-tuned on a
dataset's measured column, at several batch sizes. Run it on the CPU here and on a GPU machine with
the same arguments; the ratio of the two is issue 35's "samples per second on the GPU against these
2 cores, same model and data".

    python benchmarks/train_throughput.py --data DATASET.parquet --device cpu --batch 64 --batch 512
    python benchmarks/train_throughput.py --data DATASET.parquet --device cuda --batch 64 --batch 4096
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from surrogate_ops import models
from surrogate_ops.data import datasets
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training import loop
from surrogate_ops.training.train import training_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a collected dataset with a measured column")
    parser.add_argument("--model", default="llvm-mca-haswell", help="a bundled surrogate's name")
    parser.add_argument("--mcpu", default="haswell")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable)")
    parser.add_argument("--blocks", type=int, default=20000, help="training blocks per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per batch size (median reported)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batches", choices=["host", "device", "both"], default="both",
                        help="host: BlockBatches (padded on the host per batch); device: DeviceBatches (held on the device)")
    args = parser.parse_args()
    parent = ModelDir.bundled(args.model)
    tokenizer = parent.tokenizer()
    rows = training_rows(datasets.load(args.data), "measured", args.mcpu, parent.max_instructions)
    rows = rows[rows["split"] == "train"].iloc[: args.blocks]
    encoded = [tokenizer.encode_block(b) for b in rows["block"]]
    targets = rows["measured"].to_numpy()
    results = []
    on = loop.device(args.device)
    kinds = ["host", "device"] if args.batches == "both" else [args.batches]
    for kind, batch in [(k, b) for b in args.batch or [64] for k in kinds]:
        seconds = []
        for repeat in range(args.repeats + 1):  # the first epoch warms up (allocator, kernels) and is not counted
            network = models.network(parent.module())
            config = loop.LoopConfig(epochs=1, lr=3e-4, warmup_steps=10, device=args.device, precision=args.precision)
            start = time.perf_counter()  # device batches: their one copy to the device counts
            batches = (loop.DeviceBatches(encoded, targets, None, batch, on) if kind == "device"
                       else loop.BlockBatches(encoded, targets, None, batch))
            loop.fit(network, batches, config, np.random.default_rng(repeat))
            if on.type == "cuda":
                torch.cuda.synchronize()
            if repeat:
                seconds.append(time.perf_counter() - start)
        median = float(np.median(seconds))
        results.append({"device": args.device, "precision": args.precision, "batches": kind, "batch": batch, "blocks": len(encoded),
                        "seconds": seconds, "samples_per_s": len(encoded) / median, "threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
