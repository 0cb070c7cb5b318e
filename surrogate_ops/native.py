"""Compiling the native helpers (`blocks/native/`, `programs/native/`) once, into the build cache.

Each helper names its compiler and flags; `compile_once` builds it into a temporary file beside the
target and renames it into place, so that a build is whole or absent even when two processes build
at once, and says what failed (and what to install) in one SurrogateOpsError.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from surrogate_ops.config import BUILD_CACHE
from surrogate_ops.errors import SurrogateOpsError


def cached(source: Path, stem: str, suffix: str = "", salt: str = "") -> Path:
    """Where the build of `source` (and of whatever `salt` names: a compiler's library version) lives."""
    digest = hashlib.sha256(source.read_bytes() + salt.encode()).hexdigest()[:12]
    return BUILD_CACHE / f"{stem}-{digest}{suffix}"


def compile_once(source: Path, target: Path, compilers: tuple[str, ...], flags: list[str],
                 force: bool = False, package: str = "g++") -> Path:
    """`target`, compiled from `source` by the first of `compilers` on PATH with `flags` (the output
    file is added), unless it is already there (or with `force`)."""
    if target.is_file() and not force:
        return target
    compiler = next((found for name in compilers if (found := shutil.which(name))), None)
    if compiler is None:
        raise SurrogateOpsError(f"{source.name} is built with {' or '.join(compilers)}: apt-get install {package}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=target.suffix, delete=False) as out:
        partial = Path(out.name)
    proc = subprocess.run([compiler, str(source), *flags, "-o", str(partial)], capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SurrogateOpsError(f"building {source.name} failed:\n{proc.stderr[-2000:]}")
    partial.chmod(0o755)
    os.replace(partial, target)  # whole or not at all: another process may be building it too
    return target
