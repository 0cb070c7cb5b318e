"""Checking and normalizing basic blocks written as AT&T assembly text.

A block is untrusted input that is later pasted, with thousands of others, into one llvm-mca
process. So a block may hold instructions only: no directive (`.include`, `.incbin`, any
statement starting with '.'), no label, no comment (llvm-mca reads its `# LLVM-MCA-BEGIN/END`
region markers from comments, so a comment could re-split the batch), no ';' second statement,
no character outside the operand syntax. Every rejection names the block and line.

The canonical form is one instruction a line, `mnemonic op1, op2` with single spaces; a bare
prefix line (`lock`, `rep`, as llvm-mc prints them) is joined to the instruction it prefixes.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# Characters AT&T operands are made of: registers (%), immediates ($), memory operands
# (parentheses, segment ':'), indirect targets ('*'), AVX-512 masks and broadcasts ({%k1}, {1to8}).
_ALLOWED = re.compile(r"[A-Za-z0-9_%$(),:*+\-. \t{}]*")
# The longest line read (the longest instruction in BHive is 46 characters): a longer one is refused
# without being kept or quoted whole, so line caches stay bounded in bytes and no answer echoes it.
MAX_LINE = 256
PREFIXES = frozenset(
    {"lock", "rep", "repe", "repz", "repne", "repnz", "data16", "data32", "rex64", "notrack", "xacquire", "xrelease", "bnd"}
)


def bounded_memo(limit: int):
    """Memoize a function of one string in a plain dict, emptied when it holds `limit` answers
    (unlike `llvm_tools.remembered`, which keeps a tool's answers for good and retries failures).

    The front end's caches (canonical lines, operands, def-use effects, tokens) hold what the
    garbage collector need not see: strings and tuples of them. `functools.lru_cache` keeps a
    four-item list per entry, and every full collection of a long first pass walked them all."""

    def wrap(fn):
        answers: dict = {}

        @functools.wraps(fn)
        def known(text: str):
            answer = answers.get(text)
            if answer is None:
                if len(answers) >= limit:
                    answers.clear()
                answer = answers[text] = fn(text)
            return answer

        known.cache_clear = answers.clear
        return known

    return wrap


class BlockError(ValueError):
    """A block that cannot be accepted; `str()` names the block and, where known, the line."""

    def __init__(self, reason: str, block: int | None = None, line: int | None = None):
        self.reason, self.block, self.line = reason, block, line
        where = []
        if block is not None:
            where.append(f"block {block}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


def _check_line(line: str) -> None:
    allowed = _ALLOWED.fullmatch(line) is not None  # the common case: no character to look at one by one
    if not allowed:
        if "\x00" in line or any(ord(c) < 32 and c != "\t" for c in line):
            raise BlockError("control character (NUL or similar) in assembly text")
        if "#" in line or "//" in line or "/*" in line:
            raise BlockError("comments are not allowed in a block (they could carry LLVM-MCA region markers)")
        if ";" in line:
            raise BlockError("one instruction per line: ';' is not allowed")
    _check_statement(line.split())
    if not allowed:
        char = next(c for c in line if not _ALLOWED.fullmatch(c))
        raise BlockError(f"unexpected character {char!r} in instruction {line!r}")
    for literal in _LONG_LITERAL.findall(line):
        if int(literal, 16 if literal[:2].lower() == "0x" else 10) >> 64:
            raise BlockError(f"literal {literal} does not fit in 64 bits")


def _check_statement(words: list[str]) -> None:
    """What the assembler will take the line for, decided as its parser does: any prefixes, then a
    word that must be an instruction mnemonic. Anything else is a statement of another kind that
    could change how llvm-mca reads every later block of its run (`a:.if 0` skips them all,
    `a: .code16` re-reads them): a label (a word holding ':', however it goes on), a directive
    (a word starting with '.'), or an assignment. A lone prefix is an instruction of its own."""
    k = 0
    while k < len(words) - 1 and (words[k].lower() in PREFIXES or _PSEUDO_PREFIX.fullmatch(words[k])):
        k += 1
    head = words[k]
    if ":" in head:
        raise BlockError(f"label {head.split(':', 1)[0] + ':'!r} is not allowed in a block")
    if head.startswith("."):
        raise BlockError(f"assembler directive {head!r} is not allowed in a block")
    if head.lower() not in PREFIXES and not _MNEMONIC.fullmatch(head):
        raise BlockError(f"{head[:40]!r} is not an instruction mnemonic")


# A mnemonic as llvm-mc spells them (`vcmplt_oqps`), with the encoding suffixes it accepts (`movl.s`);
# the pseudo-prefixes that choose an encoding (`{vex} vpdpbusd`, `{disp32} movl`) may precede it.
_MNEMONIC = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.(?:s|d8|d32))?")
_PSEUDO_PREFIX = re.compile(r"\{(?:vex|vex2|vex3|evex|load|store|disp8|disp32)\}")
_LONG_LITERAL = re.compile(r"(?<![\w%])(?:0[xX][0-9a-fA-F]{17,}|\d{20,})")  # the only ones that may not fit


def split_operands(text: str) -> list[str]:
    """Split an operand list at commas outside parentheses and braces."""
    pieces = text.split(",")
    if "(" in text or "{" in text:  # rejoin the pieces cut inside (%rsp,%rax,4) or {1to8}
        parts, depth = [], 0
        for piece in pieces:
            if depth:
                parts[-1] += "," + piece
            else:
                parts.append(piece)
            depth += piece.count("(") + piece.count("{") - piece.count(")") - piece.count("}")
        pieces = parts
    return ["".join(p.split()) for p in pieces]


def canonical_operands(text: str) -> list[str]:
    """The operands of a canonical instruction (what follows its mnemonic): `normalize_instruction`
    joins them with ", " and leaves no whitespace inside one, so one split undoes it exactly."""
    return text.split(", ")


def normalize_instruction(line: str) -> str:
    """`"  addq\t%rax,%rbx "` -> `"addq %rax, %rbx"`. Assumes the line passed `_check_line`."""
    words = line.split()
    head = []
    while len(words) > 1 and (words[0].lower() in PREFIXES or _PSEUDO_PREFIX.fullmatch(words[0])):
        head.append(words.pop(0).lower())
    head.append(words[0].lower())
    rest = " ".join(words[1:])
    if not rest:
        return " ".join(head)
    return " ".join(head) + " " + ", ".join(split_operands(rest))


def canonical_line(line: str) -> str | BlockError:
    """One stripped, non-empty line checked and normalized, or why it is refused (returned, not
    raised: `normalize_block` names the block and line). Once per distinct line: real inputs
    repeat instructions a lot; an over-long line is refused without being kept."""
    if len(line) > MAX_LINE:
        return BlockError(f"a line of {len(line):,} characters, over the limit of {MAX_LINE} ({line[:40]!r}...)")
    return _checked_line(line)


@bounded_memo(1 << 16)
def _checked_line(line: str) -> str | BlockError:
    try:
        _check_line(line)
        return normalize_instruction(line)
    except BlockError as exc:
        return exc


def join_prefixes(instructions: list[str]) -> tuple[list[str], list[str]]:
    """Canonical instructions with each bare prefix line (`lock`, `rep`) joined to the instruction
    it prefixes, and the prefixes left over at the end with nothing to prefix."""
    out: list[str] = []
    pending: list[str] = []
    for instruction in instructions:
        if instruction in PREFIXES:
            pending.append(instruction)
        else:
            out.append(" ".join([*pending, instruction]))
            pending = []
    return out, pending


def normalize_block(text: str, index: int | None = None, max_instructions: int | None = None) -> str:
    """Check a block and return its canonical text, or raise BlockError naming block and line."""
    instructions: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        instruction = canonical_line(line)
        if isinstance(instruction, BlockError):
            raise BlockError(instruction.reason, index, number)
        instructions.append(instruction)
    out, dangling = join_prefixes(instructions)
    if dangling:
        out.append(" ".join(dangling))
    if not out:
        raise BlockError("empty block (no instructions)", index)
    if max_instructions is not None and len(out) > max_instructions:
        raise BlockError(f"{len(out)} instructions, more than the limit of {max_instructions}", index)
    return "\n".join(out)


SEPARATOR = re.compile(r"\n[ \t]*\n")  # blocks in a text file are separated by blank lines


def split_asm_text(text: str) -> list[str]:
    """Blocks of a text file: separated by one or more blank lines."""
    return [b for b in SEPARATOR.split(text.replace("\r\n", "\n")) if b.strip()]


def read_asm_file(path: str | Path) -> list[str]:
    """The raw (not yet checked) blocks of an assembly text file."""
    return split_asm_text(Path(path).read_text(encoding="utf-8", errors="replace"))
