"""From token ids to padded batches, bucketed by length.

Real blocks are short and their lengths vary a lot; padding every block to the longest wastes most
of the work. Blocks are sorted by (instructions, tokens per instruction) and cut into batches of
similar shape, each padded only to its own longest block, under a budget of padded tokens per
batch. Used by training and by inference alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

import numpy as np

Encoded = list[tuple[int, ...]]  # one block: token ids per instruction
# A `dep` tokenizer's edge tokens (tokenizer.dependency_tokens): ids from EDGE_BASE (right after <PAD>
# and <UNK>), EDGE_KINDS blocks of one id per producer position (blocks.deps.KINDS)
EDGE_BASE, EDGE_KINDS = 2, 4
# odd multipliers of an instruction row's hash (`parts`): one per token slot
_HASH = np.random.default_rng(20261205).integers(1, 1 << 62, 64, dtype=np.int64) | 1


def pad(blocks: Sequence[Encoded]) -> np.ndarray:
    """(batch, instructions, tokens) int64 array, 0 for padding."""
    instructions = [ins for block in blocks for ins in block]
    lengths = np.fromiter(map(len, instructions), dtype=np.int64, count=len(instructions))
    per_block = np.fromiter(map(len, blocks), dtype=np.int64, count=len(blocks))
    n_ins, n_tok = int(per_block.max()), int(lengths.max())
    out = np.zeros((len(blocks), n_ins, n_tok), dtype=np.int64)
    # flat position of every token: row of its instruction (block, slot), then its place in the row
    block_of = np.repeat(np.arange(len(blocks)), per_block)
    slot_of = np.arange(len(instructions)) - np.repeat(np.cumsum(per_block) - per_block, per_block)
    rows = np.repeat(block_of * n_ins + slot_of, lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out.reshape(-1, n_tok)[rows, within] = np.fromiter(chain.from_iterable(instructions), dtype=np.int64,
                                                       count=int(lengths.sum()))
    return out


@dataclass(frozen=True)
class Flat:
    """Tokenized blocks as three flat arrays instead of lists of tuples: what worker processes send
    back (arrays cross a process boundary as raw bytes; millions of small tuples would be rebuilt
    one by one) and what `pad` reads without touching a Python object per token."""

    tokens: np.ndarray  # every token id, block after block, instruction after instruction
    per_instruction: np.ndarray  # tokens of each instruction
    per_block: np.ndarray  # instructions of each block

    @classmethod
    def of(cls, blocks: Sequence[Encoded]) -> Flat:
        instructions = [ins for block in blocks for ins in block]
        per_instruction = np.fromiter(map(len, instructions), dtype=np.int64, count=len(instructions))
        return cls(np.fromiter(chain.from_iterable(instructions), dtype=np.int64, count=int(per_instruction.sum())),
                   per_instruction, np.fromiter(map(len, blocks), dtype=np.int64, count=len(blocks)))

    @classmethod
    def concat(cls, parts: Sequence[Flat]) -> Flat:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0, dtype=np.int64)
                     for f in ("tokens", "per_instruction", "per_block")))

    def __len__(self) -> int:
        return len(self.per_block)

    @cached_property
    def first_instruction(self) -> np.ndarray:
        """Where each block's instructions start in `per_instruction` (worked out once, not per batch)."""
        return np.cumsum(self.per_block) - self.per_block

    @cached_property
    def first_token(self) -> np.ndarray:
        """Where each instruction's tokens start in `tokens`."""
        return np.cumsum(self.per_instruction) - self.per_instruction

    def widths(self) -> np.ndarray:
        """The widest instruction of each block, in tokens."""
        out = np.zeros(len(self.per_block), dtype=np.int64)
        filled = self.per_block > 0
        if filled.any():
            out[filled] = np.maximum.reduceat(self.per_instruction, self.first_instruction[filled])
        return out

    def select(self, index: Sequence[int] | np.ndarray) -> Flat:
        """The blocks at `index`, in that order, as a Flat of their own."""
        index = np.asarray(index, dtype=np.int64)
        counts = self.per_block[index]
        ins = _ranges(self.first_instruction[index], counts)
        lengths = self.per_instruction[ins]
        return Flat(self.tokens[_ranges(self.first_token[ins], lengths)], lengths, counts)

    def take(self, index: np.ndarray) -> np.ndarray:
        """The blocks at `index`, padded: (len(index), instructions, tokens) int64, 0 for padding."""
        index = np.asarray(index)
        counts = self.per_block[index]
        ins = _ranges(self.first_instruction[index], counts)  # the instructions of the batch, in order
        lengths = self.per_instruction[ins]
        tok_start = self.first_token[ins]
        out = np.zeros((len(index), int(counts.max(initial=1)), int(lengths.max(initial=1))), dtype=np.int64)
        rows = np.repeat(np.repeat(np.arange(len(index)), counts) * out.shape[1] + _ranges(np.zeros_like(counts), counts),
                         lengths)
        within = _ranges(np.zeros_like(lengths), lengths)
        out.reshape(-1, out.shape[2])[rows, within] = self.tokens[_ranges(tok_start, lengths)]
        return out


def take(blocks: Sequence[Encoded] | Flat, index: Sequence[int] | np.ndarray) -> np.ndarray:
    """The blocks at `index`, padded (`pad`), from lists of token ids or from a `Flat`."""
    return blocks.take(index) if isinstance(blocks, Flat) else pad([blocks[i] for i in index])


