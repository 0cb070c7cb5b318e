"""The service race: blocks/s through the HTTP service against llvm-mca through the adapter, same blocks, same cores.

Starts `surrogate-ops serve` on a free port, sends `--blocks` BHive Haswell blocks (may-alias excluded)
in requests of `--request` blocks from `--clients` concurrent clients, and races llvm-mca (the
adapter, one worker per core) on the same blocks in the same run; each figure is the median of
`--repeats`. Then the latency of single `--latency-request`-block requests (p50, p99 over
`--latency-n` requests). Fallback blocks (answered by llvm-mca inside the service) are counted.

    python benchmarks/service_race.py [--model models:/NAME@ALIAS] [--data surrogate-ops-work/datasets/hsw.parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import post_json

from surrogate_ops.config import DEFAULT_MODEL_URI
from surrogate_ops.data import datasets
from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.serving.server import wait_ready


def post(url: str, blocks: list[str]) -> list[dict]:
    status, data = post_json(url, "/predict", {"blocks": blocks, "mcpu": "haswell"})
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    return json.loads(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_URI)
    parser.add_argument("--data", type=Path, default=Path("surrogate-ops-work/datasets/hsw.parquet"))
    parser.add_argument("--blocks", type=int, default=10000)
    parser.add_argument("--request", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-request", type=int, default=64)
    parser.add_argument("--latency-n", type=int, default=300)
    args = parser.parse_args()

    frame = datasets.load(args.data)
    frame = frame[~frame["may_alias"].astype(bool)].head(args.blocks)
    blocks, truth = list(frame["block"]), frame["mca_cycles_haswell"].to_numpy()
    cores = len(os.sched_getaffinity(0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "surrogate_ops", "serve", "--model", args.model, "--port", str(port)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        status = wait_ready(url)
        print(f"{len(blocks):,} BHive Haswell blocks (may-alias excluded), {cores} cores; service: {status['model_version']} "
              f"({status['arch']}, {status['engine']}); requests of {args.request} from {args.clients} clients; "
              f"median of {args.repeats}")
        requests = [blocks[i:i + args.request] for i in range(0, len(blocks), args.request)]
        post(url, blocks[:2048])  # warm: engine, line cache of the first shapes

        def through_service() -> list[dict]:
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                return [a for answers in pool.map(lambda r: post(url, r), requests) for a in answers]

        mca = LlvmMca(mcpu="haswell", workers=cores)
        service_times, mca_times, answers = [], [], []
        for _ in range(args.repeats):  # alternate the contenders
            start = time.perf_counter()
            mca_results = mca.run(blocks)
            mca_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            answers = through_service()
            service_times.append(time.perf_counter() - start)
        mca_rate = len(blocks) / statistics.median(mca_times)
        service_rate = len(blocks) / statistics.median(service_times)
        cycles = np.array([a.get("cycles", np.nan) for a in answers])
        ok = np.isfinite(cycles) & np.isfinite(truth)
        fallback = sum(a.get("source") == "llvm-mca" for a in answers)
        errors = sum("error" in a for a in answers)
        print(f"llvm-mca (adapter, {cores} workers): {mca_rate:,.0f} blocks/s "
              f"(runs: {', '.join(f'{t:.2f}' for t in mca_times)} s)")
        print(f"service (HTTP, end to end):     {service_rate:,.0f} blocks/s = {service_rate / mca_rate:.1f}x llvm-mca "
              f"(runs: {', '.join(f'{t:.2f}' for t in service_times)} s); {fallback} blocks answered by llvm-mca, "
              f"{errors} errors; MAPE vs llvm-mca {100 * mape(cycles[ok], truth[ok]):.2f}%")
        assert all(r.ok for r in mca_results[:1])

        latencies = []
        rng = np.random.default_rng(0)
        for _ in range(args.latency_n):
            start_at = int(rng.integers(0, len(blocks) - args.latency_request))
            start = time.perf_counter()
            post(url, blocks[start_at:start_at + args.latency_request])
            latencies.append(1000 * (time.perf_counter() - start))
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"latency of a {args.latency_request}-block request over {args.latency_n} requests: "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
