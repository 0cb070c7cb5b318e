"""Blocks from hex machine code (the BHive format), disassembled by llvm-mc in batches.

One llvm-mca process disassembles thousands of blocks: each block is written on its own input line
followed by a `ud2` (0x0f 0x0b) separator, and the output is split at the ud2 lines. When the
pieces do not come out one per block (a block holding a ud2 of its own, or one whose last
instruction is cut short and swallows the separator), the batch is bisected until each block is
disassembled alone. Undecodable bytes make llvm-mc warn with the input line, which names the
block (or the one before it, when a cut-short instruction ran over): those are checked alone.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from surrogate_ops.blocks.asm import PREFIXES, normalize_instruction
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import find_tool

_WARNING = re.compile(r"^<stdin>:(\d+):\d+: (?:warning|error): (.*)$", re.MULTILINE)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


@dataclass(frozen=True)
class Disassembly:
    """Canonical assembly per input block (None where it failed) and the reason for each failure."""

    blocks: list[str | None]
    errors: dict[int, str]


def _run_llvm_mc(llvm_mc: str, hexes: list[str]) -> tuple[str, str]:
    lines = [" ".join(f"0x{h[i:i + 2]}" for i in range(0, len(h), 2)) + " 0x0f 0x0b" for h in hexes]
    proc = subprocess.run(
        [llvm_mc, "--disassemble", "-triple=x86_64", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60 + len(hexes) // 100,
    )
    if proc.returncode != 0 and not proc.stdout:
        raise SurrogateOpsError(f"llvm-mc failed: {proc.stderr.strip()[:500]}")
    return proc.stdout, proc.stderr


def _pieces(stdout: str) -> list[list[str]]:
    """llvm-mc's output split at ud2 lines, each piece's instructions canonical, prefixes joined."""
    pieces: list[list[str]] = [[]]
    prefix: list[str] = []
    for raw in stdout.splitlines():
        if not raw.startswith("\t") or raw.startswith("\t."):
            continue
        text = normalize_instruction(raw.split("#", 1)[0])  # drop llvm-mc's "# imm = 0x.." notes
        if text == "ud2" and not prefix:
            pieces.append([])
        elif text in PREFIXES:
            prefix.append(text)
        else:
            pieces[-1].append(" ".join([*prefix, text]))
            prefix = []
    return pieces


def _batch(tool: str, hexes: list[str], index: list[int], out: Disassembly) -> None:
    """Disassemble blocks `index`; blocks that llvm-mc warns about are retried alone."""
    stdout, stderr = _run_llvm_mc(tool, [hexes[i] for i in index])
    warned = {int(m.group(1)) - 1: m.group(2) for m in _WARNING.finditer(stderr)}
    pieces = _pieces(stdout)
    if not warned:
        if len(pieces) == len(index) + 1 and not pieces[-1]:
            for i, piece in zip(index, pieces):
                if piece:
                    out.blocks[i] = "\n".join(piece)
                else:
                    out.errors[i] = "no complete instruction in the block"
            return
        if len(index) == 1:
            # A lone block holding a ud2 of its own: every piece but the final separator is the block.
            if len(pieces) > 2 and not pieces[-1]:
                body = [line for k, piece in enumerate(pieces[:-1]) for line in (["ud2"] if k else []) + piece]
                out.blocks[index[0]] = "\n".join(body)
            else:
                out.errors[index[0]] = "truncated instruction at the end of the block"
            return
    elif len(index) == 1:
        out.errors[index[0]] = f"llvm-mc: {next(iter(warned.values()))}"
        return
    if warned:
        # A warning names the line where decoding went wrong, which is that block or the one a
        # truncated instruction ran over from: check those alone, the rest together.
        suspects = {n for line in warned for n in (line - 1, line) if n >= 0}
        for n in sorted(suspects):
            _batch(tool, hexes, [index[n]], out)
        rest = [i for n, i in enumerate(index) if n not in suspects]
        if rest:
            _batch(tool, hexes, rest, out)
        return
    mid = len(index) // 2
    _batch(tool, hexes, index[:mid], out)
    _batch(tool, hexes, index[mid:], out)


def disassemble(hexes: list[str], llvm_mc: str | None = None, batch: int = 20000) -> Disassembly:
    """Disassemble hex-encoded blocks ("4801c3") into canonical AT&T text, many per llvm-mc call."""
    tool = find_tool("llvm-mc", llvm_mc)
    out = Disassembly([None] * len(hexes), {})
    for i, h in enumerate(hexes):
        if not h or len(h) % 2 or not _HEX.fullmatch(h):
            out.errors[i] = "not an even-length hex string"
    valid = [i for i in range(len(hexes)) if i not in out.errors]
    for start in range(0, len(valid), batch):
        _batch(tool, hexes, valid[start:start + batch], out)
    return out
