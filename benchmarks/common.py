"""Helpers shared by the benchmarks: locating BHive data, timing with repeats."""

from __future__ import annotations

import csv
import http.client
import importlib
import json
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from surrogate_ops.blocks.hexcode import disassemble

DEFAULT_BHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bhive"


def _moved(name: str, *modules: str):
    """`name` from the first of `modules` the imported package has: a `--baseline` revision's package
    may predate the stage folders (issue 33 moved `inference` to `runtime/`, `datasets` to `data/`)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"{name}: in none of {', '.join(modules)}")


def read_hex_list(path: Path) -> set[str]:
    return _moved("read_hex_list", "surrogate_ops.data.datasets", "surrogate_ops.datasets")(path)


def Predictor(*args, **kwargs):  # noqa: N802  the class of whichever package is imported
    return _moved("Predictor", "surrogate_ops.runtime.inference", "surrogate_ops.inference")(*args, **kwargs)


def bhive_hexes(path: Path | list[Path], limit: int, skip_may_alias: bool = True) -> list[str]:
    """The first `limit` distinct hex blocks of one or more BHive CSVs, read in turn (may-alias
    blocks, listed beside the first, left out)."""
    paths = [path] if isinstance(path, Path) else path
    alias = set()
    if skip_may_alias and (paths[0].parent / "may-alias.csv").is_file():
        alias = read_hex_list(paths[0].parent / "may-alias.csv")
    seen: dict[str, None] = {}
    for one in paths:
        with open(one, newline="") as handle:
            for row in csv.DictReader(handle):
                if len(seen) >= limit:
                    return list(seen)
                if row["hex"] not in alias:
                    seen.setdefault(row["hex"], None)
    return list(seen)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` calls of `fn`, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def passes(model: str, engine: str, source: str, hexes: list[str], texts: list[str], batch_size: int | None = None,
           ) -> tuple[float, float, np.ndarray]:
    """Seconds of a first and a second pass over the blocks, from `source` (text, or hex
    disassembled on the way), and the cycles; run it in a fresh process (`fresh`) for a cold first pass."""
    predictor = Predictor(model, engine=engine, batch_size=batch_size)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        cycles = predictor.cycles(texts if source == "text" else [b or "" for b in disassemble(hexes).blocks])
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1], cycles


def fresh(fn, *args):
    """`fn(*args)` in a new interpreter: nothing cached from earlier runs."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


_local = threading.local()


def post_json(url: str, path: str, body: dict, timeout: float = 300) -> tuple[int, bytes]:
    """POST a JSON body on this thread's kept-alive connection, as a real client library would:
    (status, raw answer)."""
    data = json.dumps(body)
    for attempt in (0, 1):
        if getattr(_local, "url", None) != url or attempt:  # new thread, or the server closed an idle one
            _local.url, _local.conn = url, http.client.HTTPConnection(url.split("//")[1], timeout=timeout)
        try:
            _local.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            response = _local.conn.getresponse()
            return response.status, response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            if attempt:
                raise
    raise AssertionError("unreachable")
