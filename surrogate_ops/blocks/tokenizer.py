"""Canonical tokens for x86 instructions, and the vocabulary saved with every model.

An instruction becomes a short token sequence: prefixes and mnemonic, then per operand its
structure: registers by name, small immediates by value (shift counts, lea scales matter) and
others as `$IMM`, memory operands as `[ seg base index *scale DISP ]`. Tokens the vocabulary has
not seen map to `<UNK>`, and `unknown()` lists them so a caller (the service's fallback policy)
can decide not to trust the surrogate.

A vocabulary of format v2 (every surrogate trained since issue 31) also backs off: a token it has
not seen is read as its relative's token before it is called unknown. An unseen mnemonic becomes
its family (`vpmaddubsw` -> `~pmaddubs`, `cmovew` -> `~cmov`, `shldl` -> `~shld`), an unseen
register its class (`%spl` -> `<gpr8>`, `%xmm17` -> `<xmm>`), an unseen immediate `$IMM`, an
unseen mask `<mask>`. The vocabulary holds the family and class of every token it was built
from, and training reads a token as its relative now and then (`backoff_ids`), so a form never
seen in training lands near its relatives; only a token with no known relative is `<UNK>`, and
only `<UNK>` makes the service fall back. A v1 vocabulary (older surrogates) does not back off.

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
FORMAT_V1 = "surrogate-ops/x86-att-v1"
FORMAT = "surrogate-ops/x86-att-v2"  # v1's tokens, with backoff to relatives (`relative`)
FORMATS = (FORMAT_V1, FORMAT)
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


_CONDITIONS = ("o", "no", "b", "nb", "c", "nc", "nae", "ae", "e", "z", "ne", "nz", "be", "na", "a", "nbe", "s", "ns",
               "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng", "g", "nle")
_INTEGER_STEMS = frozenset((
    "add adc sub sbb and or xor cmp test mov inc dec neg not imul mul div idiv shl shr sal sar rol ror rcl rcr shld "
    "shrd lea bsf bsr bt bts btr btc xchg xadd cmpxchg push pop movs stos lods cmps scas bswap popcnt lzcnt tzcnt "
    "andn bextr blsi blsmsk blsr bzhi pdep pext sarx shlx shrx rorx mulx adcx adox crc32 movbe movzb movzw movsb "
    "movsw movsl cmov set").split())
_FP_SUFFIXES = ("ps", "pd", "ss", "sd")
_OTHER_REGISTERS = (  # (pattern, class): registers other than general-purpose and vector ones
    (re.compile(r"^%k\d$"), "<k>"),
    (re.compile(r"^%mm\d$"), "<mm>"),
    (re.compile(r"^%st(?:\(\d\))?$"), "<st>"),
    (re.compile(r"^%[cdefgs]s$"), "<seg>"),
)


@bounded_memo(1 << 14)
def relative(token: str) -> str | None:
    """The token an unseen `token` backs off to (v2 vocabularies), or None: a mnemonic's family, a
    register's class, `$IMM` for an immediate, `<mask>` for an AVX-512 mask or rounding mode."""
    if not token or token[0] in "<[],*~" or token in ("DISP", "ADDR", "$IMM"):
        return None
    if token[0] == "$":
        return "$IMM"
    if token[0] == "{":
        return "<mask>"
    if token.endswith(":"):  # a segment override inside a memory operand
        return "<seg>:"
    if token[0] == "%":
        return _register_class(token)
    return "~" + _family(token)


def _register_class(register: str) -> str:
    name = register[1:].split(":")[0]
    if name.startswith(("xmm", "ymm", "zmm")):
        return f"<{name[:3]}>"
    if name in ("al", "bl", "cl", "dl", "sil", "dil", "bpl", "spl") or re.fullmatch(r"r\d+b", name):
        return "<gpr8>"
    if name in ("ah", "bh", "ch", "dh"):
        return "<gpr8h>"
    if name in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp") or re.fullmatch(r"r\d+w", name):
        return "<gpr16>"
    if re.fullmatch(r"e(?:ax|bx|cx|dx|si|di|bp|sp)|r\d+d", name):
        return "<gpr32>"
    if re.fullmatch(r"r(?:ax|bx|cx|dx|si|di|bp|sp|ip)|r\d+", name):
        return "<gpr64>"
    for pattern, kind in _OTHER_REGISTERS:
        if pattern.match(register):
            return kind
    return "<reg>"


def _family(mnemonic: str) -> str:
    """A mnemonic's family: condition codes, operand sizes, element types and the VEX `v` taken off
    (`cmovnew` -> `cmov`, `addq` -> `add`, `vpaddusw` -> `paddus`, `vfmadd231ps` -> `fmadd231`)."""
    for stem in ("cmov", "set", "j"):
        if mnemonic.startswith(stem):
            rest = mnemonic[len(stem):]
            if rest in _CONDITIONS or (rest[:-1] in _CONDITIONS and rest[-1:] in "bwlq" and stem != "j"):
                return stem
    if mnemonic[-1:] in "bwlq" and mnemonic[:-1] in _INTEGER_STEMS:
        return mnemonic[:-1]
    if mnemonic in _INTEGER_STEMS:
        return mnemonic
    base = mnemonic[1:] if mnemonic.startswith("v") and len(mnemonic) > 4 else mnemonic
    base = base.rstrip("0123456789xyz") if base[-1:].isdigit() and base.startswith(("movdq", "broadcast", "pbroadcast",
                                                                                     "extract", "insert", "perm")) else base
    if base.startswith("p") and base[-1:] in "bwdq" and len(base) > 4:  # packed integers: the element size
        return base[:-1]
    for suffix in _FP_SUFFIXES:
        if base.endswith(suffix) and len(base) > 4:
            return base[:-2]
    return base


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


