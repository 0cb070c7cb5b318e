"""What the service accepts and whom it trusts: request limits, a refused request, and the fallback rules.

A rule is `rule(block, server) -> reason | None`; the first reason sends the block to llvm-mca.
`DEFAULT_POLICY` holds the rules the service runs; a new rule (uncertainty, say) is one more function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from surrogate_ops.blocks.asm import normalize_block
from surrogate_ops.config import settings
from surrogate_ops.errors import SurrogateOpsError


class Answering(Protocol):
    """What a rule sees of the server: the surrogate of each mcpu it serves."""

    predictors: Mapping[str, Any]


class Rejected(SurrogateOpsError):
    """A request refused as a whole, with the HTTP status to answer."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_blocks: int = 4096  # blocks per request
    max_instructions: int = 512  # instructions per block (the model's own limit is lower: those go to llvm-mca)
    max_bytes: int = 4 << 20  # bytes of assembly per request
    max_body: int = 9 << 20  # bytes of a request's body, JSON and all, refused before it is read (the service's)
    mca_timeout: float = field(default_factory=lambda: settings().mca_timeout)  # seconds per llvm-mca call (one chunk
    # of blocks, or a start-up probe); SURROGATE_OPS_MCA_TIMEOUT, for every call of an LLVM tool
    mca_chunk: int = 64  # blocks per llvm-mca call
    mca_chunk_instructions: int = 1024  # instructions per llvm-mca call: long blocks run a few a call, so that
    # no call, gathered or not, holds a core for long (512 divides take about a second) and a slow request's
    # chunks take turns with other requests' instead of running past the timeout
    mca_gather: int = 64  # blocks of concurrent requests' waiting chunks one llvm-mca call may gather (0: none)
    network_gather: int = 2048  # blocks of concurrent requests one call of a surrogate's network may gather (0: none)
    mca_retry: float = field(default_factory=lambda: settings().mca_retry)  # seconds a failed or hanging llvm-mca is
    # left alone before it is tried again; SURROGATE_OPS_MCA_RETRY, as for every LLVM tool
    line_cache: int = 1 << 15  # distinct lines remembered, shared out among the surrogates (about 1 KB each)
    mca_cache_bytes: int = 16 << 20  # llvm-mca's answers remembered, by the bytes of their blocks' text

    @classmethod
    def from_environment(cls) -> Limits:
        """The service's limits: each one its SURROGATE_OPS_* variable sets (`config.Settings`, a field
        of the same name) over its default."""
        given = settings()
        return cls(**{k: getattr(given, k) for k in cls.__dataclass_fields__ if getattr(given, k) is not None})


@dataclass(slots=True)
class Block:
    """What the policy sees of one block of a request."""

    index: int
    raw: str  # as sent
    mcpu: str
    instructions: int = 0
    ids: Sequence[tuple[int, ...]] = ()  # the surrogate's token ids, once screened
    row: int = -1  # its row among a large call's blocks encoded side by side (then `ids` stays empty)
    unknown: tuple[str, ...] = ()
    _text: str | None = None
    route: str = ""  # the surrogate asked: its mcpu, or <mcpu>/measured (`route`); "" is the mcpu

    @property
    def surrogate(self) -> str:
        return self.route or self.mcpu

    @property
    def text(self) -> str:
        """Canonical assembly (made on demand: the surrogate's path checks lines through its cache)."""
        if self._text is None:
            self._text = normalize_block(self.raw, index=self.index)
        return self._text


def unknown_tokens(block: Block, server: Answering) -> str | None:
    if block.unknown:
        return f"tokens outside the model's vocabulary: {', '.join(block.unknown[:5])}"
    return None


def too_long(block: Block, server: Answering) -> str | None:
    limit = server.predictors[block.surrogate].max_instructions
    return f"{block.instructions} instructions, over the model's limit of {limit}" if block.instructions > limit else None


def other_mcpu(block: Block, server: Answering) -> str | None:
    if block.surrogate in server.predictors:
        return None
    return f"no surrogate for {block.surrogate} (this service has {', '.join(server.predictors)})"


def route(mcpu: str, target: str = "mca") -> str:
    """The key of the surrogate that answers `mcpu`'s `target`: the mcpu for llvm-mca's cycles,
    <mcpu>/measured for a surrogate fine-tuned on the CPU's measured throughput."""
    return mcpu if target == "mca" else f"{mcpu}/{target}"


Rule = Callable[[Block, Answering], "str | None"]
DEFAULT_POLICY: tuple[Rule, ...] = (other_mcpu, too_long, unknown_tokens)
