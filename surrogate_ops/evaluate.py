"""Error figures of a surrogate on a dataset split: MAPE and Kendall's tau against llvm-mca and,
where the data has it, against measured throughput (BHive may-alias blocks excluded).

Training logs these figures and `surrogate-ops evaluate` prints them: both go through `evaluate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from surrogate_ops.datasets import measured_rows, scaled_parameters
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.inference import Predictor
from surrogate_ops.metrics import kendall_tau, mape


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
    sampled = bool(predictor.parameter_names) and any(c.startswith("param_") for c in rows.columns)
    scaled = scaled_parameters(rows, predictor.parameter_names) if sampled else None
    start = time.perf_counter()
    predicted = predictor.cycles(list(rows["block"]), scaled)
    elapsed = time.perf_counter() - start
    rows = rows.assign(predicted=predicted)
    ok = rows[np.isfinite(rows["predicted"])]
    metrics: dict[str, float] = {"blocks": len(ok), "skipped": len(rows) - len(ok),
                                 "blocks_per_s": len(rows) / elapsed if elapsed > 0 else float("inf")}
    if not len(ok):
        raise SurrogateOpsError("no block of the split could be predicted")
    mca = f"mca_cycles_{mcpu}"
    if mca in ok:
        labeled = ok[ok[mca].notna()]
        metrics["mape_vs_mca"] = mape(labeled["predicted"], labeled[mca])
        metrics["tau_vs_mca"] = kendall_tau(labeled["predicted"], labeled[mca])
    measured = measured_rows(ok, mcpu)
    if len(measured) > 1 and not sampled:
        metrics["measured_blocks"] = len(measured)
        metrics["mape_vs_measured"] = mape(measured["predicted"], measured["measured"])
        metrics["tau_vs_measured"] = kendall_tau(measured["predicted"], measured["measured"])
        if mca in measured and measured[mca].notna().all():
            metrics["mca_mape_vs_measured"] = mape(measured[mca], measured["measured"])
            metrics["mca_tau_vs_measured"] = kendall_tau(measured[mca], measured["measured"])
    return Evaluation(metrics, rows)
