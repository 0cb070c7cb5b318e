"""End-to-end prediction: assembly text in, cycles out, through one of the engines.

`Predictor` does the whole path: check and normalize each block, tokenize (cached per distinct
instruction), bucket by length, pad, run the engine (`engines`: torch, ONNX Runtime, TVM builds),
put answers back in input order. It reads the model through `modeldir.ModelDir`. A confident
surrogate (`models.confident`) also estimates each answer's relative error.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surrogate_ops.blocks import compiled, deps
from surrogate_ops.blocks.asm import MAX_LINE, PREFIXES, BlockError, canonical_line, normalize_block
from surrogate_ops.blocks.batching import Flat, run_batched
from surrogate_ops.config import EngineName
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.forking import fork_pool, inherited
from surrogate_ops.runtime import engines
from surrogate_ops.runtime.modeldir import ModelDir

# Distinct lines remembered (about 0.5 KB each here, 2 KB with the caches below it: canonical text,
# token ids, dependency effects, each bounded too), each at most asm.MAX_LINE characters: bounded in
# bytes, so that memory does not grow with the input.
LINE_CACHE = 1 << 17
# Blocks per network call: a GPU needs large batches to stay busy. On an H200, the bundled Haswell
# surrogate's network ran 218,079 blocks/s at 4,096, 330,950 at 16,384 and 295,182 at 65,536.
CPU_BATCH, GPU_BATCH = 256, 16384
# Padded tokens per network call on a CPU: finer length buckets waste less on padding. On 10,000
# BHive blocks in requests of 64, the network ran 14,066 blocks/s at 8,192 (with batching.MIN_BATCH)
# against 8,289 at 32,768; in requests of 256, 19,987 against 15,929; all at once, 30,466 against 30,471.
CPU_TOKENS = 8192
# ... but a call of many blocks (a file's chunk) fills batches of any size, and larger ones cost less
# per block: on 20,000 BHive blocks tokenized by the compiled front end, 47,264 blocks/s at 8,192
# and 64,671 at 32,768 (both cores, a call per core).
BULK_TOKENS, BULK_CALL = 32768, 4096
# Threads per network call on a CPU; the other cores run other calls beside it (`batching.run_batched`'s
# lanes). One call's threads mostly wait on each other at these sizes: on a 16-core machine, ONNX
# Runtime with 16 threads on one call ran the network at 16,569 blocks/s, below its 34,274 with 2
# threads on these 2 cores, where two calls of one thread each ran 71,515 (torch: 32,588 and 36,835).
LANE_THREADS = 1
_SKIP, _SLOW = object(), object()  # line-cache markers: a blank line; a bare prefix (general path)
PARALLEL_MIN = 16384  # blocks in one call from which worker processes share the encoding


@dataclass(frozen=True)
class Prediction:
    """A block's predicted cycles per 100 iterations, or why there is none; unknown tokens listed;
    a confident surrogate's estimate of its relative error (0.05: 5%)."""

    cycles: float | None = None
    error: str | None = None
    unknown: tuple[str, ...] = field(default=())
    estimated_error: float | None = None


