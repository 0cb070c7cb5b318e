"""Pools of forked workers that inherit the parent's loaded state (a disassembler, a predictor).

`fork_pool(n, inherit=state)` forks the workers while `state` is set here; a worker reads it with
`inherited()`, as it was at the fork, without pickling it.

The CLI turns SIGTERM into KeyboardInterrupt so that parts and checkpoints are kept; a forked
worker would inherit that handler, and `Pool.terminate` (SIGTERM to each worker) could then leave
one alive, waiting on a lock of the pool's queue that a worker it outlived held: the parent
waits for it forever. Workers here restore the default SIGTERM (die at once) and ignore SIGINT
(Ctrl-C reaches the whole process group; the parent alone handles it and ends the pool).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import signal
from typing import Any

_INHERITED: Any = None  # what the workers of the pool being forked inherit


def _plain_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fork_pool(processes: int, inherit: Any = None) -> multiprocessing.pool.Pool:
    """A pool of `processes` forked workers with plain signal handling, each inheriting `inherit`
    (see the module)."""
    global _INHERITED
    _INHERITED = inherit
    try:
        return multiprocessing.get_context("fork").Pool(processes, initializer=_plain_signals)
    finally:
        _INHERITED = None


def inherited() -> Any:
    """In a worker of `fork_pool`: what its pool was given to inherit."""
    return _INHERITED
