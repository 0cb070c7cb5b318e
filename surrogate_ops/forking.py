"""Pools of forked workers that inherit the parent's loaded state (a disassembler, a predictor).

`fork_pool(n, inherit=state)` forks the workers while `state` is set here; a worker reads it with
`inherited()`, as it was at the fork, without pickling it. The pool has the part of
`multiprocessing.Pool` that its callers use: `map`, `imap`, `close`, `terminate`, `join`.

Why not `multiprocessing.Pool`: its workers share its queues' locks with the parent, and an idle
worker waits for a task holding the task queue's read lock. SIGTERM to the process group (what
`timeout`, systemd and CI runners send) killed the workers there, the lock stayed held for good,
and `Pool.terminate` (also run at exit) starts by taking that lock: `predict` printed
"interrupted" and never exited (issue 29; py-spy: the parent in `Pool._help_stuff_finish`, a
worker the pool had forked in place of the dead ones waiting on the same lock). Here each worker
has a pipe of its own to the parent and shares no lock with anyone, so a worker may die anywhere:
its death is an end of file on its pipe, and ending the pool is a kill and a join.

The CLI turns SIGTERM into KeyboardInterrupt so that parts and checkpoints are kept; the workers
restore the default SIGTERM (die at once) and ignore SIGINT (Ctrl-C reaches the whole process
group; the parent alone handles it and ends the pool). Both are blocked from before the fork until
the worker has set its own handlers, so no signal reaches a worker running the parent's handler.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from surrogate_ops.errors import SurrogateOpsError

_INHERITED: Any = None  # what the workers of the pool being forked inherit
_STOPS = {signal.SIGTERM, signal.SIGINT}
_END = object()


class ForkPool:
    """Forked workers, each on a pipe of its own (see the module)."""

    def __init__(self, processes: int, inherit: Any = None):
        global _INHERITED
        context = multiprocessing.get_context("fork")
        self._workers: list[tuple[multiprocessing.Process, multiprocessing.connection.Connection]] = []
        self._ended = False
        self._turn = threading.Lock()  # one map at a time: a predictor may be called from a service's threads
        self._pending: dict[multiprocessing.connection.Connection, Pending] = {}  # workers running an apply_async
        _INHERITED = inherit
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            for _ in range(processes):
                ours, theirs = context.Pipe()
                worker = context.Process(target=_serve, args=(theirs, ours, mask), daemon=True)
                worker.start()
                theirs.close()
                self._workers.append((worker, ours))
        except BaseException:
            self.terminate()
            raise
        finally:
            _INHERITED = None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """[fn(item) for item in items], computed by the workers side by side (calls from several
        threads take turns)."""
        with self._turn:
            return list(self.imap(fn, items))

    def apply(self, fn: Callable[..., Any], args: tuple = ()) -> Any:
        """fn(*args), in a worker."""
        with self._turn:
            return self.apply_async(fn, args).get()

    def apply_async(self, fn: Callable[..., Any], args: tuple = ()) -> Pending:
        """fn(*args) started in an idle worker (one freed first if none is); `.get()` waits for it."""
        self._check()
        conn = next((c for _, c in self._workers if c not in self._pending), None)
        if conn is None:
            conn = multiprocessing.connection.wait(list(self._pending))[0]
            self._pending[conn].get()
        conn.send((fn, args))
        self._pending[conn] = Pending(self, conn)
        return self._pending[conn]

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """fn(item) for each item, in order, as the workers answer. An exception of `fn` is raised
        here once the other items in flight are answered; a worker that dies ends the pool."""
        self._check()
        items = iter(items)
        idle = [c for _, c in self._workers if c not in self._pending]  # the others run an apply_async
        busy: dict[multiprocessing.connection.Connection, int] = {}  # a worker's pipe -> the item it works on
        answers: dict[int, Any] = {}
        sent = given = 0
        failure: BaseException | None = None
        try:
            while True:
                while idle and failure is None:
                    item = next(items, _END)
                    if item is _END:
                        break
                    conn = idle.pop()
                    conn.send((fn, (item,)))
                    busy[conn] = sent
                    sent += 1
                while given in answers:
                    yield answers.pop(given)
                    given += 1
                if not busy:
                    break
                for conn in multiprocessing.connection.wait([*busy, *self._pending]):
                    if conn in self._pending:  # an apply_async done: its worker joins this map
                        self._pending[conn].get()
                        idle.append(conn)
                        continue
                    ok, value = self._receive(conn)
                    index = busy.pop(conn)
                    idle.append(conn)
                    if ok:
                        answers[index] = value
                    elif failure is None:
                        failure = value
            if failure is not None:
                raise failure
        finally:
            if busy:  # interrupted, a worker died, or the caller left early: answers are still on their way
                self.terminate()

    def _check(self) -> None:
        if self._ended:
            raise SurrogateOpsError("this worker pool was closed or terminated")

    def _receive(self, conn: multiprocessing.connection.Connection) -> tuple[bool, Any]:
        try:
            return conn.recv()
        except (EOFError, OSError):
            self.terminate()
            raise self._death(conn) from None

    def _death(self, conn: multiprocessing.connection.Connection) -> BaseException:
        """Why a worker's pipe ended: a worker stopped by SIGTERM or SIGINT was stopped with its
        process group, this process included (its own handler may not have run yet)."""
        worker = next(w for w, c in self._workers if c is conn)
        worker.join(1)
        if worker.exitcode is not None and -worker.exitcode in _STOPS:
            return KeyboardInterrupt()
        return SurrogateOpsError(f"a worker process (pid {worker.pid}) died, exit code {worker.exitcode}")

    def close(self) -> None:
        """Let the workers leave once idle (`join` waits for them)."""
        self._ended = True
        for _, conn in self._workers:
            try:
                conn.send(None)
            except OSError:  # that worker is gone already
                pass
            conn.close()

    def terminate(self) -> None:
        """Kill the workers now, whatever they are doing: they hold nothing the parent waits on."""
        self._ended = True
        for worker, conn in self._workers:
            if worker.exitcode is None:
                worker.kill()
            conn.close()

    def join(self) -> None:
        for worker, _ in self._workers:
            worker.join()
        self._workers = []


class Pending:
    """The answer of an `apply_async`, on its way."""

    def __init__(self, pool: ForkPool, conn: multiprocessing.connection.Connection):
        self._pool, self._conn, self._answer = pool, conn, None

    def get(self) -> Any:
        if self._answer is None:
            self._answer = self._pool._receive(self._conn)
            del self._pool._pending[self._conn]
        ok, value = self._answer
        if not ok:
            raise value
        return value


def _serve(conn: multiprocessing.connection.Connection, parent_end: multiprocessing.connection.Connection,
           mask: set) -> None:
    """A worker: run the jobs that come down its pipe until it ends or says stop (None)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    parent_end.close()  # the parent's end, inherited: the pipe ends for this worker when the parent goes
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args = job
        try:
            answer = (True, fn(*args))
        except Exception as exc:  # raised in the parent, as multiprocessing.Pool does
            answer = (False, exc)
        try:
            conn.send(answer)
        except OSError:  # the parent is gone
            return
        except Exception as exc:  # an answer or exception that does not pickle (nothing of it was sent)
            conn.send((False, SurrogateOpsError(f"a worker's answer could not be sent back: {exc!r}")))


def fork_pool(processes: int, inherit: Any = None) -> ForkPool:
    """A pool of `processes` forked workers with plain signal handling, each inheriting `inherit`
    (see the module)."""
    return ForkPool(processes, inherit)


def inherited() -> Any:
    """In a worker of `fork_pool`: what its pool was given to inherit."""
    return _INHERITED
