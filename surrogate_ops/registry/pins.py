"""A registry URI's last resolution, trusted while the local store is unchanged: how `predict` and
the service start without importing MLflow.

Resolving `models:/llvm-mca-haswell@champion` through MLflow costs seconds and 200 MB (the import
and the store's set-up) for a model that is already in the cache. `registry.open` records each
alias it resolves as a pin beside the cached versions: the version, and the stamp (modification
time and size) of the SQLite store it read. A later `resolve` returns the cached directory while the
stamp still matches; any write to the store (a new version, a promotion) changes the stamp, and the
next call goes through MLflow again. A store that does not exist yet has no versions: a bundled
name then resolves to its bundled surrogate, which is what registering it would give. Tracking
servers (http) are never pinned: their registry can move without a local trace.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from surrogate_ops.config import PRETRAINED, store_uri, work_dir
from surrogate_ops.runtime.modeldir import ModelDir, adopt_bundled_parts


def cache_root(uri: str) -> Path:
    """Where the versions of the registry at `uri` are cached (one folder per registry)."""
    return work_dir() / "cache" / "models" / hashlib.sha1(uri.encode()).hexdigest()[:10]


def _database(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _stamp(database: Path) -> list[int]:
    """What changes when SQLite writes: the file and its write-ahead log, if any."""
    stamp = []
    for path in (database, database.with_name(database.name + "-wal")):
        try:
            info = path.stat()
        except FileNotFoundError:
            stamp += [0, 0]
        else:
            stamp += [info.st_mtime_ns, info.st_size]
    return stamp


def _pin_file(uri: str, name: str, alias: str) -> Path:
    return cache_root(uri) / name / f"{alias}.pin.json"


def record(uri: str, name: str, alias: str, version: str) -> None:
    """Note that `name@alias` resolved to `version` in the store at `uri` as it is now."""
    database = _database(uri)
    if database is None or not database.is_file():
        return
    pin = _pin_file(uri, name, alias)
    tmp = pin.with_name(f".{pin.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"version": version, "stamp": _stamp(database)}))
    tmp.replace(pin)


def resolve(model: str, tracking_uri: str | None = None) -> Path | None:
    """The local model directory `model` (a directory or a models:/NAME@ALIAS URI) stands for, when
    that is known without MLflow; None when MLflow must be asked."""
    if ModelDir.holds_one(model):
        return Path(model)
    if not model.startswith("models:/") or "@" not in model:
        return None
    name, alias = model.removeprefix("models:/").split("@", 1)
    uri = store_uri(tracking_uri)
    database = _database(uri)
    if database is None:
        return None
    if not database.exists():
        bundled = PRETRAINED / name
        return bundled if ModelDir.holds_one(bundled) else None
    try:
        pin = json.loads(_pin_file(uri, name, alias).read_text())
    except (OSError, ValueError):
        return None
    folder = cache_root(uri) / name / str(pin.get("version"))
    if pin.get("stamp") != _stamp(database) or not ModelDir.holds_one(folder):
        return None
    return adopt_bundled_parts(folder)
