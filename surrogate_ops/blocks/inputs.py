"""Blocks a user hands in: a file of assembly text or a CSV, and a small built-in sample.

`read_blocks(path)` takes a CSV with a `block` column (assembly) or a `hex` column (machine code,
disassembled with llvm-mc), else a text file of assembly blocks separated by blank lines, and
returns the blocks with the reason for each one that could not be read (its place keeps "").
`chunks(path, size)` reads the same files a chunk at a time, so a file of millions of blocks is
never held whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from surrogate_ops.blocks.asm import SEPARATOR, split_asm_text
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


def read_blocks(path: str) -> tuple[list[str], dict[int, str]]:
    """Blocks from an input file, and the reason for each block that could not be read."""
    blocks: list[str] = []
    unreadable: dict[int, str] = {}
    for chunk in chunks(path):
        unreadable.update((chunk.start + i, reason) for i, reason in chunk.unreadable.items())
        blocks += chunk.blocks
    return blocks, unreadable


def chunks(path: str, size: int = 50_000, read_size: int = 1 << 22) -> Iterator[Chunk]:
    """The file's blocks, at most `size` at a time, in order (a text file read `read_size` characters at a time)."""
    if str(path).endswith(".csv"):
        yield from _csv_chunks(path, size)
        return
    start, buffer = 0, ""
    with open(path, encoding="utf-8", errors="replace") as handle:  # universal newlines: \r\n reads as \n
        while True:
            text = handle.read(read_size)
            buffer += text
            ends = [m.end() for m in SEPARATOR.finditer(buffer)] if text else [len(buffer)]
            if ends:  # up to the last blank line the blocks are whole; the rest waits for the next read
                blocks, buffer = split_asm_text(buffer[:ends[-1]]), buffer[ends[-1]:]
                for offset in range(0, len(blocks), size):
                    part = blocks[offset:offset + size]
                    yield Chunk(start, part)
                    start += len(part)
            if not text:
                return


def _csv_chunks(path: str, size: int) -> Iterator[Chunk]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        column = "block" if "block" in columns else "hex" if "hex" in columns else None
        if column is None:
            raise SurrogateOpsError(f"{path}: a CSV needs a 'block' or 'hex' column")
        start, rows = 0, []
        for row in reader:
            rows.append(row[column] or "")
            if len(rows) == size:
                yield _csv_chunk(start, rows, column)
                start, rows = start + len(rows), []
        if rows or not start:
            yield _csv_chunk(start, rows, column)


def _csv_chunk(start: int, rows: list[str], column: str) -> Chunk:
    if column == "block":
        return Chunk(start, rows)
    result = disassemble([h.strip().lower() for h in rows])
    return Chunk(start, [b or "" for b in result.blocks], result.errors)
