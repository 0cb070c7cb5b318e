"""Confidence routing: MAPE against llvm-mca and blocks/s as the share of blocks sent to llvm-mca grows.

For a confident surrogate (one with an error head, `surrogate-ops confidence`) on two sets: the BHive
test split of its CPU (may-alias blocks out) and the held-out dense-dependency probe (generator seed
9001, as `fidelity.py`). Per share routed, the MAPE left when that share of blocks goes to llvm-mca
(which answers them exactly), chosen by:
- the error head's estimate (what `max_error` does);
- `--second MODEL`'s disagreement with the first (a two-model ensemble's spread, the alternative);
- the actual error (the oracle: the best any estimate could do) and at random (the worst).
Then blocks/s through the real service (`surrogate-ops serve`, llvm-mca's answer cache off so that
nothing is answered twice for free), requests of `--request` blocks from `--clients` clients, with
`max_error` set to the threshold that routes each share, against the same requests with `exact`.
Writes a table, a JSON and a plot (MAPE and blocks/s against the share routed) to `--out`.

    python benchmarks/confidence_sweep.py --model surrogate_ops/pretrained/llvm-mca-haswell \\
        --data surrogate-ops-work/datasets/x86.parquet [--second models:/x86-dep-small-haswell/1]
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
from fidelity import bhive_rows, open_model, probe

from surrogate_ops.data import datasets
from surrogate_ops.serving.server import wait_ready
from surrogate_ops.training.confidence import routed_cut

SHARES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
MEASURED = (0.0, 0.05, 0.1, 0.2)  # shares timed through the service


def service(model: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SURROGATE_OPS_MCA_CACHE_BYTES": "0"}  # every routed block runs llvm-mca
    model = str(Path(model).resolve()) if Path(model).exists() else model  # the server runs elsewhere
    proc = subprocess.Popen([sys.executable, "-m", "surrogate_ops", "serve", "--model", model, "--port", str(port)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return proc, f"http://127.0.0.1:{port}"


def through_service(url: str, blocks: list[str], body: dict, request: int, clients: int) -> tuple[float, list[dict]]:
    """Seconds to answer every block in requests of `request` from `clients` clients, and the answers."""

    def post(part: list[str]) -> list[dict]:
        status, data = post_json(url, "/predict", {"blocks": part, **body})
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    parts = [blocks[i:i + request] for i in range(0, len(blocks), request)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [a for part in pool.map(post, parts) for a in part]
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a confident surrogate: models:/ URI or model directory")
    parser.add_argument("--second", help="another surrogate of the same CPU: the ensemble-spread alternative")
    parser.add_argument("--data", type=Path, default=Path("surrogate-ops-work/datasets/x86.parquet"))
    parser.add_argument("--request", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("confidence"))
    args = parser.parse_args()

    predictor = open_model(args.model)
    mcpu = predictor.meta["mcpu"]
    second = open_model(args.second) if args.second else None
    sets = {"bhive": bhive_rows(datasets.load(args.data), mcpu), "dense": probe("dense", mcpu)}
    results: dict[str, dict] = {}
    for name, rows in sets.items():
        blocks, truth = list(rows["block"]), rows["mca"].to_numpy()
        cycles, estimate = predictor.estimate(blocks)
        ok = np.isfinite(cycles)  # over the model's length limit: the service sends those to llvm-mca anyway
        blocks, truth, cycles, estimate = [b for b, k in zip(blocks, ok, strict=True) if k], truth[ok], cycles[ok], estimate[ok]
        errors = np.abs(cycles - truth) / truth
        rankers = {"error head": estimate, "oracle": errors, "random": np.random.default_rng(0).random(len(errors))}
        if second is not None:
            other = second.cycles(blocks)
            rankers["ensemble spread"] = np.abs(np.log(cycles / np.where(np.isfinite(other), other, cycles)))
        curves = {k: [100 * errors.mean() * (1 - routed_cut(errors, r, s)) for s in SHARES] for k, r in rankers.items()}
        results[name] = {"blocks": len(blocks), "mape": 100 * errors.mean(), "shares": list(SHARES), "curves": curves}
        print(f"\n{name}: {len(blocks):,} blocks, surrogate MAPE vs llvm-mca {100 * errors.mean():.2f}%")
        print("share routed | " + " | ".join(rankers) + " |")
        for k, share in enumerate(SHARES):
            print(f"{share:>11.0%} | " + " | ".join(f"{curves[r][k]:.2f}% ({1 - curves[r][k] / curves[r][0]:.0%} cut)"
                                                   for r in rankers) + " |")

    proc, url = service(args.model)
    try:
        status = wait_ready(url)
        if status["mode"] != "surrogate+llvm-mca":
            raise SystemExit(f"the service did not load {args.model}: {status['load_error']}")
        for name, rows in sets.items():
            blocks, truth = list(rows["block"]), rows["mca"].to_numpy()
            _, estimate = predictor.estimate(blocks)
            finite = estimate[np.isfinite(estimate)]
            through_service(url, blocks[:512], {"mcpu": mcpu}, args.request, args.clients)  # warm
            exact = [through_service(url, blocks, {"mcpu": mcpu, "exact": True}, args.request, args.clients)[0]
                     for _ in range(args.repeats)]
            exact_rate = len(blocks) / statistics.median(exact)
            timed = []
            for share in MEASURED:
                threshold = float(np.quantile(finite, 1 - share)) if share else 1e9
                runs = [through_service(url, blocks, {"mcpu": mcpu, "max_error": threshold}, args.request, args.clients)
                        for _ in range(args.repeats)]
                answers = runs[-1][1]
                got = np.array([a.get("cycles", np.nan) for a in answers])
                routed = sum(a.get("source") == "llvm-mca" for a in answers) / len(answers)
                rate = len(blocks) / statistics.median([r[0] for r in runs])
                ok = np.isfinite(got)
                timed.append({"share": share, "max_error": threshold, "routed": routed, "blocks_per_s": rate,
                              "vs_exact": rate / exact_rate, "mape": 100 * float(np.mean(np.abs(got[ok] - truth[ok]) / truth[ok]))})
                print(f"{name}: max_error {threshold:.4f}: {routed:.1%} to llvm-mca, MAPE {timed[-1]['mape']:.2f}%, "
                      f"{rate:,.0f} blocks/s = {rate / exact_rate:.1f}x the exact path ({exact_rate:,.0f} blocks/s)")
            results[name].update(exact_blocks_per_s=exact_rate, timed=timed)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "confidence.json").write_text(json.dumps({"model": args.model, "mcpu": mcpu, **results}, indent=1))
    plot(results, mcpu, args.out / "confidence.png")
    print(f"\nwrote {args.out / 'confidence.json'} and {args.out / 'confidence.png'}")


def plot(results: dict, mcpu: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for col, (name, r) in enumerate(results.items()):
        ax = axes[0][col]
        for ranker, curve in r["curves"].items():
            ax.plot([100 * s for s in r["shares"]], curve, marker="o", ms=3, label=ranker,
                    ls="--" if ranker in ("oracle", "random") else "-")
        ax.set_title(f"{name} ({r['blocks']:,} blocks, {mcpu})")
        ax.set_ylabel("MAPE vs llvm-mca (%)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        timed = r.get("timed", [])
        ax.plot([100 * t["routed"] for t in timed], [t["blocks_per_s"] for t in timed], marker="o", label="service, max_error")
        if "exact_blocks_per_s" in r:
            ax.axhline(r["exact_blocks_per_s"], color="grey", ls=":", label="exact (llvm-mca) path")
        ax.set_xlabel("blocks routed to llvm-mca (%)")
        ax.set_ylabel("blocks/s over HTTP")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
