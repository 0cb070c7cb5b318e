"""Running `surrogate-ops` as a user does: the command, its CSV rows, how long one command may
take, and stand-in programs for the tools it runs."""

from __future__ import annotations

import csv
import io
import signal
import sys
import tomllib
from pathlib import Path

CLI = [sys.executable, "-m", "surrogate_ops"]

# pytest-timeout's limit for one test, fixtures included (pyproject.toml's [tool.pytest.ini_options])
TEST_TIMEOUT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
                             )["tool"]["pytest"]["ini_options"]["timeout"]
# The longest one command of a test may run: under the test's own limit, so a command that hangs is
# killed and fails the test with its own output, instead of pytest-timeout ending the test and
# leaving the command running.
COMMAND_TIMEOUT = TEST_TIMEOUT - 60


def rows(stdout: str) -> list[dict]:
    """The rows of `predict`'s CSV output: index, cycles, source, reason."""
    return list(csv.DictReader(io.StringIO(stdout)))


def interruptible() -> None:
    """preexec_fn for a child the test interrupts with SIGINT: a test run started in the background
    ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def script(folder: Path, name: str, text: str) -> str:
    """An executable shell script (a stand-in llvm-mca that hangs, crashes or passes through)."""
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)
