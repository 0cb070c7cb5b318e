"""Plots people would rather look at than read: predicted against target, error by block length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def predicted_vs_target(frame: pd.DataFrame, target: str, path: Path, title: str) -> Path:
    ok = frame[np.isfinite(frame["predicted"]) & frame[target].notna()]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(ok[target] / 100, ok["predicted"] / 100, s=3, alpha=0.3)
    low, high = max(0.05, (ok[target] / 100).min()), (ok[target] / 100).max()
    ax.plot([low, high], [low, high], color="black", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel=f"{target} (cycles per iteration)", ylabel="predicted (cycles per iteration)",
           title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def error_by_length(frame: pd.DataFrame, target: str, path: Path, title: str) -> Path:
    ok = frame[np.isfinite(frame["predicted"]) & frame[target].notna()]
    lengths = ok["block"].str.count("\n") + 1
    bins = pd.cut(lengths, [0, 1, 2, 4, 8, 16, 32, 64, 1024], labels=["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", ">64"])
    error = (np.abs(ok["predicted"] - ok[target]) / ok[target]).groupby(bins, observed=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    means = 100 * error.mean()
    ax.bar(means.index.astype(str), means.values)
    for x, (m, n) in enumerate(zip(means.values, error.size().values)):
        ax.annotate(f"n={n}", (x, m), ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="instructions in the block", ylabel=f"MAPE vs {target} (%)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def adaptation_curve(summary: pd.DataFrame, llvm_mca_mape: float, path: Path, title: str) -> Path:
    """Error against training-set size: from scratch and fine-tuned (mean ± std over seeds), llvm-mca's line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for mode, label in (("scratch", "trained from scratch"), ("finetune", "fine-tuned from the llvm-mca surrogate")):
        mean, std = 100 * summary[f"{mode}_mape"], 100 * summary[f"{mode}_std"]
        ax.plot(summary["train_size"], mean, marker="o", label=label)
        ax.fill_between(summary["train_size"], mean - std, mean + std, alpha=0.2)
    ax.axhline(100 * llvm_mca_mape, color="black", linestyle="--", label=f"llvm-mca ({100 * llvm_mca_mape:.1f}%)")
    ax.set(xscale="log", xlabel="measured training blocks", ylabel="MAPE vs measured (%)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
