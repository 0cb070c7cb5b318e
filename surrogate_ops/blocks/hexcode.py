"""Blocks from hex machine code (the BHive format), disassembled by LLVM into canonical text.

In process where the libLLVM that llvm-mc links can be loaded (`llvm_disasm`: LLVM's C
disassembler, the same printer, no pipe to parse); otherwise by llvm-mc in batches, as follows.
One llvm-mc process disassembles thousands of blocks: each block is written on its own input
line followed by a separator of 16 nops and a ud2, and the output is split at the ud2 lines. An
x86 instruction is at most 15 bytes, so a block whose last instruction is cut short can swallow
some of the nops but never the ud2: decoding is back in step before the next block, and the
block shows fewer than 16 trailing nops, which marks it as truncated. Undecodable bytes make
llvm-mc warn with the input line, which names the block: such blocks are checked alone. A block
that holds a ud2 of its own makes the pieces outnumber the blocks, and the batch is bisected.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
from dataclasses import dataclass

from surrogate_ops.blocks import compiled, llvm_disasm
from surrogate_ops.blocks.asm import PREFIXES, bounded_memo, join_prefixes, normalize_instruction
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.forking import fork_pool, inherited
from surrogate_ops.llvm_tools import find_tool

_PAD = 16
_SEPARATOR = " 0x90" * _PAD + " 0x0f 0x0b"
_WARNING = re.compile(r"^<stdin>:(\d+):\d+: (?:warning|error): (.*)$", re.MULTILINE)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
PARALLEL_MIN = 16384  # blocks in one call from which forked workers share the in-process disassembly


@dataclass(frozen=True)
class Disassembly:
    """Canonical assembly per input block (None where it failed) and the reason for each failure."""

    blocks: list[str | None]
    errors: dict[int, str]


def _run_llvm_mc(llvm_mc: str, hexes: list[str]) -> tuple[str, str]:
    lines = [" ".join(f"0x{h[i:i + 2]}" for i in range(0, len(h), 2)) + _SEPARATOR for h in hexes]
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


@bounded_memo(1 << 16)
def _canonical(raw: str) -> str:
    """An llvm-mc output line's canonical text, once per distinct line (a block's separator alone
    repeats 17 lines); llvm-mc's "# imm = 0x.." notes dropped."""
    return normalize_instruction(raw.split("#", 1)[0])


def _pieces(stdout: str) -> list[list[str]]:
    """llvm-mc's output split at ud2 lines, each piece's instructions canonical, prefixes joined."""
    pieces: list[list[str]] = [[]]
    prefix: list[str] = []
    for raw in stdout.splitlines():
        if not raw.startswith("\t") or raw.startswith("\t."):
            continue
        text = _canonical(raw)
        if text == "ud2" and not prefix:
            pieces.append([])
        elif text in PREFIXES:
            prefix.append(text)
        else:
            pieces[-1].append(" ".join([*prefix, text]))
            prefix = []
    return pieces


def _finish(out: Disassembly, i: int, piece: list[str]) -> None:
    """Store block i from its piece of output, which must end in the separator's nops."""
    if len(piece) < _PAD or any(line != "nop" for line in piece[-_PAD:]):
        out.errors[i] = "truncated instruction at the end of the block"
    elif len(piece) == _PAD:
        out.errors[i] = "no complete instruction in the block"
    else:
        out.blocks[i] = "\n".join(piece[:-_PAD])


def _batch(tool: str, hexes: list[str], index: list[int], out: Disassembly) -> None:
    """Disassemble blocks `index`; blocks that llvm-mc warns about are retried alone."""
    stdout, stderr = _run_llvm_mc(tool, [hexes[i] for i in index])
    warned = {int(m.group(1)) - 1: m.group(2) for m in _WARNING.finditer(stderr)}
    pieces = _pieces(stdout)
    if not warned:
        if len(pieces) == len(index) + 1 and not pieces[-1]:
            for i, piece in zip(index, pieces):
                _finish(out, i, piece)
            return
        if len(index) == 1:
            # A lone block holding a ud2 of its own: every piece but the final one is the block.
            body = [line for k, piece in enumerate(pieces[:-1]) for line in (["ud2"] if k else []) + piece]
            _finish(out, index[0], body)
            return
    elif len(index) == 1:
        out.errors[index[0]] = f"llvm-mc: {next(iter(warned.values()))}"
        return
    if warned:
        for n in sorted(warned):
            _batch(tool, hexes, [index[n]], out)
        rest = [i for n, i in enumerate(index) if n not in warned]
        if rest:
            _batch(tool, hexes, rest, out)
        return
    mid = len(index) // 2
    _batch(tool, hexes, index[:mid], out)
    _batch(tool, hexes, index[mid:], out)


