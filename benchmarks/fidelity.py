"""Fidelity: how closely each surrogate imitates llvm-mca, on code like its training data and not.

For every model (its mcpu read from the model), against llvm-mca on the same mcpu:
- `dense`: 3,000 generated blocks of 1-12 instructions whose operands reuse one to three registers
  (chains, loop-carried dependencies, pointer chases, long-latency chains everywhere), from a
  held-out generator seed no training run may use (`blocks.generate.PROBE_SEED` and up);
- `mixed`: 2,000 generated blocks of every density and length, another held-out seed;
- `bhive`: the BHive test split of `--data` (blocks no training saw; may-alias blocks left out),
  the blocks of the model's own BHive file where it has one (hsw, skl, ivb), else Haswell's
  (blocks over the model's 64-instruction limit are left out: the service sends those to llvm-mca);
- `classics`: ten hand-written loops (dependency chains, a divide, a pointer chase), each with its
  relative error.
MAPE and Kendall's tau per set, and end-to-end speed (assembly text to cycles, ONNX Runtime, the
median of `--repeats` runs) on the bhive blocks. Probe labels are cached in the work directory.

    python benchmarks/fidelity.py --data surrogate-ops-work/datasets/x86.parquet \\
        --model models:/llvm-mca-haswell@champion --model models:/llvm-mca-skylake@champion ... \\
        [--out fidelity/]   (a table, a JSON and an accuracy-vs-speed plot)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from common import median_time

from surrogate_ops import config, presets, registry
from surrogate_ops.blocks.generate import PROBE_SEED, generate
from surrogate_ops.data import datasets
from surrogate_ops.metrics import kendall_tau, mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor

CLASSICS = [
    "addq %rax, %rbx\nimulq %rcx, %rdx",
    "imulq %rcx, %rdx",
    "addq %rax, %rbx\naddq %rbx, %rcx\naddq %rcx, %rax",
    "movq (%rdi), %rax\naddq %rax, %rbx",
    "divq %rcx",
    "vmulps %ymm0, %ymm1, %ymm1",
    "vaddps %ymm0, %ymm1, %ymm2\nvaddps %ymm2, %ymm3, %ymm4",
    "xorl %eax, %eax\nincl %eax",
    "movq (%rax), %rax",
    "leaq 8(%rdi,%rsi,4), %rdi",
]
PROBES = {"dense": dict(count=3000, seed=PROBE_SEED + 1, density="dense", max_instructions=12),
          "mixed": dict(count=2000, seed=PROBE_SEED + 2, density="mixed", max_instructions=64)}


def probe(name: str, mcpu: str) -> pd.DataFrame:
    """A held-out generated probe set with llvm-mca's cycles on `mcpu` (labeled once, cached)."""
    path = config.work_dir() / "probes" / f"{name}-{mcpu}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    blocks = generate(**PROBES[name])
    results = LlvmMca(mcpu).run(blocks)
    frame = pd.DataFrame({"block": blocks, "mca": [r.cycles if r.ok else np.nan for r in results]}).dropna()
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return frame


def bhive_rows(frame: pd.DataFrame, mcpu: str) -> pd.DataFrame:
    spec = presets.load("microarchitectures").get(mcpu, {})
    source = f"bhive:{spec.get('bhive') or 'hsw'}.csv"
    rows = frame[(frame["split"] == "test") & (frame["source"] == source) & ~frame["may_alias"].astype(bool)]
    rows = rows[rows[f"mca_cycles_{mcpu}"].notna()].drop_duplicates("block")
    return pd.DataFrame({"block": rows["block"], "mca": rows[f"mca_cycles_{mcpu}"],
                         "measured": rows["measured"].where(rows["measured_mcpu"] == mcpu)})


def score(predictor: Predictor, rows: pd.DataFrame) -> dict[str, float]:
    predicted = predictor.cycles(list(rows["block"]))
    ok = np.isfinite(predicted)
    return {"blocks": int(ok.sum()), "mape": mape(predicted[ok], rows["mca"].to_numpy()[ok]),
            "tau": kendall_tau(predicted[ok], rows["mca"].to_numpy()[ok]), "_predicted": predicted}


