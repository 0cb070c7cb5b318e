"""Surrogate adaptation: a surrogate of llvm-mca fine-tuned on measured throughputs.

`finetune` starts from a registered surrogate (weights and vocabulary; new tokens get fresh rows,
learned ones are kept), trains on a measured target with the training stage's loop (MAPE loss,
early stopping on the validation split), links the run to its parent version, and registers the
result as a challenger of a model named for the downstream task. With `members` > 1 it fine-tunes
several times with different seeds and registers the members combined (`training.combine`: an
ensemble, or a soup of their weights).

`study` is the seed paper's adaptation experiment: for each training-set size and seed, a
network trained from scratch and one fine-tuned from the surrogate get the same budget (the same
number of optimizer steps, batch size and validation subset), and both are scored on the same
held-out test blocks (may-alias excluded) against measured throughput, with llvm-mca's own error on
those blocks as the reference line. The table and the plot go to MLflow and to files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from surrogate_ops import presets, registry
from surrogate_ops.config import Device
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import tracking, versions
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training import combine, loop
from surrogate_ops.training.train import TrainConfig, TrainResult, train, training_rows

FINETUNE_LR = 5e-4  # a quarter of training's default: move the learned weights, don't wash them out


@dataclass(frozen=True)
class Parent:
    """The surrogate adaptation starts from, and the dataset it adapts to."""

    name: str
    version: str
    model: ModelDir
    mcpu: str
    data: Path

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def tags(self) -> dict[str, str]:
        """What a run (and version) trained from the parent records of it (asks the registry for its run)."""
        return {"parent_model": self.name, "parent_version": self.version,
                "parent_run_id": versions.run_of(self.name, self.version), "parent_uri": self.uri}


def parent(parent_uri: str, data: str | Path, mcpu: str | None = None, progress: bool = True) -> Parent:
    """The registered parent of `parent_uri` and `data` as a labeled dataset (a BHive-format CSV is
    collected once, see `datasets.measured_dataset`), on the parent's mcpu unless named."""
    opened = registry.open(parent_uri, registered=True)
    mcpu = mcpu or opened.model.mcpu
    return Parent(opened.name, opened.version, opened.model, mcpu, datasets.measured_dataset(data, mcpu, progress))


def default_name(parent: str, data: Path, target: str) -> str:
    """llvm-mca-<cpu>-measured for a bundled CPU's surrogate fine-tuned on that CPU's BHive file (hsw.csv
    for haswell: the name `predict --target measured` finds); else the parent, the data's stem, the target."""
    stem = data.stem.split("-")[0]
    cpus = {f"llvm-mca-{cpu}": row["bhive"] for cpu, row in presets.load("microarchitectures").items()
            if not cpu.startswith("_")}
    return f"{parent}-{target}" if cpus.get(parent) == stem else f"{parent}-{stem}-{target}"


def finetune(parent_uri: str, data: str | Path, target: str = "measured", register: str | None = None,
             mcpu: str | None = None, epochs: int = 30, lr: float = FINETUNE_LR, train_limit: int | None = None,
             seed: int = 0, max_minutes: float | None = None, progress: bool = True,
             device: Device = "cpu", patience: int = 4, members: int = 1, how: str = "ensemble") -> TrainResult:
    """Fine-tune the registered surrogate `parent_uri` on `data`'s `target` (on `device`), stopping after
    `patience` epochs without a better validation MAPE; register as `register`. With `members` K > 1,
    fine-tune K times (seeds seed .. seed+K-1, each run nested in one parent run) and register the
    members combined (`how`: ensemble or soup, `training.combine`) instead."""
    loop.device(device)  # a missing GPU fails before the parent is resolved and the data labeled
    if how not in combine.HOWS:
        raise SurrogateOpsError(f"unknown way to combine {how!r}: use {' or '.join(combine.HOWS)}")
    start = parent(parent_uri, data, mcpu, progress)
    if start.model.arch == "ensemble":
        raise SurrogateOpsError(f"{parent_uri} is an ensemble: fine-tune the surrogate its members came from, "
                                "with --members")
    config = TrainConfig(data=str(start.data), **start.model.shape(), target=target, mcpu=start.mcpu, epochs=epochs,
                         lr=lr, seed=seed, max_minutes=max_minutes, train_limit=train_limit, device=device,
                         patience=patience)
    tags = {**start.tags(), "mode": "finetune"}
    if members == 1:
        return train(config, register=register, progress=progress, init_from=start.model, run_tags=tags,
                     version_tags=tags)
    with tracking.start_run(run_name=f"finetune-{members}-{how}-{start.mcpu}", nested=mlflow.active_run() is not None):
        trained = [train(dataclasses.replace(config, seed=seed + i), progress=progress, init_from=start.model,
                         run_tags={**tags, "member": str(i)}, log_model=False) for i in range(members)]
        return combine.combine([str(t.model) for t in trained], start.data, how=how, register=register,
                               mcpu=start.mcpu, target=target, tags=tags)


