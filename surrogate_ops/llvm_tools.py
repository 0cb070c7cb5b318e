"""Locating the LLVM command-line tools (llvm-mca, llvm-mc, llvm-objdump).

Each tool is looked up in this order: an explicit path, its environment variable
(`SURROGATE_OPS_LLVM_MCA`, `SURROGATE_OPS_LLVM_MC`, `SURROGATE_OPS_LLVM_OBJDUMP`), then PATH,
then the versioned names Debian installs (`llvm-mca-19`, ...). A missing tool is a
`SurrogateOpsError` that says how to install it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from surrogate_ops.errors import SurrogateOpsError

INSTALL_HINT = "install LLVM 14 or newer (Debian/Ubuntu: `apt-get install -y llvm`)"
_VERSIONED = tuple(range(22, 13, -1))  # llvm-mca-21 ... llvm-mca-14


def find_tool(name: str, explicit: str | None = None) -> str:
    """Absolute path of LLVM tool `name` (e.g. "llvm-mca"), or a SurrogateOpsError saying how to get it."""
    env_var = "SURROGATE_OPS_" + name.upper().replace("-", "_")
    for candidate, origin in ((explicit, "the given path"), (os.environ.get(env_var), env_var)):
        if candidate:
            path = shutil.which(candidate)
            if path is None:
                raise SurrogateOpsError(f"{name} not found at {candidate!r} ({origin}); {INSTALL_HINT}")
            return path
    for candidate in (name, *(f"{name}-{v}" for v in _VERSIONED)):
        path = shutil.which(candidate)
        if path:
            return path
    raise SurrogateOpsError(
        f"{name} not found on PATH; {INSTALL_HINT}, or point {env_var} at an existing build"
    )


@functools.cache
def tool_version(path: str) -> str:
    """The LLVM version string of a tool, e.g. "14.0.6"."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as exc:
        raise SurrogateOpsError(f"cannot run {path}: {exc}") from exc
    match = re.search(r"LLVM version (\d+\.\d+\.\d+)", out)
    if not match:
        raise SurrogateOpsError(f"{path} does not look like an LLVM tool (no version in --version)")
    return match.group(1)


@functools.cache
def tool_options(path: str) -> frozenset[str]:
    """The long options a tool accepts (from --help-hidden), to detect version-dependent knobs."""
    out = subprocess.run([path, "--help-hidden"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(re.findall(r"^\s+--?([a-z][\w-]*)", out, flags=re.MULTILINE))
