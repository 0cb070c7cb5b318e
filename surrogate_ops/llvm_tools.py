"""Locating the LLVM command-line tools (llvm-mca, llvm-mc, llvm-objdump).

Each tool is looked up in this order: an explicit path, its environment variable
(`SURROGATE_OPS_LLVM_MCA`, `SURROGATE_OPS_LLVM_MC`, `SURROGATE_OPS_LLVM_OBJDUMP`, read by `config`), then PATH,
then the versioned names Debian installs (`llvm-mca-19`, ...). A missing tool is a
`SurrogateOpsError` that says how to install it.

Every call of a tool goes through `run_tool`: in a process group of its own, under a timeout, the
whole group killed when it runs past it (a wrapper script's children too). A tool also dies with the
process that started it (the kernel's parent-death signal, set by util-linux's `setpriv`), and
carries that process's id in its environment (`SURROGATE_OPS_TOOL_PARENT`), so that whoever takes
over from a process killed outright can end what it left running (`end_orphans`). What a tool says about
itself (version, options, CPUs) is asked once through `remembered`: an answer is kept for good, a
failure only for a while (`SURROGATE_OPS_MCA_RETRY` seconds), so a tool fixed or replaced while a
service runs is picked up, and a broken one is not asked again on every request.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from surrogate_ops.config import TOOL_PARENT, settings
from surrogate_ops.errors import SurrogateOpsError

T = TypeVar("T")


class ToolTimeout(SurrogateOpsError):
    """A tool ran past its timeout (and was killed, with its process group)."""


def run_tool(command: Sequence[str], stdin: str = "", timeout: float | None = None,
             nice: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a tool with `stdin` as input, in its own process group; past `timeout` seconds (default
    `Settings.mca_timeout`) the whole group is killed and ToolTimeout raised. `nice` lowers its CPU
    priority (the service keeps its own threads ahead of batch simulations). OSError when it cannot start."""
    timeout = settings().mca_timeout if timeout is None else timeout
    if _SETPRIV and shutil.which(command[0]) is None:  # as Popen would say it, not as setpriv's exit status
        raise FileNotFoundError(2, "No such file or directory", command[0])
    env = {**(os.environ if env is None else env), TOOL_PARENT: str(os.getpid())}
    proc = subprocess.Popen([*_DIE_WITH_PARENT, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
        except OSError:  # already gone, or not permitted: it runs at our priority
            pass
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ToolTimeout(f"{os.path.basename(command[0])} timed out after {timeout:g} s") from None
    except BaseException:  # interrupted: no simulation outlives its caller
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(list(command), proc.returncode, out, err)


# setpriv (util-linux, on every Debian) runs the tool with the parent-death signal set: SIGKILL when the
# thread that started it dies, as it does when its process is killed outright. Not a preexec_fn, which
# is not safe in a process with threads (the service is one).
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()


def end_orphans(parent: int) -> int:
    """Kill the process groups of the tools a process `parent`, now gone, started and left running
    (found by the id `run_tool` put in their environment; a wrapper's children too); how many."""
    marker = f"{TOOL_PARENT}={parent}".encode() + b"\0"
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker in environ.read() + b"\0":
                    groups.add(os.getpgid(int(entry)))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    return len(groups)


def run_checked(command: Sequence[str], what: str, hint: str, timeout: float,
                env: dict[str, str] | None = None) -> str:
    """`run_tool` for a build step (podman, mmdebstrap, pip, QEMU): its output, or a SurrogateOpsError
    that names the step, says how to install a missing tool (`hint`), and quotes the end of its output."""
    try:
        proc = run_tool(command, timeout=timeout, env=env)
    except FileNotFoundError:
        raise SurrogateOpsError(f"{what}: {command[0]} is not installed; {hint}") from None
    except ToolTimeout:
        raise SurrogateOpsError(f"{what}: no answer in {timeout:.0f} s") from None
    if proc.returncode:
        raise SurrogateOpsError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()  # type: ignore[union-attr]
        except OSError:
            pass


def remembered(probe: Callable[..., T]) -> Callable[..., T]:
    """`probe(*key, timeout=)` asked once per key: its answer is kept for good; its failure (a
    SurrogateOpsError or OSError) is raised again, without running, for `retry` seconds (default
    `Settings.mca_retry`), then the probe runs again. Callers of one key at the same time wait on one run."""
    answers: dict[tuple, T] = {}
    failures: dict[tuple, tuple[float, str]] = {}  # key -> (monotonic time to try again, message)
    locks: dict[tuple, threading.Lock] = {}
    guard = threading.Lock()

    @functools.wraps(probe)
    def ask(*key, timeout: float | None = None, retry: float | None = None) -> T:
        if key in answers:
            return answers[key]
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            if key in answers:
                return answers[key]
            failed = failures.get(key)
            now = time.monotonic()
            if failed and now < failed[0]:
                raise SurrogateOpsError(f"{failed[1]} (asked {failed[0] - now:.0f} s from now again)")
            try:
                answer = probe(*key, timeout=settings().mca_timeout if timeout is None else timeout)
            except (SurrogateOpsError, OSError) as exc:
                failures[key] = (time.monotonic() + (settings().mca_retry if retry is None else retry), str(exc))
                raise SurrogateOpsError(str(exc)) from None
            failures.pop(key, None)
            answers[key] = answer
            return answer

    return ask

INSTALL_HINT = "install LLVM 14 or newer (Debian/Ubuntu: `apt-get install -y llvm`)"
_VERSIONED = tuple(range(22, 13, -1))  # llvm-mca-21 ... llvm-mca-14


def find_tool(name: str, explicit: str | None = None) -> str:
    """Absolute path of LLVM tool `name` (e.g. "llvm-mca"), or a SurrogateOpsError saying how to get it."""
    configured, env_var = settings().tool(name)
    for candidate, origin in ((explicit, "the given path"), (configured, env_var)):
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


@remembered
def tool_version(path: str, timeout: float) -> str:
    """The LLVM version string of a tool, e.g. "14.0.6"."""
    try:
        out = run_tool([path, "--version"], timeout=timeout).stdout
    except OSError as exc:
        raise SurrogateOpsError(f"cannot run {path}: {exc}") from exc
    match = re.search(r"LLVM version (\d+\.\d+\.\d+)", out)
    if not match:
        raise SurrogateOpsError(f"{path} does not look like an LLVM tool (no version in --version)")
    return match.group(1)


@remembered
def tool_options(path: str, timeout: float) -> frozenset[str]:
    """The long options a tool accepts (from --help-hidden), to detect version-dependent knobs."""
    out = run_tool([path, "--help-hidden"], timeout=timeout).stdout
    if "--" not in out:
        raise SurrogateOpsError(f"{path} --help-hidden listed no options")
    return frozenset(re.findall(r"^\s+--?([a-z][\w-]*)", out, flags=re.MULTILINE))