def _token_counts(blocks: Iterable[str], lines_per_flush: int = 1 << 20) -> Counter[str]:
    """How often each token occurs in `blocks` (an iterable read once: a dataset streamed from disk
    works). Lines are counted first and tokenized once per distinct line, a million lines at a
    time, so that ten million blocks cost a pass of string counting, not a tokenizer call per line."""
    counts: Counter[str] = Counter()
    lines: Counter[str] = Counter()

    def flush() -> None:
        for line, n in lines.items():
            for token in instruction_tokens(line):
                counts[token] += n
        lines.clear()

    for block in blocks:
        lines.update(block.split("\n"))
        if len(lines) >= lines_per_flush:
            flush()
    flush()
    return counts


class Tokenizer:
    """Maps canonical instructions to token ids; built from data, saved and loaded as JSON.

    `max_tokens` is the width of an instruction's row: with `max_deps`, up to `max_deps` edge tokens
    follow at most `max_tokens - max_deps` instruction tokens; `positions` is the longest block the
    edge tokens can name."""

    def __init__(self, vocab: dict[str, int], max_tokens: int = 16, max_deps: int = 0, positions: int = 0,
                 format: str = FORMAT):
        if any(vocab.get(s) != i for i, s in enumerate(SPECIALS)):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if max_deps and any(vocab.get(s) != i for i, s in enumerate(dependency_tokens(positions), len(SPECIALS))):
            raise ValueError("a vocabulary with dependencies must hold the edge tokens right after the specials")
        if format not in FORMATS:
            raise ValueError(f"vocabulary format {format!r} is not one of {', '.join(FORMATS)}")
        self.vocab = vocab
        self.format = format
        self.backs_off = format != FORMAT_V1
        self.max_tokens = max_tokens
        self.max_deps, self.positions = max_deps, positions
        self._width = max_tokens - max_deps  # instruction tokens per row
        self._edge_offsets = [len(SPECIALS) + k * positions for k in range(len(deps.KINDS))]  # as dependency_tokens
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def build(cls, blocks: Iterable[str], min_count: int = 1, max_tokens: int = 16, max_deps: int = 0,
              positions: int = 0) -> Tokenizer:
        counts = _token_counts(blocks)
        tokens = {t for t, c in counts.items() if c >= min_count}
        tokens = sorted(tokens | {r for r in map(relative, tokens) if r})  # every token's relative, for backoff
        edges = dependency_tokens(positions) if max_deps else []
        return cls({t: i for i, t in enumerate([*SPECIALS, *edges, *tokens])}, max_tokens, max_deps, positions)

    def extend(self, blocks: Iterable[str], min_count: int = 1) -> list[str]:
        """Add tokens not yet in the vocabulary (new ids after the old ones); returns the added tokens."""
        counts = _token_counts(blocks)
        added = {t for t, c in counts.items() if c >= min_count and t not in self.vocab}
        if self.backs_off:
            added |= {r for r in map(relative, [*added, *self.vocab]) if r and r not in self.vocab}
        added = sorted(added)
        for token in added:
            self.vocab[token] = len(self.vocab)
        self._cache.clear()
        return added

    def __len__(self) -> int:
        return len(self.vocab)

    def encode_instruction(self, instruction: str) -> tuple[int, ...]:
        ids = self._cache.get(instruction)
        if ids is None:
            vocab, unk = self.vocab, self.vocab[UNK]
            tokens = instruction_tokens(instruction)[: self._width]
            if self.backs_off:
                ids = tuple(vocab[t] if t in vocab else vocab.get(relative(t), unk) for t in tokens)
            else:
                ids = tuple(vocab.get(t, unk) for t in tokens)
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
        """Tokens of the block that the vocabulary lacks, and (v2) whose relative it lacks too."""
        vocab = self.vocab
        return [t for line in block.split("\n") for t in instruction_tokens(line)
                if t not in vocab and not (self.backs_off and relative(t) in vocab)]

    def backed_off(self, block: str) -> list[str]:
        """Tokens of the block read as their relative (v2): seen in no training, encoded all the same."""
        vocab = self.vocab
        return [t for line in block.split("\n") for t in instruction_tokens(line)
                if t not in vocab and self.backs_off and relative(t) in vocab]

    def backoff_ids(self) -> list[int]:
        """Per id, the id its token backs off to (itself when it has no relative in the vocabulary):
        training swaps a share of tokens for their relative so the relatives learn what they stand for."""
        table = list(range(len(self.vocab)))
        if self.backs_off:
            for token, i in self.vocab.items():
                r = relative(token)
                if r is not None and r in self.vocab:
                    table[i] = self.vocab[r]
        return table

    def upgraded(self) -> Tokenizer:
        """This vocabulary as format v2 (same ids, the relatives of its tokens added after them): a
        v1 surrogate fine-tuned today keeps what it learned and gains backoff."""
        if self.backs_off:
            return self
        vocab = dict(self.vocab)
        for token in sorted({r for r in map(relative, self.vocab) if r} - set(vocab)):
            vocab[token] = len(vocab)
        return Tokenizer(vocab, self.max_tokens, self.max_deps, self.positions, FORMAT)

    def to_dict(self) -> dict:
        return {"format": self.format, "max_tokens": self.max_tokens, "vocab": self.vocab,
                **({"max_deps": self.max_deps, "positions": self.positions} if self.max_deps else {})}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if data.get("format") not in FORMATS:
            raise ValueError(f"vocabulary format {data.get('format')!r} is not one of {', '.join(FORMATS)}")
        return cls(dict(data["vocab"]), int(data["max_tokens"]), int(data.get("max_deps", 0)),
                   int(data.get("positions", 0)), data["format"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