class Predictor:
    """Predicts llvm-mca-style cycles (per 100 iterations) for assembly blocks with a trained surrogate.

    A parameter-conditioned surrogate (surrogate.json names its `program_parameters`) predicts
    llvm-mca under a setting: `params` is one setting (a dict of parameter or option names, the
    rest at llvm-mca's defaults) or one row of scaled parameters per block; left out, the expert defaults."""

    def __init__(self, model: str | Path | ModelDir, engine: str = EngineName.ONNXRUNTIME, threads: int | None = None,
                 batch_size: int | None = None, line_cache: int = LINE_CACHE, workers: int | None = None):
        """`line_cache`: distinct raw lines remembered (about 1 KB each with what they hold): a
        service holding its memory to a budget remembers fewer than a batch run over millions.
        `workers`: the compiled front end's threads for a large call, or without it the processes that
        encode a large call's blocks side by side [default: the cores]; each process keeps its own
        line cache, and sends back flat arrays (`batching.Flat`). `threads`: one
        network call at a time on this many threads; left out, a CPU engine runs a call per core
        side by side, one thread each (`LANE_THREADS`)."""
        self.model = ModelDir.open(model)
        self.meta = self.model.meta
        self.tokenizer = self.model.tokenizer()
        program = self.model.program_parameters
        self.parameter_names: list[str] = list(program.get("names", []))
        self.expert_defaults: dict = dict(program.get("expert_defaults", {}))
        self.max_instructions = self.model.max_instructions
        self._lines: dict[str, object] = {}  # raw line -> (ids, has unknown) | BlockError | _SKIP | _SLOW
        self.line_cache = line_cache
        cores = len(os.sched_getaffinity(0))
        self.workers = workers or cores
        self._pool = None
        # the compiled front end reads what it can of a call's blocks, on threads; the rest is read here
        self.native = compiled.Encoder.of(self.tokenizer, self.max_instructions)
        lanes = 1 if threads else max(1, cores // LANE_THREADS)
        self.engine_name, self.engine = engines.load(engine, self.model, threads,
                                                     lane_threads=LANE_THREADS if lanes > 1 else None)
        self.lanes = lanes if self.engine_name in engines.LANE_ENGINES else 1
        self.on_gpu = self.engine_name.endswith("cuda")
        self.confident = self.model.arch == "confident"  # the network also estimates its error per block
        self.batch_size = batch_size or (GPU_BATCH if self.on_gpu else CPU_BATCH)

    def encode(self, text: str, index: int) -> tuple[list[tuple[int, ...]], bool]:
        """Token ids per instruction of a raw block, and whether any token is unknown; BlockError if
        the block cannot be read. Each distinct raw line is checked, normalized and encoded once."""
        lines = self._lines  # read by several threads in the service: get() never races a clear()
        hits = [lines.get(raw) or self._encode_line(raw) for raw in text.split("\n")]
        try:  # the common case: every line an instruction, (ids, has unknown, text, effects); markers are not subscriptable
            ids = [hit[0] for hit in hits]
            unknown = any([hit[1] for hit in hits])
        except TypeError:
            return self._encode_general(text, index, hits)
        if len(ids) > self.max_instructions:
            raise BlockError(f"{len(ids)} instructions, more than the limit of {self.max_instructions}", index)
        if self.tokenizer.max_deps:  # edges span lines: added per block, from each line's cached effects
            ids = self.tokenizer.add_edges(ids, [hit[3] for hit in hits])
        return ids, unknown

    def _encode_general(self, text: str, index: int, hits: list) -> tuple[list[tuple[int, ...]], bool]:
        """A block with blank lines, a bare prefix line or an unreadable line."""
        ids: list[tuple[int, ...]] = []
        instructions: list[str] = []
        unknown = False
        for number, hit in enumerate(hits, start=1):
            if hit is _SKIP:
                continue
            if hit is _SLOW:  # a bare prefix line joins the next instruction: take the general path
                block = normalize_block(text, index=index, max_instructions=self.max_instructions)
                ids = self.tokenizer.encode_block(block)
                return ids, any(1 in ins for ins in ids)
            if isinstance(hit, BlockError):
                raise BlockError(hit.reason, index, number)
            ids.append(hit[0])
            instructions.append(hit[2])
            unknown = unknown or hit[1]
        if not ids:
            raise BlockError("empty block (no instructions)", index)
        if len(ids) > self.max_instructions:
            raise BlockError(f"{len(ids)} instructions, more than the limit of {self.max_instructions}", index)
        return self.tokenizer.add_dependencies(ids, instructions), unknown

    def _encode_line(self, raw: str):
        line = raw.strip()
        instruction = canonical_line(line) if line else None
        if instruction is None:
            hit = _SKIP
        elif isinstance(instruction, BlockError):
            hit = instruction
        elif instruction in PREFIXES:
            hit = _SLOW
        else:
            encoded = self.tokenizer.encode_instruction(instruction)
            hit = (encoded, 1 in encoded, instruction, deps.uses_defs(instruction) if self.tokenizer.max_deps else None)
        if len(raw) <= MAX_LINE:  # longer ones (padding, or refused) are not kept
            if len(self._lines) >= self.line_cache:
                self._lines.clear()
            self._lines[raw] = hit
        return hit

    def scaled(self, params: object, count: int) -> np.ndarray | None:
        """(count, parameters) scaled parameters for a conditioned model: None for a token-only one."""
        if not self.parameter_names:
            if params is not None:
                raise SurrogateOpsError(f"{self.model} is not parameter-conditioned; it predicts llvm-mca's defaults only")
            return None
        from surrogate_ops.programs import LlvmMca
        from surrogate_ops.programs.base import check_setting, scale_settings

        space = {name: LlvmMca.parameters[name] for name in self.parameter_names}
        if isinstance(params, np.ndarray):
            if params.shape != (count, len(space)):
                raise SurrogateOpsError(f"params: expected scaled parameters shaped ({count}, {len(space)}), got {params.shape}")
            return params.astype(np.float32)
        try:  # checked as llvm-mca checks them, against the parameters this surrogate was trained on
            given = check_setting(space, params or {}, LlvmMca.name)
        except ValueError as exc:
            raise SurrogateOpsError(str(exc)) from None
        return np.repeat(scale_settings(space, [{**self.expert_defaults, **given}]), count, axis=0)

    def predict(self, blocks: Sequence[str], params: object = None, first: int = 0) -> list[Prediction]:
        """One Prediction per block, in order; a block that cannot be read gets its reason, which
        names it by its place in `blocks` counted from `first` (a chunk of a larger input)."""
        values, estimates, errors, unknown_at = self._run(blocks, params, first)
        out = [Prediction(error=errors[i]) if i in errors else
               Prediction(cycles=float(v), estimated_error=None if estimates is None else float(estimates[i]))
               for i, v in enumerate(values)]
        for i in unknown_at:  # name the tokens for the caller (the service's fallback policy)
            out[i] = Prediction(cycles=out[i].cycles, unknown=tuple(self.tokenizer.unknown(normalize_block(blocks[i]))),
                                estimated_error=out[i].estimated_error)
        return out

    def cycles(self, blocks: Sequence[str], params: object = None) -> np.ndarray:
        """Predicted cycles as an array, NaN where a block could not be read."""
        return self._run(blocks, params)[0]

    def estimate(self, blocks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(cycles, estimated relative errors) as arrays, NaN where a block could not be read; a
        surrogate without an error head has none to give."""
        if not self.confident:
            raise SurrogateOpsError(f"{self.model} does not estimate its error; fit it a head with "
                                    "`surrogate-ops confidence`")
        values, estimates, _, _ = self._run(blocks)
        return values, estimates

    def _run(self, blocks: Sequence[str], params: object = None, first: int = 0,
             ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str], list[int]]:
        """Cycles (NaN where unreadable), a confident surrogate's error estimates (else None), the
        reasons by index, and which blocks hold unknown tokens."""
        scaled = self.scaled(params, len(blocks))
        values = np.full(len(blocks), np.nan)
        estimates = np.full(len(blocks), np.nan) if self.confident else None
        encoded, where, errors, unknown_at = self._encode_call(blocks, first)
        if len(encoded):
            values[where], estimate = self.answer_encoded(encoded, None if scaled is None else scaled[where])
            if estimates is not None:
                estimates[where] = estimate
        return values, estimates, errors, unknown_at

    def parallel(self, count: int) -> bool:
        """Whether a call of `count` blocks is encoded by the worker processes (the Python front end
        alone: the compiled one shares a call's blocks among threads of its own)."""
        return (self.native is None and self.workers > 1 and count >= PARALLEL_MIN
                and not multiprocessing.current_process().daemon)

    def bulk(self, count: int) -> bool:
        """Whether a call of `count` blocks is best encoded as a whole (`encode_many`) rather than
        block by block."""
        return self.native is not None or self.parallel(count)

    def encode_many(self, blocks: Sequence[str], first: int = 0) -> tuple[Flat, dict[int, int], set[int], set[int]]:
        """A call's blocks encoded as a whole (by the compiled front end, or side by side by the
        worker processes): the tokenized blocks, each readable block's row among them (by its place
        in `blocks`), the places of the blocks the cache path refused (unreadable, or over the
        model's length), and of those with unknown tokens."""
        encoded, where, errors, unknown_at = self._encode_call(blocks, first)
        rows = dict(zip(np.asarray(where).tolist(), range(len(where))))
        return encoded if isinstance(encoded, Flat) else Flat.of(encoded), rows, set(errors), set(unknown_at)

    def _encode_call(self, blocks: Sequence[str], first: int) -> tuple[list | Flat, Sequence[int], dict[int, str], list[int]]:
        """A call's blocks encoded by the compiled front end (on threads), else by the worker
        processes (a large call), else here: `_encode_part`'s four results."""
        if self.native is not None:
            return self._encode_native(blocks, first)
        if self.parallel(len(blocks)):
            return self._encode_parallel(blocks, first)
        return self._encode_part(blocks, first)

    def _encode_part(self, blocks: Sequence[str], first: int, start: int = 0,
                     ) -> tuple[list, list[int], dict[int, str], list[int]]:
        """Token ids of the blocks that can be read, their indices, the others' reasons, and which
        hold unknown tokens; indices count from `start`, blocks are named from `first + start`."""
        return self._encode_at(blocks, range(len(blocks)), first, start)

    def _encode_at(self, blocks: Sequence[str], places: Sequence[int], first: int, start: int = 0,
                   ) -> tuple[list, list[int], dict[int, str], list[int]]:
        """`_encode_part` of the blocks at `places` only (indices `start + place`)."""
        errors: dict[int, str] = {}
        encoded, where, unknown_at = [], [], []
        for place in places:
            i = start + place
            try:
                ids, has_unknown = self.encode(blocks[place], first + i)
            except BlockError as exc:
                errors[i] = str(exc)
                continue
            if has_unknown:
                unknown_at.append(i)
            encoded.append(ids)
            where.append(i)
        return encoded, where, errors, unknown_at

    def _encode_native(self, blocks: Sequence[str], first: int) -> tuple[Flat, np.ndarray, dict[int, str], list[int]]:
        """`_encode_part` by the compiled front end, with the blocks it leaves to Python read here."""
        encoded, deferred = self.native.encode(blocks, self.workers)
        where = np.flatnonzero(~deferred)
        if not deferred.any():
            return encoded, where, {}, []
        more, found, errors, unknown_at = self._encode_at(blocks, np.flatnonzero(deferred).tolist(), first)
        return (Flat.concat([encoded, Flat.of(more)]), np.concatenate([where, np.asarray(found, dtype=np.int64)]),
                errors, unknown_at)

    def _encode_parallel(self, blocks: Sequence[str], first: int) -> tuple[Flat, np.ndarray, dict[int, str], list[int]]:
        """`_encode_part` across the worker processes, a slice each (four per worker, for balance)."""
        if self._pool is None:  # forked: the workers inherit this predictor, its vocabulary and its line cache as they are
            self._pool = fork_pool(self.workers, inherit=self)
        step = -(-len(blocks) // (4 * self.workers))
        try:
            parts = self._pool.map(_encode_slice, [(list(blocks[s:s + step]), first, s) for s in range(0, len(blocks), step)])
        except BaseException:  # interrupted, or a worker died: the next call forks a fresh pool
            self.close()
            raise
        errors = {i: why for part in parts for i, why in part[2].items()}
        return (Flat.concat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), errors,
                [i for part in parts for i in part[3]])

    def close(self) -> None:
        """Stop the encoding workers (they also end with this process)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def predict_encoded(self, encoded: Sequence[list[tuple[int, ...]]], scaled: np.ndarray | None = None) -> np.ndarray:
        """Cycles for already tokenized blocks, in order (`scaled`: a conditioned model's settings, a row each)."""
        return self.answer_encoded(encoded, scaled)[0]

    def answer_encoded(self, encoded: Sequence[list[tuple[int, ...]]] | Flat, scaled: np.ndarray | None = None,
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """Cycles for already tokenized blocks, and a confident surrogate's estimates of their relative
        error (None for a surrogate without them), from one run of the network."""
        if scaled is None and self.parameter_names:
            scaled = self.scaled(None, len(encoded))
        out = run_batched(self.engine, encoded, self.batch_size, scaled, overlap=self.on_gpu,
                          token_budget=None if self.on_gpu else BULK_TOKENS if len(encoded) >= BULK_CALL else CPU_TOKENS,
                          lanes=self.lanes)
        if out.ndim == 2:
            return out[:, 0], out[:, 1]
        return out, None



def _encode_slice(job: tuple[list[str], int, int]) -> tuple[Flat, np.ndarray, dict[int, str], list[int]]:
    """In an encoding worker: one slice of a call's blocks, as flat arrays."""
    blocks, first, start = job
    predictor = inherited()  # as it was when this worker was forked
    encoded, where, errors, unknown_at = predictor._encode_part(blocks, first, start)
    return Flat.of(encoded), np.asarray(where, dtype=np.int64), errors, unknown_at
