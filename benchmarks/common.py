"""Helpers shared by the benchmarks: locating BHive data, timing with repeats."""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from surrogate_ops.datasets import read_hex_list

DEFAULT_BHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bhive"


def bhive_hexes(path: Path, limit: int, skip_may_alias: bool = True) -> list[str]:
    """The first `limit` distinct hex blocks of a BHive CSV (may-alias blocks left out)."""
    alias = set()
    if skip_may_alias and (path.parent / "may-alias.csv").is_file():
        alias = read_hex_list(path.parent / "may-alias.csv")
    seen: dict[str, None] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["hex"] not in alias:
                seen.setdefault(row["hex"], None)
            if len(seen) >= limit:
                break
    return list(seen)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` calls of `fn`, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
