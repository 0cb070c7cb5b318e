"""Canonical blocks back to machine code: what `measure` runs for blocks that came as text.

One llvm-mc call (`-show-encoding`) assembles many blocks: every canonical line is one instruction and
gets one encoding, so the encodings are dealt back to their blocks by count. A line llvm-mc refuses
(named on stderr by its line number) leaves its block without machine code, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from surrogate_ops.llvm_tools import find_tool, run_tool

ENCODING = re.compile(r"# encoding: \[([^\]]*)\]")
REFUSED = re.compile(r"^<stdin>:(\d+):\d+: error: (.*)$", re.M)
CHUNK = 2000  # blocks an llvm-mc call assembles


def assemble(blocks: Sequence[str], timeout: float = 120) -> list[tuple[str | None, str | None]]:
    """(hex, None) for each block llvm-mc assembles, (None, reason) for one it refuses, in order."""
    out: list[tuple[str | None, str | None]] = []
    for start in range(0, len(blocks), CHUNK):
        out += _chunk(list(blocks[start:start + CHUNK]), timeout)
    return out


def _chunk(blocks: list[str], timeout: float) -> list[tuple[str | None, str | None]]:
    lines = [block.split("\n") for block in blocks]
    text = "".join(line + "\n" for block in lines for line in block)
    proc = run_tool([find_tool("llvm-mc"), "-triple=x86_64", "-show-encoding"], text, timeout=timeout)
    refused = {int(n): why for n, why in REFUSED.findall(proc.stderr)}
    encodings = iter(ENCODING.findall(proc.stdout))
    answers: list[tuple[str | None, str | None]] = []
    number = 0  # the input's line number, from 1
    for block in lines:
        code, why = [], None
        for _ in block:
            number += 1
            if number in refused:
                why = why or f"llvm-mc: {refused[number]} (line {len(code) + 1})"
                continue
            code.append("".join(f"{int(b, 16):02x}" for b in next(encodings, "").split(",") if b))
        answers.append((None, why) if why else ("".join(code), None))
    return answers
