"""Canonical tokens for x86 instructions, and the vocabulary saved with every model.

An instruction becomes a short token sequence: prefixes and mnemonic, then per operand its
structure: registers by name, small immediates by value (shift counts, lea scales matter) and
others as `$IMM`, memory operands as `[ seg base index *scale DISP ]`. Tokens the vocabulary has
not seen map to `<UNK>`, and `unknown()` lists them so a caller (the service's fallback policy)
can decide not to trust the surrogate.

Tokenizing sits on the serving hot path, and real blocks repeat instructions a lot, so encoding
is cached per distinct instruction string.

A tokenizer made with `max_deps` also appends to each instruction's row its def-use edges
(`blocks.deps`): one token per edge, `<reg:j>`, `<reg-carried:j>`, `<mem:j>` or `<mem-carried:j>`
naming the producing instruction j. Those tokens hold fixed ids right after the specials, in
`dependency_tokens` order (id = 2 + kind * positions + j), so a model can turn them back into an
edge matrix with tensor arithmetic alone (see `models/dep.py`) and still take one input.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from surrogate_ops.blocks import deps
from surrogate_ops.blocks.asm import PREFIXES, bounded_memo, canonical_operands

PAD, UNK = "<PAD>", "<UNK>"
SPECIALS = (PAD, UNK)
FORMAT = "surrogate-ops/x86-att-v1"
_MEMORY = re.compile(r"^(?:(%\w+):)?([^(]*)\((%\w+)?(?:,(%\w+)?(?:,(\d+))?)?\)$")
_SMALL_IMMEDIATES = range(-1, 17)
_CACHE_LIMIT = 1 << 16  # instructions whose ids are remembered (the predictor's line cache sits above)


@bounded_memo(1 << 14)
def _operand_tokens(operand: str) -> tuple[str, ...]:
    """The tokens of one operand; operands repeat far more than instructions do."""
    tokens: list[str] = []
    if operand.startswith("*"):
        tokens.append("*")
        operand = operand[1:]
    masks = re.findall(r"\{[^}]*\}", operand) if "{" in operand else []
    operand = re.sub(r"\{[^}]*\}", "", operand).strip() if masks else operand.strip()
    if operand.startswith("%") and ":" not in operand:
        tokens.append(operand)
    elif operand.startswith("$"):
        try:
            value = int(operand[1:], 0)
        except ValueError:
            value = None
        tokens.append(f"${value}" if value in _SMALL_IMMEDIATES else "$IMM")
    else:
        match = _MEMORY.match(operand)
        if match:
            segment, disp, base, index, scale = match.groups()
            tokens.append("[")
            tokens.extend(t for t in (segment and segment + ":", base or (index and "_"), index) if t)
            if scale and scale != "1":
                tokens.append(f"*{scale}")
            if disp and disp not in ("0", "-0"):
                tokens.append("DISP")
            tokens.append("]")
        elif ":" in operand:  # %fs:40 (segment with absolute address)
            segment = operand.split(":", 1)[0]
            tokens.extend(["[", segment + ":", "DISP", "]"])
        elif operand:
            tokens.append("ADDR")
    tokens.extend(masks)
    return tuple(tokens)


def instruction_tokens(instruction: str) -> list[str]:
    """`"addq $8, 16(%rsp,%rax,4)"` -> `["addq", "$8", ",", "[", "%rsp", "%rax", "*4", "DISP", "]"]`."""
    words = instruction.split()
    tokens: list[str] = []
    while len(words) > 1 and words[0] in PREFIXES:
        tokens.append(words.pop(0))
    if words:
        tokens.append(words.pop(0))
    if words:
        for k, operand in enumerate(canonical_operands(" ".join(words))):
            if k:
                tokens.append(",")
            tokens.extend(_operand_tokens(operand))
    return tokens


def dependency_tokens(positions: int) -> list[str]:
    """The edge tokens of a tokenizer for blocks of up to `positions` instructions, in id order."""
    return [f"<{kind}:{j}>" for kind in deps.KINDS for j in range(positions)]


class Tokenizer:
    """Maps canonical instructions to token ids; built from data, saved and loaded as JSON.

    `max_tokens` is the width of an instruction's row: with `max_deps`, up to `max_deps` edge tokens
    follow at most `max_tokens - max_deps` instruction tokens; `positions` is the longest block the
    edge tokens can name."""

    def __init__(self, vocab: dict[str, int], max_tokens: int = 16, max_deps: int = 0, positions: int = 0):
        if any(vocab.get(s) != i for i, s in enumerate(SPECIALS)):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if max_deps and any(vocab.get(s) != i for i, s in enumerate(dependency_tokens(positions), len(SPECIALS))):
            raise ValueError("a vocabulary with dependencies must hold the edge tokens right after the specials")
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.max_deps, self.positions = max_deps, positions
        self._width = max_tokens - max_deps  # instruction tokens per row
        self._edge_offsets = [len(SPECIALS) + k * positions for k in range(len(deps.KINDS))]  # as dependency_tokens
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def build(cls, blocks: Iterable[str], min_count: int = 1, max_tokens: int = 16, max_deps: int = 0,
              positions: int = 0) -> Tokenizer:
        counts: Counter[str] = Counter()
        for block in blocks:
            for line in block.split("\n"):
                counts.update(instruction_tokens(line))
        tokens = sorted(t for t, c in counts.items() if c >= min_count)
        edges = dependency_tokens(positions) if max_deps else []
        return cls({t: i for i, t in enumerate([*SPECIALS, *edges, *tokens])}, max_tokens, max_deps, positions)

    def extend(self, blocks: Iterable[str], min_count: int = 1) -> list[str]:
        """Add tokens not yet in the vocabulary (new ids after the old ones); returns the added tokens."""
        counts: Counter[str] = Counter()
        for block in blocks:
            for line in block.split("\n"):
                counts.update(t for t in instruction_tokens(line) if t not in self.vocab)
        added = sorted(t for t, c in counts.items() if c >= min_count)
        for token in added:
            self.vocab[token] = len(self.vocab)
        self._cache.clear()
        return added

    def __len__(self) -> int:
        return len(self.vocab)

    def encode_instruction(self, instruction: str) -> tuple[int, ...]:
        ids = self._cache.get(instruction)
        if ids is None:
            unk = self.vocab[UNK]
            ids = tuple(self.vocab.get(t, unk) for t in instruction_tokens(instruction)[: self._width])
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[instruction] = ids
        return ids

    def encode_block(self, block: str) -> list[tuple[int, ...]]:
        """Token ids per instruction of a canonical block (see `blocks.normalize_block`)."""
        lines = block.split("\n")
        ids = [self.encode_instruction(line) for line in lines]
        return self.add_dependencies(ids, lines) if self.max_deps else ids

    def add_dependencies(self, ids: list[tuple[int, ...]], instructions: list[str]) -> list[tuple[int, ...]]:
        """Each row with its edge tokens appended (at most `max_deps`, in-iteration before carried);
        blocks longer than `positions` get none."""
        if not self.max_deps or len(instructions) > self.positions:
            return ids
        return self.add_edges(ids, [deps.uses_defs(line) for line in instructions])

    def add_edges(self, ids: list[tuple[int, ...]], effects: list[deps.UsesDefs]) -> list[tuple[int, ...]]:
        """`add_dependencies` from each instruction's effects, already known (the predictor keeps them per line)."""
        if not self.max_deps or len(effects) > self.positions:
            return ids
        offsets, most = self._edge_offsets, self.max_deps
        return [row + tuple([offsets[kind] + j for kind, j in mine[:most]]) if mine else row
                for row, mine in zip(ids, deps.links(effects), strict=True)]

    def unknown(self, block: str) -> list[str]:
        """Tokens of the block that the vocabulary lacks."""
        return [t for line in block.split("\n") for t in instruction_tokens(line) if t not in self.vocab]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "max_tokens": self.max_tokens, "vocab": self.vocab,
                **({"max_deps": self.max_deps, "positions": self.positions} if self.max_deps else {})}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if data.get("format") != FORMAT:
            raise ValueError(f"vocabulary format {data.get('format')!r} is not {FORMAT!r}")
        return cls(dict(data["vocab"]), int(data["max_tokens"]), int(data.get("max_deps", 0)),
                   int(data.get("positions", 0)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