def open_model(uri: str) -> Predictor:
    return Predictor(registry.open(uri).model if uri.startswith("models:/") else uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="models:/ URI or model directory (repeatable) "
                        "[default: the champion of every bundled CPU]")
    parser.add_argument("--data", type=Path, default=Path("surrogate-ops-work/datasets/x86.parquet"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("fidelity"))
    args = parser.parse_args()
    frame = datasets.load(args.data)
    results = []
    for uri in registry.served(args.model):
        predictor = open_model(uri)
        mcpu = predictor.meta["mcpu"]
        sets = {"dense": probe("dense", mcpu), "mixed": probe("mixed", mcpu), "bhive": bhive_rows(frame, mcpu)}
        row = {"model": uri, "mcpu": mcpu, "arch": predictor.meta["arch"], "preset": predictor.meta.get("preset") or predictor.model.shape()["preset"],
               "parameters": predictor.meta.get("parameters")}
        for name, rows in sets.items():
            scored = score(predictor, rows)
            row.update({f"{name}_mape": scored["mape"], f"{name}_tau": scored["tau"], f"{name}_blocks": scored["blocks"]})
            if name == "bhive" and rows["measured"].notna().any():
                measured = rows["measured"].notna().to_numpy() & np.isfinite(scored["_predicted"])
                row["bhive_measured_mape"] = mape(scored["_predicted"][measured], rows["measured"].to_numpy()[measured])
                row["mca_measured_mape"] = mape(rows["mca"].to_numpy()[measured], rows["measured"].to_numpy()[measured])
        classics = [r.cycles for r in LlvmMca(mcpu).run(CLASSICS)]
        guessed = predictor.cycles(CLASSICS)
        row["classics"] = [{"block": b, "mca": m, "surrogate": float(s), "error": abs(s - m) / m}
                           for b, m, s in zip(CLASSICS, classics, guessed, strict=True)]
        row["classics_worst"] = max(c["error"] for c in row["classics"])
        blocks = list(sets["bhive"]["block"])
        row["blocks_per_s"] = len(blocks) / median_time(lambda: predictor.cycles(blocks), args.repeats)[0]
        results.append(row)
        print(f"{uri}: dense {100 * row['dense_mape']:.2f}%  mixed {100 * row['mixed_mape']:.2f}%  "
              f"bhive {100 * row['bhive_mape']:.2f}% (tau {row['bhive_tau']:.3f})  classics worst "
              f"{100 * row['classics_worst']:.1f}%  {row['blocks_per_s']:,.0f} blocks/s", flush=True)
    report(results, args.out)


def report(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(results, indent=1, default=float))
    lines = ["| model | mcpu | arch | params | dense MAPE | mixed MAPE | BHive test MAPE (tau) | vs measured | "
             "classics worst | blocks/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        measured = f"{100 * r['bhive_measured_mape']:.2f}% (llvm-mca {100 * r['mca_measured_mape']:.2f}%)" \
            if "bhive_measured_mape" in r else "-"
        lines.append(f"| {r['model']} | {r['mcpu']} | {r['arch']} {r['preset']} | {r['parameters']:,} | "
                     f"{100 * r['dense_mape']:.2f}% | {100 * r['mixed_mape']:.2f}% | {100 * r['bhive_mape']:.2f}% "
                     f"({r['bhive_tau']:.3f}) | {measured} | {100 * r['classics_worst']:.1f}% | {r['blocks_per_s']:,.0f} |")
    lines += ["", "Classics (cycles per 100 iterations, llvm-mca -> surrogate):", "",
              "| block | " + " | ".join(r["mcpu"] + " " + r["arch"] for r in results) + " |",
              "|---|" + "---|" * len(results)]
    for i, block in enumerate(CLASSICS):
        cells = [f"{c['mca']:.0f} -> {c['surrogate']:.0f} ({100 * c['error']:.0f}%)" for c in (r["classics"][i] for r in results)]
        lines.append(f"| `{block.replace(chr(10), '` / `')}` | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "fidelity.md").write_text(table + "\n")
    print(table)
    plot(results, out / "fidelity.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        for key, marker in (("dense_mape", "o"), ("bhive_mape", "s")):
            ax.scatter(r["blocks_per_s"], 100 * r[key], marker=marker, label=f"{r['mcpu']} {r['arch']} {r['preset']} "
                       f"({key.split('_')[0]})")
    ax.axhline(10, color="grey", lw=0.8, ls="--")
    ax.axhline(5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("blocks/s, end to end (ONNX Runtime, this machine)")
    ax.set_ylabel("MAPE vs llvm-mca (%)")
    ax.set_title("Fidelity against speed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
