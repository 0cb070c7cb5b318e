"""Confidence: a trained surrogate learns to say how far off it expects to be, block by block.

The error head (`models.confident`) is fit on the surrogate's own residuals against llvm-mca on
blocks its training never fit (a dataset's validation split): the network stays as it is, its
pooled features and predicted log-cycles go in, the log of the relative error comes out, fit
with an L1 loss (so the estimate is a median: half the blocks with that estimate are off by
less). A fifth of the blocks are held back from the head's weights (they pick its best epoch) to
report how well it ranks errors: the share of the surrogate's absolute error that routing its
least-trusted blocks to llvm-mca removes, against what routing by the true error (the oracle)
would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from surrogate_ops import models
from surrogate_ops.blocks.asm import BlockError
from surrogate_ops.blocks.batching import buckets, pad
from surrogate_ops.config import Device
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training import loop

FLOOR = 1e-3  # relative errors below 0.1% are all alike to the head (and llvm-mca prints 2 decimals)
SHARES = (0.05, 0.1, 0.2)  # shares of blocks routed to llvm-mca that the report gives


def routed_cut(errors: np.ndarray, estimates: np.ndarray, share: float) -> float:
    """How much of the mean absolute percentage error is gone when the `share` of blocks with the
    highest estimates is answered exactly (by llvm-mca) instead: 0.5 halves it."""
    total = errors.sum()
    if total == 0 or not len(errors):
        return 0.0
    routed = np.argsort(-estimates, kind="stable")[: int(round(share * len(errors)))]
    return float(errors[routed].sum() / total)


@dataclass(frozen=True)
class HeadReport:
    """How the fitted head ranks the surrogate's errors on blocks it did not fit on."""

    blocks: int  # held-out blocks scored
    spearman: float  # rank correlation of estimate and actual relative error
    cut: dict[float, float]  # share routed -> share of MAPE removed
    oracle: dict[float, float]  # the same routing by the actual error
    median_ratio: float  # median of actual / estimated error: near 1 when the estimate is calibrated

    def metrics(self) -> dict[str, float]:
        out = {"error_head_spearman": self.spearman, "error_head_median_ratio": self.median_ratio}
        for share in self.cut:
            out[f"error_head_cut_at_{int(share * 100)}pct"] = self.cut[share]
            out[f"oracle_cut_at_{int(share * 100)}pct"] = self.oracle[share]
        return out

    def __str__(self) -> str:
        routes = ", ".join(f"{int(s * 100)}% routed removes {self.cut[s]:.0%} of the error (oracle {self.oracle[s]:.0%})"
                           for s in self.cut)
        return (f"on {self.blocks:,} held-out blocks: Spearman {self.spearman:.3f} between estimated and actual "
                f"error; {routes}; actual/estimated median {self.median_ratio:.2f}")


