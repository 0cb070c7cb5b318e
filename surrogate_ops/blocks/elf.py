"""Basic blocks cut from ELF binaries: the embedded default source, since every machine has some.

llvm-objdump gives each instruction's address and bytes, and, with `--symbolize-operands`, a
label at every branch target. A block ends at a label or symbol (a block leader) and at any
control-flow instruction (which is left out, as in BHive). Nops are dropped, blocks are
deduplicated by their bytes and cut to at most `max_len` instructions. The bytes are then
disassembled again by llvm-mc (`hexcode`), so binaries and BHive share one canonical text.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import find_tool

_INSN = re.compile(r"^\s*[0-9a-f]+:\s+([0-9a-f]{2}(?: [0-9a-f]{2})*)\s+(\S*)")
_LEADER = re.compile(r"^(?:[0-9a-f]+ )?<[^>]*>:\s*$")
_ELF_MAGIC = b"\x7fELF"
# Mnemonic stems that end a block (control flow, traps) and ones that are dropped (padding).
_ENDS = ("j", "call", "ret", "loop", "hlt", "ud", "int", "syscall", "sysret", "sysenter", "sysexit", "iret", "xbegin", "xabort", "xend", "enter", "leave")
_DROPPED = ("nop", "endbr", "data16", "cs")


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _ELF_MAGIC
    except OSError:
        return False


def find_binaries(paths: Iterable[str | Path]) -> list[Path]:
    """ELF files among `paths`, walking directories in sorted order (so collection is repeatable)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SurrogateOpsError(f"--binary {path}: no such file or directory")
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(p for p in (Path(root) / f for f in sorted(files)) if p.is_file() and is_elf(p))
        elif is_elf(path):
            found.append(path)
        else:
            raise SurrogateOpsError(f"--binary {path}: not an ELF file")
    return found


def _objdump(path: Path, objdump: str) -> str:
    args = [objdump, "-d", "--symbolize-operands", "--no-print-imm-hex", str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # older llvm-objdump without --symbolize-operands
        proc = subprocess.run([objdump, "-d", str(path)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SurrogateOpsError(f"llvm-objdump failed on {path}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def cut_blocks(listing: str, min_len: int = 1, max_len: int = 64) -> Iterator[str]:
    """Hex strings of the basic blocks in an llvm-objdump listing."""
    current: list[str] = []

    def flush() -> Iterator[str]:
        for start in range(0, len(current), max_len):
            piece = current[start:start + max_len]
            if len(piece) >= min_len:
                yield "".join(piece)
        current.clear()

    for line in listing.splitlines():
        match = _INSN.match(line)
        if match is None:
            if _LEADER.match(line) or line.startswith("Disassembly of section"):
                yield from flush()
            continue
        mnemonic = match.group(2)
        if mnemonic in ("lock", "rep", "repne", "repe") or not mnemonic:
            current.append(match.group(1).replace(" ", ""))  # a prefix printed on its own line
            continue
        if mnemonic.startswith(_DROPPED):
            continue
        if mnemonic.startswith(_ENDS) or mnemonic.startswith(("bnd", "notrack")):
            yield from flush()
            continue
        current.append(match.group(1).replace(" ", ""))
    yield from flush()


def blocks_from_binaries(paths: Iterable[str | Path], limit: int | None = None, max_len: int = 64,
                         objdump: str | None = None, progress: bool = False,
                         per_binary: int | None = None, exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(hex, source path) of distinct basic blocks found in the given binaries, in a stable order;
    `per_binary` takes at most that many from each, spread evenly over the binary's code (not its
    first functions), so a limit is spread over many programs. `exclude`: glob patterns
    (`fnmatch`, on the whole path) of binaries to leave out, such as libraries held out of training."""
    tool = find_tool("llvm-objdump", objdump)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    found = [p for p in find_binaries(paths) if not any(fnmatch.fnmatch(str(p), pattern) for pattern in exclude)]

    def cut(path: Path) -> list[str]:  # llvm-objdump runs a binary per core; blocks are kept in the binaries' order
        return list(dict.fromkeys(cut_blocks(_objdump(path, tool), max_len=max_len)))

    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        for path, cut_out in zip(found, tqdm(pool.map(cut, found), total=len(found), desc="cutting binaries into blocks",
                                             unit="binary", disable=not progress)):
            mine = [b for b in cut_out if b not in seen]
            if per_binary is not None and len(mine) > per_binary:
                step = len(mine) / per_binary
                mine = [mine[int(k * step)] for k in range(per_binary)]
            for block in mine:
                seen.add(block)
                out.append((block, str(path)))
                if limit is not None and len(out) >= limit:
                    pool.shutdown(cancel_futures=True)
                    return out
    return out
