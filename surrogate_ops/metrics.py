"""The error figures every stage reports: mean absolute percentage error and Kendall's tau."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mape(predicted: np.ndarray, target: np.ndarray) -> float:
    """mean(|predicted - target| / target), as a fraction (0.25 is 25%)."""
    predicted, target = np.asarray(predicted, dtype=float), np.asarray(target, dtype=float)
    return float(np.mean(np.abs(predicted - target) / target))


def kendall_tau(predicted: np.ndarray, target: np.ndarray) -> float:
    """Rank agreement (tau-b) between predictions and targets."""
    return float(stats.kendalltau(predicted, target).statistic)