def _features(model: models.Confident, encoded: list, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(cycles, head inputs) for tokenized blocks, in order, from the frozen network (on its device)."""
    on = next(model.parameters()).device
    cycles = np.empty(len(encoded), dtype=np.float64)
    features = np.empty((len(encoded), model.error[0].normalized_shape[0]), dtype=np.float32)
    with torch.inference_mode():
        for index in buckets(encoded, batch):
            c, f = model.features(torch.from_numpy(pad([encoded[i] for i in index])).to(on))
            cycles[index], features[index] = c.cpu().numpy(), f.cpu().numpy()
    return cycles, features


def fit_error_head(model_dir: ModelDir, blocks: list[str], truth: np.ndarray, epochs: int = 200,
                   hidden: int = 64, seed: int = 0, progress: bool = True,
                   device: Device = "cpu") -> tuple[models.Confident, HeadReport]:
    """A confident surrogate: `model_dir`'s network with an error head fit on its residuals
    against `truth` (llvm-mca's cycles per 100 iterations) over `blocks`, which its training
    never fit; and how well the head ranks errors on a fifth of them it was not fit on. The
    network's features and the head's fit run on `device`; the model comes back on the CPU."""
    from tqdm import tqdm

    on = loop.device(device)
    torch.manual_seed(seed)
    if model_dir.program_parameters:
        raise SurrogateOpsError("a parameter-conditioned surrogate's error depends on the setting; "
                                "fit error heads to surrogates of llvm-mca's defaults")
    model = models.Confident.wrap(models.network(model_dir.module()), hidden).eval().to(on)
    tokenizer = model_dir.tokenizer()
    encoded, kept = [], []
    for i, block in enumerate(blocks):
        try:
            ids = tokenizer.encode_block(block)
        except (BlockError, ValueError):
            continue
        if 0 < len(ids) <= model.config.max_instructions:
            encoded.append(ids)
            kept.append(i)
    if len(encoded) < 50:
        raise SurrogateOpsError(f"{len(encoded)} usable blocks: the error head needs at least 50 held-out blocks")
    truth = np.asarray(truth, dtype=np.float64)[kept]
    cycles, features = _features(model, encoded)
    actual = np.abs(cycles - truth) / truth
    target = np.log(np.maximum(actual, FLOOR)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(encoded))
    held, fit = order[: len(order) // 5], order[len(order) // 5:]
    x, y = torch.from_numpy(features).to(on), torch.from_numpy(target).to(on)
    held_on = torch.from_numpy(held).to(on)
    head = model.error.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    best, best_state = float("inf"), None
    rng = np.random.default_rng(seed + 1)
    for _ in tqdm(range(epochs), desc="error head", unit="epoch", disable=not progress):
        shuffled = torch.from_numpy(rng.permutation(fit)).to(on)
        for index in shuffled.split(512):
            loss = (model.log_error(x[index]) - y[index]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            held_loss = float((model.log_error(x[held_on]) - y[held_on]).abs().mean())
        if held_loss < best:
            best, best_state = held_loss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        estimate = np.exp(model.log_error(x[held_on]).cpu().numpy())
    model.cpu()
    errors = actual[held]
    report = HeadReport(len(held), float(stats.spearmanr(estimate, errors).statistic),
                        {s: routed_cut(errors, estimate, s) for s in SHARES},
                        {s: routed_cut(errors, errors, s) for s in SHARES},
                        float(np.median(np.maximum(errors, FLOOR) / estimate)))
    return model, report


def save(model: models.Confident, parent: ModelDir, report: HeadReport, path: Path,
         check_blocks: list[str], parent_uri: str | None = None) -> ModelDir:
    """The confident surrogate as a model directory (ONNX checked against torch), its parent's
    metadata kept, the head's report added; `parent_uri` names the parent (default: its path)."""
    from surrogate_ops.builds.export import save_model_dir

    meta = {k: v for k, v in parent.meta.items() if k not in ("arch", "config", "parameters")}
    meta.update(parent=parent_uri or str(parent), error_head=report.metrics())
    directory, _ = save_model_dir(model, parent.tokenizer(), meta, path, check_blocks)
    return directory


@dataclass(frozen=True)
class Result:
    model: ModelDir
    report: HeadReport
    registered: object | None  # versions.Registered
    run_id: str


def calibrate(model_uri: str, data: str | Path, mcpu: str | None = None, split: str = "val", epochs: int = 60,
              register: str | None = None, progress: bool = True, device: Device = "cpu") -> Result:
    """Fit `model_uri`'s error head on its residuals over `data`'s `split` (llvm-mca's labels on the
    model's CPU), in an MLflow run, on `device`; with `register`, the confident surrogate becomes a
    new version."""
    import mlflow

    from surrogate_ops import registry
    from surrogate_ops.config import work_dir
    from surrogate_ops.data import datasets
    from surrogate_ops.registry import tracking, versions
    from surrogate_ops.training.train import training_rows

    on = loop.device(device)  # a missing GPU fails before the model is resolved
    parent = registry.open(model_uri).model
    mcpu = mcpu or parent.mcpu or "haswell"
    frame = datasets.load(data)
    rows = training_rows(frame, "mca", mcpu, parent.max_instructions)
    rows = rows[rows["split"] == split] if split != "all" else rows
    if rows.empty:
        raise SurrogateOpsError(f"{data} has no {split} rows labeled by llvm-mca on {mcpu}")
    with tracking.start_run(run_name=f"confidence-{mcpu}") as run:
        mlflow.set_tags({"program": "llvm-mca", "mcpu": mcpu, "mode": "confidence", "parent_uri": model_uri})
        tracking.log_params({"data": str(Path(data).resolve()), "split": split, "blocks": len(rows), "epochs": epochs,
                             "device": str(on)})
        model, report = fit_error_head(parent, list(rows["block"]), rows[f"mca_cycles_{mcpu}"].to_numpy(),
                                       epochs=epochs, progress=progress, device=device)
        mlflow.log_metrics(report.metrics())
        directory = save(model, parent, report, work_dir() / "models" / run.info.run_id, list(rows["block"][:64]),
                         parent_uri=model_uri)
        registered = None
        if register:
            tags = {"program": "llvm-mca", "mcpu": mcpu, "arch": "confident", "parent_uri": model_uri,
                    **{k: f"{v:.4g}" for k, v in report.metrics().items()}}
            registered = versions.log_model(directory, example=list(rows["block"][:2]), name=register, tags=tags)
    return Result(directory, report, registered, run.info.run_id)


__all__ = ["HeadReport", "Result", "calibrate", "fit_error_head", "routed_cut", "save"]
