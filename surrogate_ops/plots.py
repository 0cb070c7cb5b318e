"""Plots people would rather look at than read: predicted against target, error by block length,
surrogates compared on the same blocks.

Cycles are drawn in the unit the CLI prints and datasets hold: cycles per 100 iterations (llvm-mca's
Total Cycles at 100 iterations, BHive's throughput).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

UNIT = "cycles per 100 iterations"


def comparison(frame: pd.DataFrame, reference: str, series: dict[str, str], path: Path, title: str) -> Path:
    """Each series (label -> column of cycles: surrogates, llvm-mca) against the `reference` column
    on the same rows: predicted against reference (log-log), and each one's signed relative error
    as a histogram, its MAPE in the legend."""
    ok = frame[frame[reference].notna() & (frame[reference] > 0)]
    fig, (scatter, errors) = plt.subplots(1, 2, figsize=(11, 4.8))
    for i, (label, column) in enumerate(series.items()):
        rows = ok[np.isfinite(ok[column])]
        error = 100 * (rows[column] - rows[reference]) / rows[reference]
        scatter.scatter(rows[reference], rows[column], s=4, alpha=0.35, color=f"C{i}", label=label)
        errors.hist(error.clip(-100, 100), bins=80, range=(-100, 100), histtype="step", linewidth=1.2,
                    color=f"C{i}", label=f"{label}: MAPE {error.abs().mean():.2f}% ({len(rows):,} blocks)")
    low, high = max(5.0, ok[reference].min()), max(5.0, ok[reference].max())
    scatter.plot([low, high], [low, high], color="black", linewidth=0.8)
    scatter.set(xscale="log", yscale="log", xlabel=f"{reference} ({UNIT})", ylabel=f"predicted ({UNIT})", title=title)
    scatter.legend(fontsize=8, markerscale=3)
    errors.axvline(0, color="black", linewidth=0.8)
    errors.set(xlabel=f"error vs {reference} (%; beyond ±100 drawn at the edge)", ylabel="blocks",
               title="relative error, same blocks")
    errors.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


SCATTER_POINTS = 100_000  # a scatter of more is one blot of ink, and costs the drawing's memory and time


def predicted_vs_target(frame: pd.DataFrame, target: str, path: Path, title: str) -> Path:
    ok = frame.loc[np.isfinite(frame["predicted"]) & frame[target].notna(), [target, "predicted"]]
    shown = ok.sample(SCATTER_POINTS, random_state=0) if len(ok) > SCATTER_POINTS else ok
    if len(shown) < len(ok):
        title = f"{title}\n({len(shown):,} of {len(ok):,} blocks, drawn at random)"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(shown[target], shown["predicted"], s=3, alpha=0.3)
    low, high = max(5.0, ok[target].min()), ok[target].max()
    ax.plot([low, high], [low, high], color="black", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel=f"{target} ({UNIT})", ylabel=f"predicted ({UNIT})", title=title)
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


def optimization(outcomes: dict, path: Path, title: str) -> Path:
    """Held-out llvm-mca error per method's setting (bars), and each search's best objective as it
    spent its budget (lines; the surrogate's descent against its step)."""
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(outcomes)
    values = [100 * outcomes[n].test_mape for n in names]
    bars.bar(names, values, color=["0.6" if n == "defaults" else "C0" if n == "surrogate" else "C1" for n in names])
    for i, v in enumerate(values):
        bars.annotate(f"{v:.2f}%", (i, v), ha="center", va="bottom", fontsize=9)
    bars.set(ylabel="llvm-mca MAPE vs measured, held-out blocks (%)", title=title, ylim=(0, max(values) * 1.15))
    for name, outcome in outcomes.items():
        if outcome.trace and name != "surrogate":
            x, y = zip(*outcome.trace, strict=True)
            lines.step(x, [100 * v for v in y], where="post", label=f"{name} (llvm-mca evaluations)")
    lines.set(xlabel="llvm-mca block evaluations spent", ylabel="best training-sample MAPE (%)",
              title="search progress")
    surrogate = outcomes.get("surrogate")
    if surrogate is not None and surrogate.trace:
        twin = lines.twiny()
        x, y = zip(*surrogate.trace, strict=True)
        twin.plot(x, [100 * v for v in y], color="C0", linestyle="--", label="surrogate descent (steps, top axis)")
        twin.set_xlabel("descent step (surrogate objective)")
        twin.legend(loc="upper right", fontsize=8)
    if lines.get_legend_handles_labels()[0]:
        lines.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table_diff(changes: pd.DataFrame, path: Path, title: str, top: int = 40) -> Path:
    """A learned per-instruction table against the stock one: for the `top` opcodes with the most
    change, each changed value as an arrow from its stock value to the learned one."""
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.28 * min(top, changes["opcode"].nunique() or 1) + 1.2)))
    if changes.empty:
        ax.text(0.5, 0.5, "no value changed", ha="center", va="center")
    else:
        weight = (changes["learned"] - changes["stock"]).abs().groupby(changes["opcode"]).sum()
        opcodes = list(weight.sort_values(ascending=False).index[:top])[::-1]
        fixed = [c for c in ("latency", "uops") if c in set(changes["column"])]
        columns = fixed + sorted(set(changes["column"]) - set(fixed))
        palette = plt.get_cmap("tab20").colors
        colors = {"latency": "black", "uops": "0.55",
                  **{c: palette[i % len(palette)] for i, c in enumerate(c for c in columns if c not in fixed)}}
        for y, opcode in enumerate(opcodes):
            rows = changes[changes["opcode"] == opcode]
            for k, row in enumerate(rows.itertuples()):
                offset = (k - (len(rows) - 1) / 2) * 0.18
                ax.annotate("", (row.learned, y + offset), (row.stock, y + offset),
                            arrowprops={"arrowstyle": "->", "color": colors[row.column]})
                ax.plot([row.stock], [y + offset], "o", ms=3, color=colors[row.column])
        ax.set_yticks(range(len(opcodes)), opcodes, fontsize=7)
        ax.set_xscale("symlog", linthresh=10)  # most values are a few cycles; dividers take up to ~100
        ticks = [t for t in (0, 1, 2, 3, 5, 10, 20, 50, 100, 200) if t <= max(changes[["stock", "learned"]].max()) * 1.5]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("value (cycles or micro-ops; linear to 10, log above): dot stock, arrow head learned")
        ax.legend(handles=[plt.Line2D([], [], color=colors[c], label=c) for c in columns], fontsize=7,
                  loc="lower right", ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def capacity(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Network sizes: MAPE against llvm-mca over the network's blocks/s, the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.scatter(table["network_blocks_per_s"], 100 * table["test_mape_vs_mca"], s=30,
               c=["C3" if p else "C0" for p in table["pareto"]])
    for row in table.itertuples():
        ax.annotate(f"{row.size} ({row.parameters:,})", (row.network_blocks_per_s, 100 * row.test_mape_vs_mca),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = table[table["pareto"]].sort_values("network_blocks_per_s")
    ax.plot(front["network_blocks_per_s"], 100 * front["test_mape_vs_mca"], color="C3", linewidth=1,
            label="Pareto front")
    ax.set(xlabel="network blocks/s (ONNX Runtime, every core)", ylabel="test MAPE vs llvm-mca (%)", title=title)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:,.0f}k"))
    ax.margins(x=0.3, y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
