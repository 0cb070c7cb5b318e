"""Blocks a user hands in: a file of assembly text or a CSV, and a small built-in sample.

`read_blocks(path)` takes a CSV with a `block` column (assembly) or a `hex` column (machine code,
disassembled with llvm-mc), else a text file of assembly blocks separated by blank lines, and
returns the blocks with the reason for each one that could not be read (its place keeps "").
"""

from __future__ import annotations

import csv

from surrogate_ops.blocks.asm import read_asm_file
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


def read_blocks(path: str) -> tuple[list[str], dict[int, str]]:
    """Blocks from an input file, and the reason for each block that could not be read."""
    if path.endswith(".csv"):
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
        if "block" in columns:
            return [r["block"] for r in rows], {}
        if "hex" in columns:
            result = disassemble([r["hex"].strip().lower() for r in rows])
            return [b or "" for b in result.blocks], result.errors
        raise SurrogateOpsError(f"{path}: a CSV needs a 'block' or 'hex' column")
    return read_asm_file(path), {}