def instructions(blocks: Sequence[Encoded] | Flat) -> np.ndarray:
    """Instructions per block."""
    if isinstance(blocks, Flat):
        return blocks.per_block.astype(np.int64)
    return np.fromiter(map(len, blocks), dtype=np.int64, count=len(blocks))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + c) for s, c in zip(starts, counts)), without a Python loop."""
    total = int(counts.sum())
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)


MIN_BATCH = 16  # blocks a batch holds whatever its padded tokens: a call per long block would cost more


def buckets(blocks: Sequence[Encoded] | Flat, batch_size: int = 256, token_budget: int = 32768,
            order: np.ndarray | None = None) -> list[np.ndarray]:
    """Index arrays of batches: similar-length blocks together, at most `batch_size` blocks and
    about `token_budget` padded tokens each (but `MIN_BATCH` blocks at least). `order` (a
    permutation) shuffles ties for training."""
    n_ins = instructions(blocks)
    n_tok = blocks.widths() if isinstance(blocks, Flat) else np.fromiter(
        (max(map(len, b), default=0) for b in blocks), dtype=np.int64, count=len(blocks))
    base = np.arange(len(blocks)) if order is None else np.asarray(order)
    sorted_idx = base[np.lexsort((n_tok[base], n_ins[base]))]  # stable: ties keep `order`
    batches, start = [], 0
    while start < len(sorted_idx):
        end, widest = start + 1, max(n_tok[sorted_idx[start]], 1)
        while end < len(sorted_idx) and end - start < batch_size:
            nxt = sorted_idx[end]
            widest = max(widest, n_tok[nxt])
            if (end - start + 1) * n_ins[nxt] * widest > token_budget and end - start >= MIN_BATCH:
                break
            end += 1
        batches.append(sorted_idx[start:end])
        start = end
    return batches


def run_batched(engine: Callable[..., np.ndarray], blocks: Sequence[Encoded] | Flat, batch_size: int = 256,
                params: np.ndarray | None = None, overlap: bool = False, token_budget: int | None = None,
                lanes: int = 1) -> np.ndarray:
    """An engine's outputs for tokenized blocks, in input order, computed over length buckets of at
    most `token_budget` padded tokens [default: 128 per block of `batch_size`, at least 32,768].
    `params` (one row per block) goes to the engine beside the tokens (conditioned surrogates).
    `overlap`: pad the next batch on a second thread while the engine runs this one (for a GPU
    engine, whose host side would otherwise leave the device idle). `lanes`: batches run this many at
    a time on threads (a CPU engine on many cores: several calls of a few threads each keep the cores
    busier than one call of all of them, whose threads mostly wait on each other at these sizes).
    An engine answers a value per block (cycles), or a row (a confident surrogate's cycles and
    estimated error): so does this."""
    result: np.ndarray | None = None
    batches = buckets(blocks, batch_size, token_budget=token_budget or max(32768, 128 * batch_size))

    def put(index: np.ndarray, out: np.ndarray) -> None:
        nonlocal result
        if result is None:
            result = np.empty((len(blocks), *out.shape[1:]), dtype=np.float64)
        result[index] = out

    def padded(index: np.ndarray) -> np.ndarray:
        return take(blocks, index)

    def run(index: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return engine(tokens) if params is None else engine(tokens, params[index])

    if lanes > 1 and len(batches) > 1:
        with ThreadPoolExecutor(lanes) as pool:
            for index, out in zip(batches, pool.map(lambda i: run(i, padded(i)), batches), strict=True):
                put(index, out)
    elif overlap and len(batches) > 1:
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(padded, batches[0])
            for k, index in enumerate(batches):
                tokens = ahead.result()
                if k + 1 < len(batches):
                    ahead = pool.submit(padded, batches[k + 1])
                put(index, run(index, tokens))
    else:
        for index in batches:
            put(index, run(index, padded(index)))
    return result if result is not None else np.empty(0)


def parts(tokens: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A padded batch of a `dep` tokenizer's rows (b, i, t) as the parts `Dep.encode_parts` reads:
    the batch's distinct instructions, their tokens without the edge tokens, rows (u, w) int64 with
    row 0 all padding; each instruction's row, ins (b, i) int64, 0 for padding; and the edge matrix
    (b, kinds, i, i) float32, the count of edges of each kind from instruction i to its producer j,
    as `Dep.edges` builds it from the tokens. `positions`: the producer positions edge tokens name
    (the model's `max_instructions`)."""
    b, n, _ = tokens.shape
    offset = tokens - EDGE_BASE
    is_edge = (offset >= 0) & (offset < EDGE_KINDS * positions)
    plain = np.where(is_edge, 0, tokens)  # a row's instruction tokens come first, its edge tokens after
    width = max(int(np.count_nonzero(plain, axis=-1).max(initial=0)), 1)
    rows = np.zeros((b * n + 1, width), dtype=np.int64)  # row 0 stays padding
    rows[1:] = plain[:, :, :width].reshape(-1, width)
    hashed = width <= len(_HASH)  # rows wider than the multipliers (a model of max_tokens > 64): whole rows
    if hashed:
        keys = rows @ _HASH[:width]  # wraps around: a hash; a collision is caught below
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if not hashed or not np.array_equal(rows[first][inverse], rows):  # two distinct rows, one key
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    swap = np.arange(len(first))  # the padding row's place moves to 0, whatever its key sorts as
    swap[[0, inverse[0]]] = swap[[inverse[0], 0]]
    ins = swap[inverse.reshape(-1)[1:]].reshape(b, n)
    at_b, at_i, at_t = np.nonzero(is_edge)
    kind, producer = np.divmod(offset[at_b, at_i, at_t], positions)
    keep = producer < n
    flat = ((at_b * EDGE_KINDS + kind) * n + at_i) * n + producer
    edges = np.bincount(flat[keep], minlength=b * EDGE_KINDS * n * n).astype(np.float32)
    return rows[first[swap]], ins, edges.reshape(b, EDGE_KINDS, n, n)