def _in_process(disassembler: llvm_disasm.Disassembler, hexes: list[str], index: list[int], out: Disassembly) -> None:
    for i in index:
        printed = disassembler.instructions(bytes.fromhex(hexes[i]))
        if isinstance(printed, str):
            out.errors[i] = printed
            continue
        lines, dangling = join_prefixes([_canonical(raw) for raw in printed])
        if dangling:  # a prefix with nothing after it: the block ends inside an instruction
            out.errors[i] = "truncated instruction at the end of the block"
        else:
            out.blocks[i] = "\n".join(lines)


def _in_processes(disassembler: llvm_disasm.Disassembler, hexes: list[str], index: list[int], out: Disassembly,
                  workers: int) -> None:
    """`_in_process` over slices of the blocks in forked workers, which inherit the loaded library."""
    step = -(-len(index) // (4 * workers))
    slices = [[(i, hexes[i]) for i in index[s:s + step]] for s in range(0, len(index), step)]
    pool = fork_pool(workers, inherit=disassembler)
    try:
        for blocks, errors in pool.imap(_slice, slices):
            for i, text in blocks:
                out.blocks[i] = text
            out.errors.update(errors)
        pool.close()  # every slice answered: the workers leave on their own
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _slice(pairs: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """In a worker: one slice of (index, hex) pairs, as (index, text) pairs and the failures by index."""
    part = Disassembly([None] * len(pairs), {})
    _in_process(inherited(), [h for _, h in pairs], list(range(len(pairs))), part)
    return ([(pairs[k][0], text) for k, text in enumerate(part.blocks) if text is not None],
            {pairs[k][0]: why for k, why in part.errors.items()})


def _compiled(hexes: list[str], index: list[int], tool: str, workers: int, out: Disassembly) -> list[int]:
    """Blocks `index` disassembled by the compiled front end into `out`; the blocks it left to Python."""
    try:
        texts, errors, deferred = compiled.disassemble([hexes[i] for i in index], llvm_disasm.library_path(tool), workers)
    except SurrogateOpsError:  # it cannot open this libLLVM: all of them are Python's
        return index
    for i, text in zip(index, texts, strict=True):
        out.blocks[i] = text
    out.errors.update({index[k]: why for k, why in errors.items()})
    return [index[k] for k in deferred]


def disassemble(hexes: list[str], llvm_mc: str | None = None, batch: int = 20000,
                in_process: bool = True, workers: int | None = None) -> Disassembly:
    """Disassemble hex-encoded blocks ("4801c3") into canonical AT&T text: in process through the
    libLLVM of the llvm-mc in use where it loads (and `in_process`), else many blocks per llvm-mc call.
    In process, the compiled front end (`compiled`) disassembles on `workers` threads [default: the
    cores] where it is built; without it, a call of `PARALLEL_MIN` blocks or more is shared by
    `workers` forked processes, each disassembling a slice."""
    tool = find_tool("llvm-mc", llvm_mc)
    out = Disassembly([None] * len(hexes), {})
    for i, h in enumerate(hexes):
        if not h or len(h) % 2 or not _HEX.fullmatch(h):
            out.errors[i] = "not an even-length hex string"
    valid = [i for i in range(len(hexes)) if i not in out.errors]
    disassembler = llvm_disasm.load(tool) if in_process else None
    if disassembler is not None:
        workers = workers or len(os.sched_getaffinity(0))
        if compiled.library() is not None:  # the compiled front end, on threads; the blocks it leaves, here
            valid = _compiled(hexes, valid, tool, workers, out)
        if workers > 1 and len(valid) >= PARALLEL_MIN and not multiprocessing.current_process().daemon:
            _in_processes(disassembler, hexes, valid, out, workers)
        else:
            _in_process(disassembler, hexes, valid, out)
        return out
    for start in range(0, len(valid), batch):
        _batch(tool, hexes, valid[start:start + batch], out)
    return out
