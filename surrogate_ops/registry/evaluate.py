"""Error figures of a surrogate on a dataset split: MAPE and Kendall's tau against llvm-mca and,
where the data has it, against measured throughput (BHive may-alias blocks excluded).

Training logs these figures and `surrogate-ops evaluate` prints them: both go through `evaluate`.
`evaluation_run` is the `evaluate` command: the figures it prints also go on its own MLflow run, as
metrics, with the dataset's digest and a plot. `compare` scores several surrogates on the same
blocks (those every one of them answered itself), as `promotion` needs. Data is a dataset from
`collect` or a BHive-format CSV, read as `finetune` reads it (`load_data`). Every plot is in cycles
per 100 iterations, the unit the CLI prints.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from surrogate_ops import plots, registry
from surrogate_ops.config import EngineName
from surrogate_ops.data import datasets
from surrogate_ops.data.datasets import measured_rows, scaled_parameters
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.metrics import kendall_tau, mape
from surrogate_ops.registry import tracking
from surrogate_ops.runtime.inference import Predictor


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    frame: pd.DataFrame  # the evaluated rows, with a `predicted` column

    def lines(self) -> list[str]:
        m = self.metrics
        out = [f"blocks evaluated: {int(m['blocks']):,} ({int(m['skipped']):,} skipped: unreadable or over the model's length limit)"]
        if "mape_vs_mca" in m:
            out.append(f"vs llvm-mca:  MAPE {100 * m['mape_vs_mca']:.2f}%   Kendall's tau {m['tau_vs_mca']:.4f}")
        if "mape_vs_measured" in m:
            out.append(f"vs measured:  MAPE {100 * m['mape_vs_measured']:.2f}%   Kendall's tau {m['tau_vs_measured']:.4f}"
                       f"   ({int(m['measured_blocks']):,} blocks; llvm-mca itself: MAPE "
                       f"{100 * m['mca_mape_vs_measured']:.2f}%, tau {m['mca_tau_vs_measured']:.4f})")
        out.append(f"speed: {m['blocks_per_s']:,.0f} blocks/s end to end")
        return out


def select(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    if split == "all":
        return frame
    if split not in set(frame["split"]):
        raise SurrogateOpsError(f"the dataset has no {split!r} split")
    return frame[frame["split"] == split]


def evaluate(predictor: Predictor, frame: pd.DataFrame, mcpu: str, split: str = "test") -> Evaluation:
    """Predict every block of the split and compare with llvm-mca's and measured cycles. A
    conditioned surrogate on data labeled under sampled settings predicts each row's own setting
    (no measured figures then: the labels are not llvm-mca's defaults)."""
    rows = select(frame, split)
    predicted, speed = _predict(predictor, rows)
    rows = rows.assign(predicted=predicted)
    ok = rows[np.isfinite(rows["predicted"])]
    metrics: dict[str, float] = {"blocks": len(ok), "skipped": len(rows) - len(ok),
                                 "blocks_per_s": speed}
    if not len(ok):
        raise SurrogateOpsError("no block of the split could be predicted")
    mca = f"mca_cycles_{mcpu}"
    if mca in ok:
        labeled = ok[ok[mca].notna()]
        metrics["mape_vs_mca"] = mape(labeled["predicted"], labeled[mca])
        metrics["tau_vs_mca"] = kendall_tau(labeled["predicted"], labeled[mca])
    measured = measured_rows(ok, mcpu)
    if len(measured) > 1 and not _sampled(predictor, rows):
        metrics["measured_blocks"] = len(measured)
        metrics["mape_vs_measured"] = mape(measured["predicted"], measured["measured"])
        metrics["tau_vs_measured"] = kendall_tau(measured["predicted"], measured["measured"])
        if mca in measured and measured[mca].notna().all():
            metrics["mca_mape_vs_measured"] = mape(measured[mca], measured["measured"])
            metrics["mca_tau_vs_measured"] = kendall_tau(measured[mca], measured["measured"])
    return Evaluation(metrics, rows)


def _sampled(predictor: Predictor, rows: pd.DataFrame) -> bool:
    """Whether a conditioned surrogate reads each row's own setting (data labeled under sampled settings)."""
    return bool(predictor.parameter_names) and any(c.startswith("param_") for c in rows.columns)


def _cycles(predictor: Predictor, rows: pd.DataFrame, scaled: np.ndarray | None, chunk: int = 65536) -> np.ndarray:
    """The predictor's cycles for every row, `chunk` blocks a call: a split of a million blocks is
    encoded a chunk at a time, not held whole as token arrays."""
    blocks = rows["block"]
    return np.concatenate([np.asarray(predictor.cycles(list(blocks.iloc[i: i + chunk]),
                                                       None if scaled is None else scaled[i: i + chunk]), dtype=float)
                           for i in range(0, len(rows), chunk)]) if len(rows) else np.zeros(0)


def _predict(predictor: Predictor, rows: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Cycles per row (NaN where the surrogate did not answer) and blocks per second."""
    scaled = scaled_parameters(rows, predictor.parameter_names) if _sampled(predictor, rows) else None
    start = time.perf_counter()
    predicted = _cycles(predictor, rows, scaled)
    elapsed = time.perf_counter() - start
    return predicted, len(rows) / elapsed if elapsed > 0 else float("inf")


def load_data(data: str | Path, mcpu: str, progress: bool = True) -> pd.DataFrame:
    """A dataset from `collect`, or a BHive-format CSV (hex,throughput) labeled by llvm-mca on `mcpu`
    once and cached, as `finetune` reads it (`datasets.measured_dataset`; splits by block hash)."""
    path = Path(data)
    if path.suffix == ".csv":
        path = datasets.measured_dataset(path, mcpu, progress)
    return datasets.load(path)


def dataset_input(frame: pd.DataFrame, data: str | Path) -> mlflow.data.Dataset:
    """The data as an MLflow dataset: its digest is the one training tags its versions with."""
    return mlflow.data.from_pandas(frame.drop(columns=[c for c in ("hex",) if c in frame]),
                                   source=str(Path(data).resolve()), name=Path(data).name)


@dataclass(frozen=True)
class Comparison:
    """Surrogates scored on the same blocks of a split: the rows every one answered itself and that
    have the reference figure. `figures[role]`: mape, tau (on those blocks), answered_share (of the
    split's blocks) and blocks_per_s."""

    target: str  # "mca" or "measured": the reference is llvm-mca's cycles or measured throughput
    reference: str  # the reference column
    split_blocks: int
    figures: dict[str, dict[str, float]]
    frame: pd.DataFrame  # the compared rows: the reference column and `predicted_<role>`

    @property
    def blocks(self) -> int:
        return len(self.frame)

    def metrics(self) -> dict[str, float]:
        """As MLflow metrics: <role>_mape_vs_<target>, <role>_tau_vs_<target>, <role>_answered_share,
        <role>_blocks_per_s, compared_blocks and split_blocks."""
        out = {"compared_blocks": self.blocks, "split_blocks": self.split_blocks}
        for role, f in self.figures.items():
            out.update({f"{role}_mape_vs_{self.target}": f["mape"], f"{role}_tau_vs_{self.target}": f["tau"]})
            out.update({f"{role}_{k}": f[k] for k in ("answered_share", "blocks_per_s") if k in f})
        return out

    def plot(self, path: Path, title: str, labels: dict[str, str]) -> Path:
        """Each surrogate (and llvm-mca, against measured figures) against the reference."""
        series = {labels.get(role, role): f"predicted_{role}" for role in self.figures}
        return plots.comparison(self.frame, self.reference, series, path, title)


def compare(predictors: dict[str, Predictor], frame: pd.DataFrame, mcpu: str, target: str = "mca",
            split: str = "test") -> Comparison:
    """Score each surrogate (by role, e.g. champion and challenger) on the same blocks of `split`:
    the rows every one answered, against llvm-mca's cycles on `mcpu` (target "mca") or measured
    throughput on `mcpu` (target "measured", may-alias blocks left out; llvm-mca's own figure on the
    same blocks is added as the role "llvm-mca" when the data has it)."""
    rows = select(frame, split)
    reference = f"mca_cycles_{mcpu}" if target == "mca" else "measured"
    if target == "measured":
        rows = measured_rows(rows, mcpu)
    elif reference not in rows:
        raise SurrogateOpsError(f"the data has no llvm-mca figures for -mcpu={mcpu} (no {reference} column)")
    rows = rows[rows[reference].notna() & (rows[reference] > 0)]
    if rows.empty:
        raise SurrogateOpsError(f"the {split} split has no {target} figures for -mcpu={mcpu} to compare on")
    answered, speed = {}, {}
    for role, predictor in predictors.items():
        predicted, speed[role] = _predict(predictor, rows)
        rows = rows.assign(**{f"predicted_{role}": predicted})
        answered[role] = np.isfinite(predicted)
    mca = f"mca_cycles_{mcpu}"
    if target == "measured" and mca in rows and rows[mca].notna().all():
        rows = rows.assign(**{"predicted_llvm-mca": rows[mca]})
    both = np.logical_and.reduce(list(answered.values()))
    compared = rows[both]
    if compared.empty:
        raise SurrogateOpsError(f"no block of the {split} split was answered by every surrogate")
    figures = {}
    for role in [*predictors, *(["llvm-mca"] if "predicted_llvm-mca" in rows else [])]:
        predicted, truth = compared[f"predicted_{role}"], compared[reference]
        figures[role] = {"mape": mape(predicted, truth), "tau": kendall_tau(predicted, truth)}
        if role in predictors:
            figures[role].update(answered_share=float(answered[role].mean()), blocks_per_s=speed[role])
    keep = [reference, "block", *(f"predicted_{role}" for role in figures)]
    return Comparison(target, reference, len(rows), figures, compared[keep])


@dataclass(frozen=True)
class Evaluated:
    """What `evaluation_run` did: the figures, and the MLflow run they went to."""

    uri: str
    evaluation: Evaluation
    run_id: str


def evaluation_run(model_uri: str | Path, data: str | Path, split: str = "test", mcpu: str | None = None,
                   engine: str = EngineName.ONNXRUNTIME, progress: bool = True) -> Evaluated:
    """Evaluate a registered surrogate (or a model directory) on `data`'s split in an MLflow run of
    its own (the project's run under `mlflow run`): the printed figures as metrics (answered_share
    among them: the share of the split's blocks the surrogate answered itself), the model, data,
    split and dataset digest as parameters, the data as the run's evaluation input, and
    plots/predicted_vs_<mca|measured>.png."""
    with tracking.start_run(run_name=f"evaluate {model_uri}") as run:
        # resolving inside the run: a bundled name registered now is a child of this run
        opened = registry.open(model_uri)
        predictor = Predictor(opened.model, engine=engine)
        mcpu = mcpu or predictor.meta["mcpu"]
        frame = load_data(data, mcpu, progress)
        result = evaluate(predictor, frame, mcpu, split)
        dataset = dataset_input(frame, data)
        mlflow.log_input(dataset, context="evaluation")
        # names apart from the MLproject entry point's parameters, which `mlflow run` logs on this run as given
        params = {"model_uri": str(model_uri), "data_path": str(Path(data).resolve()), "split": split,
                  "labels_mcpu": mcpu, "engine_used": predictor.engine_name, "dataset_digest": dataset.digest}
        if opened.version:
            params.update(model_name=opened.name, model_version=opened.version)
        tracking.log_params(params)
        mlflow.set_tags({"surrogate_ops.step": "evaluate", "dataset_digest": dataset.digest})
        m = result.metrics
        mlflow.log_metrics({**m, "answered_share": m["blocks"] / (m["blocks"] + m["skipped"])})
        with tempfile.TemporaryDirectory() as tmp:
            for target in [c for c in (f"mca_cycles_{mcpu}", "measured") if c in result.frame]:
                rows = result.frame[np.isfinite(result.frame["predicted"]) & result.frame[target].notna()
                                    & (result.frame[target] > 0)]
                if target == "measured":
                    rows = measured_rows(rows, mcpu)
                if len(rows) > 1:
                    name = "mca" if target.startswith("mca") else "measured"
                    plots.comparison(rows, target, {str(model_uri): "predicted"},
                                     Path(tmp) / f"predicted_vs_{name}.png",
                                     f"{model_uri} on the {split} split of {Path(data).name}")
            mlflow.log_artifacts(tmp, artifact_path="plots")
    return Evaluated(str(model_uri), result, run.info.run_id)
