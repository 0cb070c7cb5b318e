"""Running a program's chunks on a Ray cluster: labeling with many machines' cores.

`LlvmMca` runs chunks of blocks (hundreds per llvm-mca process) on a pool of local threads; given
a `Cluster`, it sends each chunk to Ray as a task of one CPU instead, so a collection or an
optimization check uses every CPU the cluster has. A chunk's answer is exactly the local one: the
task runs the same code on the same blocks, and llvm-mca is deterministic.

Faults: a task whose worker process or node dies is resubmitted by Ray (`RETRIES` times) on the
nodes that remain, so a node lost mid-run loses no block; only when retries run out does the
chunk fail, loudly, and an interrupted `collect` resumes from the parts it had written.

Every node needs what a chunk runs: this package importable by the same Python and the llvm-mca
the driver resolved, at the same path (one image for every node; see deploy/cluster-plan.md).
`connect("local")` starts a Ray instance on this machine alone, for trying it out: on loopback
(`LOOPBACK`; Ray turns 127.0.0.1 into the machine's network address) and with a token of its own
in the environment (Ray would otherwise write ~/.ray/auth_token, which later `ray start` nodes on
the machine trip over). Any other address joins a running cluster (`ray start --head` on one
machine, `ray start --address` on the others, each with the cluster's RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from surrogate_ops.errors import SurrogateOpsError

LOCAL = "local"
LOOPBACK = "127.0.0.2"  # where a local instance listens
RETRIES = 8  # resubmissions of a task whose worker or node died
_OBJECT_STORE = 200 * 1024 * 1024  # bytes for a local instance: chunks and answers are small


@dataclass
class Cluster:
    """A connected Ray cluster and where its chunks ran (`nodes`: chunks answered per node id)."""

    address: str
    cpus: int
    nodes: Counter = field(default_factory=Counter)

    def map(self, function: Callable[..., Any], jobs: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """`function(*job)` for every job as Ray tasks of one CPU each: (job index, answer) as each
        finishes. A task lost with its worker or node runs again elsewhere."""
        import ray

        remote = _remote(function)
        pending = {remote.remote(*job): k for k, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    try:
                        answer, node = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise SurrogateOpsError(f"a chunk failed on the Ray cluster at {self.address} after "
                                                f"{RETRIES} retries: {exc}") from None
                    self.nodes[node] += 1
                    yield pending.pop(ref), answer
        finally:  # interrupted, or failed: the cluster's CPUs go back to whoever else uses it
            for ref in pending:
                ray.cancel(ref, force=True)


_REMOTES: dict[Callable, Any] = {}


def _remote(function: Callable[..., Any]):
    """`function` as a Ray task that also says which node ran it (made once per function)."""
    if function not in _REMOTES:
        import ray

        def task(*args):
            return function(*args), ray.get_runtime_context().get_node_id()

        _REMOTES[function] = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(task)
    return _REMOTES[function]


def connect(address: str) -> Cluster:
    """Join the Ray cluster at `address` (host:port of its head, or "auto"), or start one on this
    machine alone with "local". Ray's own logs stay out of the terminal."""
    if address == LOCAL and "RAY_AUTH_TOKEN" not in os.environ:  # before Ray reads its configuration
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        import ray
    except ImportError:
        raise SurrogateOpsError("--ray needs Ray: pip install 'surrogate-ops[cluster]' (or pip install ray)") from None
    if ray.is_initialized():
        ray.shutdown()
    if address not in (LOCAL, "auto"):
        _reachable(address)
    options = dict(log_to_driver=False, include_dashboard=False, configure_logging=True, logging_level="error")
    try:
        if address == LOCAL:
            ray.init(address=LOCAL, _node_ip_address=LOOPBACK, num_cpus=len(os.sched_getaffinity(0)),
                     object_store_memory=_OBJECT_STORE, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise SurrogateOpsError(f"cannot join the Ray cluster at {address}: {exc}") from None
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise SurrogateOpsError(f"the Ray cluster at {address} has no CPUs to label with")
    return Cluster(address, cpus)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail at once on a head that does not answer (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SurrogateOpsError(f"--ray {address}: expected local, auto or HOST:PORT of the cluster's head")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SurrogateOpsError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc}); "
                                "start its head with `ray start --head`") from None
