"""A file of blocks answered in order: what `predict` prints, for the CLI and for Python callers.

`predict_file` reads a file (assembly text, or a CSV with a `block` or `hex` column) a chunk at a
time and answers every block under the service's fallback policy, so a file of millions of blocks
runs in bounded memory. A file that is not text or holds no block is refused before any work.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from surrogate_ops import config, registry
from surrogate_ops.blocks.inputs import Chunk, chunks
from surrogate_ops.config import AUTO_ENGINE, Source
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs.setting import McaSetting
from surrogate_ops.serving.policy import Limits
from surrogate_ops.serving.server import Server

# a file is not a request: no block is refused for its length, and a call may hold a core longer
FILE_LIMITS = Limits(max_instructions=1 << 30, mca_chunk=256, mca_chunk_instructions=4096)


@dataclass
class FileAnswers:
    """The answers to a file's blocks, in order, as (index, answer): `{"cycles", "source", ...}` or
    `{"error"}` naming the block by its place in the file. `sources` counts them as they go."""

    chunks: Iterator[Chunk]
    server: Server
    mcpu: str
    exact: bool
    fallback: bool = True
    setting: McaSetting | None = None
    max_error: float | None = None
    target: str = "mca"  # what the surrogate predicts (its own record says)
    sources: dict[Source, int] = field(default_factory=lambda: dict.fromkeys(Source, 0))

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        for chunk in self.chunks:  # a chunk at a time: memory stays bounded on files of millions of blocks
            answers = self.server.answer(chunk.blocks, self.mcpu, exact=self.exact, first=chunk.start,
                                         fallback=self.fallback, setting=self.setting,
                                         max_error=self.max_error, target=self.target) if chunk.blocks else []
            for i, answer in enumerate(answers):
                if i in chunk.unreadable:
                    answer = {"error": chunk.unreadable[i]}
                if "error" in answer:
                    answer = {"error": name_block(chunk.start + i, answer["error"])}
                self.sources[Source.ERROR if "error" in answer else answer["source"]] += 1
                yield chunk.start + i, answer


def predict_file(path: str | Path, mcpu: str = "haswell", model: str | Path | None = None, *, exact: bool = False,
                 setting: McaSetting | None = None, engine: str = AUTO_ENGINE, fallback: bool = True,
                 max_error: float | None = None, tracking_uri: str | None = None, target: str = "mca") -> FileAnswers:
    """Every block of the file at `path`, answered by the surrogate of `mcpu` (`model`, else that CPU's
    champion of `target`: llvm-mca's cycles, or measured throughput) where the policy trusts it and by
    llvm-mca elsewhere; `exact`: llvm-mca answers all.
    `fallback=False` answers an untrusted block with an error instead; `max_error` sends llvm-mca the
    blocks whose estimated error is above it. The file and the model are checked now, before the
    first answer; the answers come as the returned value is iterated."""
    reading = chunks(path)
    first = next(reading)  # a file that is not text or holds no block is refused here, before any work or output
    if exact:
        server = Server(None, limits=FILE_LIMITS)
    else:
        from surrogate_ops.runtime.inference import Predictor

        predictor = Predictor(registry.open(model, mcpu, tracking_uri, target=target, pinned=True).model, engine=engine)
        if predictor.meta.get("mcpu") != mcpu:
            raise SurrogateOpsError(f"{model or config.model_uri(mcpu, target)} imitates "
                                    f"-mcpu={predictor.meta.get('mcpu')}, not {mcpu}")
        target = predictor.meta.get("target", "mca")  # a model named by --model answers as what it is
        server = Server(predictor, limits=FILE_LIMITS)
        server.check_max_error(mcpu, max_error, target)
    return FileAnswers(itertools.chain([first], reading), server, mcpu, exact, fallback, setting, max_error, target)


def name_block(index: int, error: str) -> str:
    """The error named once, by the block's place in the file (a reason may name its place in a chunk)."""
    named = re.match(r"block \d+(?:, (line \d+))?: ", error)
    where = f"block {index}" + (f", {named.group(1)}" if named and named.group(1) else "")
    return f"{where}: {error[named.end():] if named else error}"