@dataclass(frozen=True)
class Sweep:
    sizes: list[int]
    seeds: list[int]
    steps: int = 1500  # optimizer steps per run, both methods
    batch_size: int = 64
    max_epochs: int = 100
    val_limit: int = 1000

    def epochs(self, size: int) -> int:
        per_epoch = math.ceil(size / self.batch_size)
        return max(3, min(self.max_epochs, math.ceil(self.steps / per_epoch)))


def log_sizes(smallest: int, largest: int, count: int) -> list[int]:
    """`count` log-spaced training-set sizes from `smallest` to `largest` (all the data)."""
    values = np.unique(np.round(np.geomspace(smallest, largest, count)).astype(int))
    return [int(v) for v in values]


def study(parent_uri: str, data: str | Path, out: Path, sizes: list[int] | None = None,
          seeds: list[int] = (0, 1, 2), steps: int = 1500, val_limit: int = 1000, points: int = 6,
          mcpu: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Scratch vs fine-tuned vs llvm-mca on measured throughput, over training-set sizes and seeds."""
    start = parent(parent_uri, data, mcpu, progress)
    frame = datasets.load(start.data)
    available = int((training_rows(frame, "measured", start.mcpu, start.model.max_instructions)["split"] == "train").sum())
    if available < 2:
        raise SurrogateOpsError(f"{start.data} has no measured {start.mcpu} training rows")
    sizes = [s for s in (sizes or log_sizes(min(100, available), available, points)) if s <= available] or [available]
    sweep = Sweep(sizes=sizes, seeds=list(seeds), steps=steps, val_limit=val_limit)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(run_name=f"adaptation-{Path(data).stem}-{start.mcpu}"):
        mlflow.set_tags({"study": "adaptation", "parent_uri": start.uri, "mcpu": start.mcpu})
        tracking.log_params({"data": str(Path(data).resolve()), "sizes": sizes, "seeds": sweep.seeds,
                           "steps": sweep.steps, "batch_size": sweep.batch_size, "val_limit": sweep.val_limit,
                           "finetune_lr": FINETUNE_LR})
        table, reference = _sweep(start, sweep, progress)
        summary = summarize(table, reference)
        _report(table, summary, reference, start.mcpu, Path(data).name, out)
    return summary


def _sweep(start: Parent, sweep: Sweep, progress: bool) -> tuple[pd.DataFrame, dict]:
    """Both methods at every size and seed: the runs' table and llvm-mca's error on their test blocks."""
    rows, references = [], []
    shape = start.model.shape()  # both methods train the parent's network: fresh, or from its weights
    for size in sweep.sizes:
        for seed in sweep.seeds:
            common = dict(data=str(start.data), **shape, target="measured", mcpu=start.mcpu,
                          epochs=sweep.epochs(size), batch_size=sweep.batch_size, seed=seed, train_limit=size,
                          val_limit=sweep.val_limit, patience=max(4, sweep.epochs(size) // 5))
            scratch = train(TrainConfig(**common), progress=False, log_model=False,
                            run_tags={"mode": "scratch", "train_size": str(size)})
            tuned = train(TrainConfig(lr=FINETUNE_LR, **common), progress=False, log_model=False,
                          init_from=start.model, run_tags={"mode": "finetune", "train_size": str(size)})
            for mode, result in (("scratch", scratch), ("finetune", tuned)):
                references.append(_llvm_mca_reference(result.metrics))
                rows.append({"train_size": size, "seed": seed, "mode": mode, "epochs": result.epochs_run,
                             "mape_vs_measured": result.metrics["test_mape_vs_measured"],
                             "tau_vs_measured": result.metrics["test_tau_vs_measured"],
                             "seconds": result.seconds, "run_id": result.run_id})
            if progress:
                print(f"size {size:>6} seed {seed}: scratch {100 * rows[-2]['mape_vs_measured']:.2f}%  "
                      f"fine-tuned {100 * rows[-1]['mape_vs_measured']:.2f}%  "
                      f"(llvm-mca {100 * references[-1]['mape']:.2f}%)", flush=True)
    if any(r != references[0] for r in references):  # every run was scored on the very same blocks
        raise SurrogateOpsError(f"the runs were scored on different test blocks: {references}")
    return pd.DataFrame(rows), references[0]


def _report(table: pd.DataFrame, summary: pd.DataFrame, reference: dict, mcpu: str, data: str, out: Path) -> None:
    """The study's table, summary, markdown and plot, written to `out` and logged to the run."""
    from surrogate_ops import plots

    tracking.log_params({"test_blocks": reference["blocks"]})
    mlflow.log_metrics({"llvm_mca_mape_vs_measured": reference["mape"], "llvm_mca_tau_vs_measured": reference["tau"]})
    table.to_csv(out / "adaptation_runs.csv", index=False)
    summary.to_csv(out / "adaptation.csv", index=False)
    (out / "adaptation.md").write_text(_markdown(summary, reference, mcpu, data))
    plots.adaptation_curve(summary, reference["mape"], out / "adaptation.png",
                           f"adaptation on {data} ({mcpu}): error vs training-set size")
    for item in ("adaptation_runs.csv", "adaptation.csv", "adaptation.md", "adaptation.png"):
        mlflow.log_artifact(str(out / item), artifact_path="adaptation")
    best = summary.iloc[-1]
    mlflow.log_metrics({"finetune_mape_at_largest": best["finetune_mape"], "scratch_mape_at_largest": best["scratch_mape"]})


def _llvm_mca_reference(metrics: dict) -> dict:
    """llvm-mca's own error on exactly the test blocks a run was scored on (evaluate computes it there)."""
    if "test_mca_mape_vs_measured" not in metrics:
        raise SurrogateOpsError("the test split has measured blocks without llvm-mca labels; collect the data again")
    return {"mape": metrics["test_mca_mape_vs_measured"], "tau": metrics["test_mca_tau_vs_measured"],
            "blocks": int(metrics["test_measured_blocks"])}


def summarize(table: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """Mean and spread over seeds per size and method, and the fine-tuned error relative to llvm-mca's."""
    stats = table.groupby(["train_size", "mode"])["mape_vs_measured"].agg(["mean", "std", "count"]).unstack("mode")
    summary = pd.DataFrame({
        "train_size": stats.index,
        "scratch_mape": stats[("mean", "scratch")].to_numpy(), "scratch_std": stats[("std", "scratch")].fillna(0).to_numpy(),
        "finetune_mape": stats[("mean", "finetune")].to_numpy(),
        "finetune_std": stats[("std", "finetune")].fillna(0).to_numpy(), "seeds": stats[("count", "finetune")].to_numpy()})
    summary["llvm_mca_mape"] = reference["mape"]
    summary["finetune_vs_llvm_mca"] = summary["finetune_mape"] / reference["mape"] - 1
    summary["finetune_beats_scratch"] = summary["finetune_mape"] < summary["scratch_mape"]
    return summary


def _markdown(summary: pd.DataFrame, reference: dict, mcpu: str, data: str) -> str:
    lines = [f"# Adaptation on {data} ({mcpu}), vs measured, {reference['blocks']} test blocks (may-alias excluded)",
             "", f"llvm-mca: {100 * reference['mape']:.2f}% MAPE, tau {reference['tau']:.3f}", "",
             "| training blocks | from scratch | fine-tuned | fine-tuned vs llvm-mca | seeds |", "|---|---|---|---|---|"]
    for row in summary.itertuples():
        lines.append(f"| {row.train_size:,} | {100 * row.scratch_mape:.2f}% ± {100 * row.scratch_std:.2f} | "
                     f"{100 * row.finetune_mape:.2f}% ± {100 * row.finetune_std:.2f} | "
                     f"{100 * row.finetune_vs_llvm_mca:+.1f}% | {row.seeds} |")
    return "\n".join(lines) + "\n"

