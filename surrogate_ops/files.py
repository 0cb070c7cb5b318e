"""Files written whole or not at all: `written(path)` hands out a temporary path beside `path` and
renames it into place when the writing ends without error (the rename is atomic on one file
system), so a reader, a resumed run or a second process never meets half a file; a write that fails
or is interrupted leaves the old file, if any, and no temporary one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def written(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path` through (its folder made where missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
