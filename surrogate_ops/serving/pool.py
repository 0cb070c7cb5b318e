"""The service's shared work queues: llvm-mca's answers remembered, a fair pool of llvm-mca calls across
requests, and concurrent requests' network calls gathered into one.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from surrogate_ops.blocks.batching import Flat


class AnswerCache:
    """llvm-mca's answers by (canonical block, mcpu, parameters): llvm-mca is deterministic, so a block
    asked again is answered without running it. Bounded by the bytes of the blocks' text, the least
    recently used out first; only answers with cycles are kept (a timeout may not recur)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._answers: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                self.misses += 1
            else:
                self.hits += 1
                self._answers.move_to_end(key)
            return answer

    def put(self, key: tuple, answer: dict) -> None:
        if "cycles" not in answer or len(key[0]) > self.max_bytes // 16:
            return
        with self._lock:
            if key not in self._answers:
                self.bytes += len(key[0])
            self._answers[key] = answer
            while self.bytes > self.max_bytes:
                old, _ = self._answers.popitem(last=False)
                self.bytes -= len(old[0])

    def stats(self) -> dict:
        asked = self.hits + self.misses
        return {"entries": len(self._answers), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / asked, 4) if asked else None}


def _run_together(fn: Callable[[list], Sequence], parts: Sequence[Sequence]) -> list[Sequence]:
    """`fn` on the parts' items in one call (it answers as many results as items), each part's
    results handed back as a slice of their own, in order: how FairPool and Gathered share a call."""
    if any(isinstance(part, Flat) for part in parts):  # tokenized blocks as flat arrays (`Predictor.encode_many`)
        results = fn(Flat.concat([part if isinstance(part, Flat) else Flat.of(part) for part in parts]))
    else:
        results = fn([item for part in parts for item in part])
    out, start = [], 0
    for part in parts:
        out.append(results[start:start + len(part)])
        start += len(part)
    return out


class FairPool:
    """`workers` threads running jobs from many requests, round robin: a request's k-th job is
    tagged with the virtual time at its arrival plus k, and the lowest tag runs next (start-time
    fair queueing), so a request arriving behind a long backlog is served beside it, not after it.

    Jobs given a `batch` key are chunks of items that one call can run together: a worker taking
    one also takes the waiting jobs of the same key, lowest tags first, while their sizes (`weigh`
    of each, a tuple: blocks and instructions, say) fit within `most`, and runs them as one call
    (the fallback blocks of concurrent requests share one llvm-mca process, whose start costs as
    much as a few dozen blocks)."""

    def __init__(self, workers: int, name: str = "llvm-mca"):
        self._heap: list[tuple] = []  # (tag, order, fn, item, future, batch, most, size)
        self._ready = threading.Condition()
        self._order = itertools.count()  # ties: first come, first served
        self._now = 0  # virtual time: the tag of the job last started
        self.calls = self.gathered = 0  # calls run, and jobs that rode along in another's call
        for k in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{k}", daemon=True).start()

    def __len__(self) -> int:
        """Jobs waiting (not yet started)."""
        return len(self._heap)

    def map(self, fn: Callable, items: Sequence, batch: object = None, most: int | tuple[int, ...] = 0,
            weigh: Callable[[object], tuple[int, ...]] | None = None) -> list[Future]:
        """Queue `fn(item)` for each item, as one request's jobs; their futures, in order. With a
        `batch` key, items are lists, `fn` maps a list to a list of as many results, and jobs of the
        same key may run gathered, up to `most` a call: items, or, with `weigh`, a bound on each
        figure `weigh(item)` gives."""
        futures = [Future() for _ in items]
        most = most if isinstance(most, tuple) else (most,)
        weigh = weigh or (lambda item: (len(item),))
        with self._ready:
            start = self._now
            for k, (item, future) in enumerate(zip(items, futures, strict=True)):
                size = weigh(item) if batch is not None else ()
                heapq.heappush(self._heap, (start + k, next(self._order), fn, item, future, batch, most, size))
            self._ready.notify(len(items))
        return futures

    def _take(self) -> list[tuple]:
        """The next job, and the waiting jobs that ride along with it (called holding the lock)."""
        head = heapq.heappop(self._heap)
        self._now = max(self._now, head[0])
        batch, most = head[5], head[6]
        if batch is None:
            return [head]
        jobs, size, rest = [head], head[7], []
        for job in sorted(self._heap, key=lambda job: job[:2]):
            grown = tuple(a + b for a, b in zip(size, job[7], strict=True)) if job[5] == batch else ()
            if grown and all(g <= m for g, m in zip(grown, most, strict=True)):
                jobs.append(job)
                size = grown
            else:
                rest.append(job)
        if len(jobs) > 1:
            heapq.heapify(rest)
            self._heap[:] = rest
        return jobs

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap:
                    self._ready.wait()
                jobs = self._take()
                self.calls += 1
                self.gathered += len(jobs) - 1
            jobs = [job for job in jobs if job[4].set_running_or_notify_cancel()]
            if not jobs:
                continue
            fn, batch = jobs[0][2], jobs[0][5]
            try:
                if batch is None:
                    jobs[0][4].set_result(fn(jobs[0][3]))
                    continue
                for job, results in zip(jobs, _run_together(fn, [job[3] for job in jobs]), strict=True):
                    job[4].set_result(results)
            except BaseException as exc:  # noqa: BLE001 - the requests that queued them report it
                for job in jobs:
                    if not job[4].done():
                        job[4].set_exception(exc)


class Gathered:
    """Calls of `fn(items) -> results` (as many results as items) from concurrent threads, run
    gathered: a caller whose items are queued while another call runs waits, and the next caller to
    find none running runs everything queued, up to `most` items, as one call. Alone, a caller runs
    its own items at once; together, requests share the network's batches instead of running it
    side by side on the same cores."""

    def __init__(self, fn: Callable[[list], Sequence], most: int):
        self.fn, self.most = fn, most
        self.calls = self.gathered = 0  # calls run, and callers whose items rode in another's call
        self._queue: list[list] = []  # [items, results, error, done]
        self._ready = threading.Condition()
        self._running = False

    def __len__(self) -> int:
        """Callers waiting for a call."""
        return len(self._queue)

    def __call__(self, items: list) -> Sequence:
        job = [items, None, None, False]
        with self._ready:
            self._queue.append(job)
            while not job[3]:
                if self._running:
                    self._ready.wait()
                    continue
                self._running, jobs, size = True, [], 0
                while self._queue and (not jobs or size + len(self._queue[0][0]) <= self.most):
                    jobs.append(self._queue.pop(0))
                    size += len(jobs[-1][0])
                self.calls += 1
                self.gathered += len(jobs) - 1
                self._ready.release()
                try:
                    self._run(jobs)
                finally:
                    self._ready.acquire()
                    self._running = False
                    self._ready.notify_all()
        if job[2] is not None:
            raise job[2]
        return job[1]

    def _run(self, jobs: list[list]) -> None:
        try:
            for job, results in zip(jobs, _run_together(self.fn, [job[0] for job in jobs]), strict=True):
                job[1] = results
        except Exception as exc:  # noqa: BLE001 - each caller raises it in its own thread
            for job in jobs:
                job[2] = exc
        for job in jobs:
            job[3] = True
