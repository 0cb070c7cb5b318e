"""Blocks a user hands in: a file of assembly text or a CSV, and a small built-in sample.

`read_blocks(path)` takes a CSV with a `block` column (assembly) or a `hex` column (machine code,
disassembled with llvm-mc), else a text file of assembly blocks separated by blank lines, and
returns the blocks with the reason for each one that could not be read (its place keeps "").
`chunks(path, size)` reads the same files a chunk at a time, so a file of millions of blocks is
never held whole, nor is a block without an end: one past `MAX_BLOCK_LINES`, `MAX_BLOCK_CHARS` or a
line of `asm.MAX_LINE` is refused as soon as it passes, and read past up to the next blank line.
A file that is not text, or holds no block, is refused before the first chunk.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field

from surrogate_ops.blocks.asm import MAX_LINE, SEPARATOR, BlockError, split_asm_text
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError

# Real blocks of the kinds a surrogate meets (arithmetic chains, loads and stores, addresses, a
# divide, vectors, stack traffic, flags), for checks that need blocks and have no dataset.
SAMPLE_BLOCKS = (
    "addq %rax, %rbx\nimulq %rcx, %rdx",
    "movq (%rdi), %rax\naddq $1, %rax\nmovq %rax, 8(%rdi)",
    "leaq 16(%rsp), %rsi\nleaq 32(%r15), %rdi\nmovl $8, %edx\nmovq %r10, 8(%rsp)",
    "xorl %eax, %eax\ndivq %rcx",
    "vmulps %ymm0, %ymm1, %ymm2\nvaddps %ymm2, %ymm3, %ymm3\nvmovaps %ymm3, (%rdi,%rcx,4)",
    "pushq %rbx\npopq %rbx",
    "cmpb $23, 16(%rsi)\ncmovbeq %r8, %rsi\ntestq %rsi, %rsi\nsete %r9b",
)


@dataclass
class Chunk:
    start: int  # the index of its first block in the file
    blocks: list[str]
    unreadable: dict[int, str] = field(default_factory=dict)  # index within the chunk -> reason


# What one block of a text file may hold. A file is not a request (`predict` sends a block over the
# model's limit to llvm-mca), but a block is held whole to be answered: a file without blank lines
# would otherwise be read whole (200 MB took 4.29 GB and two minutes before its error, issue 29).
MAX_BLOCK_LINES = 1 << 16  # instructions (lines)
MAX_BLOCK_CHARS = 1 << 22  # characters, as a service request's assembly (serving.Limits.max_bytes)
SNIFF = 1 << 16  # bytes looked at to tell text from a binary file
HINT = ("predict reads assembly blocks separated by blank lines, or a CSV with a block column (assembly) or a "
        "hex column (machine code); the blocks of an ELF binary are cut out by `surrogate-ops collect --binary`")


def read_blocks(path: str) -> tuple[list[str], dict[int, str]]:
    """Blocks from an input file, and the reason for each block that could not be read."""
    blocks: list[str] = []
    unreadable: dict[int, str] = {}
    for chunk in chunks(path):
        unreadable.update((chunk.start + i, reason) for i, reason in chunk.unreadable.items())
        blocks += chunk.blocks
    return blocks, unreadable


def chunks(path: str, size: int = 50_000, read_size: int = 1 << 22) -> Iterator[Chunk]:
    """The file's blocks, at most `size` at a time, in order (a text file read `read_size` characters
    at a time). A file that is not text, or holds no block, is refused (SurrogateOpsError) before the
    first chunk; a block over `MAX_BLOCK_LINES` or `MAX_BLOCK_CHARS`, or with a line over
    `asm.MAX_LINE` that it is still reading, is refused as soon as it passes (its place keeps "", its
    reason names it and the line), the rest of it read past without being kept."""
    _check_text(path)
    reader = _csv_chunks(path, size) if str(path).endswith(".csv") else _text_chunks(path, size, read_size)
    empty = True
    for chunk in reader:
        empty = empty and not chunk.blocks
        yield chunk
    if empty:
        raise SurrogateOpsError(f"{path} holds no block: {HINT}")


def _check_text(path: str) -> None:
    """Refuse a file whose first bytes are not UTF-8 text (a binary passed as assembly)."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF)
    nul = head.find(b"\0")
    if nul >= 0:
        raise SurrogateOpsError(f"{path} is a binary file, not text (a NUL byte at byte {nul:,}): {HINT}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is whole
    except UnicodeDecodeError as exc:
        raise SurrogateOpsError(f"{path} is not UTF-8 text (byte {exc.start:,}): {HINT}") from None


def _text_chunks(path: str, size: int, read_size: int) -> Iterator[Chunk]:
    start = 0
    for blocks in _text_blocks(path, read_size):
        for offset in range(0, len(blocks), size):
            part = blocks[offset:offset + size]
            refused = {i: str(BlockError(b.reason, start + i, b.line)) for i, b in enumerate(part)
                       if isinstance(b, BlockError)}
            for i in refused:
                part[i] = ""
            yield Chunk(start, part, refused)
            start += len(part)


def _text_blocks(path: str, read_size: int) -> Iterator[list[str | BlockError]]:
    """The blocks of a text file, a read at a time: whole blocks, and a BlockError (with its line,
    not its place) for each refused one."""
    buffer, skipping = "", False  # the block being read (ends at the next blank line); a refused block's rest
    with open(path, encoding="utf-8", errors="replace") as handle:  # universal newlines: \r\n reads as \n
        while True:
            text = handle.read(read_size)
            buffer += text
            blocks: list[str | BlockError] = []
            if skipping:  # past a refused block's rest: nothing of it is kept
                found = SEPARATOR.search(buffer)
                if found is None:
                    buffer = _blank_start(buffer)
                    if not text:
                        return
                    continue
                buffer, skipping = buffer[found.end():], False
            ends = [m.end() for m in SEPARATOR.finditer(buffer)] if text else [len(buffer)]
            if ends:  # up to the last blank line the blocks are whole; the rest waits for the next read
                blocks += [b if len(b) <= 2 * MAX_BLOCK_LINES else _over(b) or b  # shorter ones are within both
                           for b in split_asm_text(buffer[:ends[-1]])]
                buffer = buffer[ends[-1]:]
            refused = _over(buffer, reading=True) if text and buffer.strip() else None
            if refused is not None:
                blocks.append(refused)
                buffer, skipping = _blank_start(buffer), True
            if blocks:
                yield blocks
            if not text:
                return


def _over(block: str, reading: bool = False) -> BlockError | None:
    """Why a block (or the start of one still being read) is refused for its size, else None. A
    whole block's long lines are left to the checks every block passes (`asm.canonical_line`)."""
    if len(block) > MAX_BLOCK_CHARS:
        return BlockError(f"over {MAX_BLOCK_CHARS:,} characters without a blank line (blocks are separated by "
                          "blank lines)", None, block.count("\n", 0, MAX_BLOCK_CHARS) + 1)
    if len(block) > 2 * MAX_BLOCK_LINES and block.count("\n") >= MAX_BLOCK_LINES:  # a shorter one has fewer lines
        return BlockError(f"over {MAX_BLOCK_LINES:,} lines without a blank line (blocks are separated by blank "
                          "lines)", None, MAX_BLOCK_LINES + 1)
    last = block.rfind("\n") + 1
    if reading and len(block) - last > MAX_LINE:  # the line still being read is already too long
        return BlockError(f"a line of more than {MAX_LINE} characters, the limit ({block[last:last + 40]!r}...)",
                          None, block.count("\n", 0, last) + 1)
    return None


def _blank_start(text: str) -> str:
    """What of `text` may begin a blank line that the next read ends: its last newline, if only
    spaces and tabs follow it."""
    last = text.rfind("\n")
    return "\n" if last >= 0 and not text[last + 1:].strip(" \t") else ""


def _csv_chunks(path: str, size: int) -> Iterator[Chunk]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        column = "block" if "block" in columns else "hex" if "hex" in columns else None
        if column is None:
            raise SurrogateOpsError(f"{path}: a CSV needs a 'block' or 'hex' column")
        start, rows = 0, []
        try:
            for row in reader:
                rows.append(row[column] or "")
                if len(rows) == size:
                    yield _csv_chunk(start, rows, column)
                    start, rows = start + len(rows), []
        except csv.Error as exc:  # a field over csv's limit (128 KB), a quote that never closes
            raise SurrogateOpsError(f"{path}: block {start + len(rows):,} (line {reader.reader.line_num:,}): {exc}") from None
        if rows:
            yield _csv_chunk(start, rows, column)


def _csv_chunk(start: int, rows: list[str], column: str) -> Chunk:
    if column == "block":
        return Chunk(start, rows)
    result = disassemble([h.strip().lower() for h in rows])
    return Chunk(start, [b or "" for b in result.blocks], result.errors)
