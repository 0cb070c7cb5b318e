"""Def-use edges between the instructions of a basic block run in a loop, as llvm-mca runs it.

Throughput is set by dependencies as much as by instruction mix: `imulq %rcx, %rdx` alone is a
3-cycle loop-carried chain, `movq (%rax), %rax` a pointer chase. `effects(instruction)` says what
one instruction reads and writes (register families, flags, memory by address expression), from
AT&T operand order and a few mnemonic classes; `edges(block)` links every read to its producer:
the latest earlier writer in the same iteration (`reg`, `mem`), else the latest writer in the
previous iteration (`reg-carried`, `mem-carried`, which includes the instruction itself).

The rules are the common x86 ones, not a full ISA table: the last operand is the destination and
is read too unless the mnemonic only writes it (moves, loads, lea, set, conversions, VEX three-operand
forms); compares write only flags; zero idioms (`xorl %eax, %eax`) read nothing; 8- and 16-bit
writes merge into the old value; one-operand mul/div use rax and rdx. Memory edges pair a store
and a load of the same address expression (llvm-mca assumes no aliasing by default, so these
matter to it only under `--noalias=false`; the surrogate learns how much).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

from surrogate_ops.blocks.asm import PREFIXES, bounded_memo, canonical_operands

KINDS = ("reg", "reg-carried", "mem", "mem-carried")
FLAGS = "flags"

_GPR_FAMILIES = {
    **{r: r for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")},
    **{f"e{r[1:]}": r for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")},
    "ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx", "si": "rsi", "di": "rdi", "bp": "rbp", "sp": "rsp",
    "al": "rax", "bl": "rbx", "cl": "rcx", "dl": "rdx", "ah": "rax", "bh": "rbx", "ch": "rcx", "dh": "rdx",
    "sil": "rsi", "dil": "rdi", "bpl": "rbp", "spl": "rsp",
}
_PARTIAL = {"ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "al", "bl", "cl", "dl", "ah", "bh", "ch", "dh",
            "sil", "dil", "bpl", "spl"}
_NUMBERED = re.compile(r"^r(\d+)([dwb]?)$")
_VECTOR = re.compile(r"^[xyz]mm(\d+)$")
_REGISTER_NAMES = re.compile(r"%\w+")
_STRING = re.compile(r"^(?:stos|lods|scas|movs|cmps)[bwlq]$")  # string instructions (not SSE's movsd/cmpsd with operands)
_REPEATS = frozenset({"rep", "repe", "repz", "repne", "repnz"})

# mnemonic stems whose destination is written, not read (AT&T: the last operand)
_WRITE_ONLY = ("mov", "lea", "set", "cvt", "pop", "lzcnt", "tzcnt", "popcnt", "pshuf", "sqrtp", "rcpp", "rsqrtp",
               "pmovzx", "pmovsx", "vbroadcast", "vextract", "vperm", "vpbroadcast", "cqto", "cltq", "cwtl")
_COMPARES = ("cmp", "test", "ucomis", "comis", "bt", "ptest", "vptest", "vucomis", "vcomis")
_FLAG_WRITERS = ("add", "sub", "and", "or", "xor", "adc", "sbb", "cmp", "test", "inc", "dec", "neg", "shl", "shr",
                 "sar", "sal", "rol", "ror", "rcl", "rcr", "imul", "mul", "bsf", "bsr", "popcnt", "lzcnt", "tzcnt",
                 "bt", "ucomis", "comis", "vucomis", "vcomis", "ptest", "vptest")
_FLAG_READERS = ("adc", "sbb", "cmov", "set", "rcl", "rcr")
_ZERO_IDIOMS = ("xor", "sub", "pxor", "xorp", "vxorp", "vpxor", "psub", "vpsub", "pcmpeq", "vpcmpeq", "sbb")
_VEX_READS_DEST = ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "vfmaddsub", "vfmsubadd")


MEMORY = "@"  # what memory keys start with (an address expression never names a register family)


UsesDefs = tuple[tuple[str, ...], tuple[str, ...]]  # the keys an instruction reads and writes (see Effects)


class Effects(NamedTuple):
    """What one instruction reads and writes: register families (rax for eax/ax/al, v3 for
    xmm3/ymm3), `flags`, and memory by address expression (keys that start with `MEMORY`).

    A readable view of `uses_defs`, the plain pair the serving path keeps per line; `links`
    takes either."""

    uses: tuple[str, ...]
    defs: tuple[str, ...]

    reads = property(lambda self: frozenset(k for k in self.uses if k[0] != MEMORY))
    writes = property(lambda self: frozenset(k for k in self.defs if k[0] != MEMORY))
    loads = property(lambda self: frozenset(k[1:] for k in self.uses if k[0] == MEMORY))
    stores = property(lambda self: frozenset(k[1:] for k in self.defs if k[0] == MEMORY))


class Edge(NamedTuple):
    consumer: int  # the instruction that reads
    producer: int  # the instruction whose result it reads (its index in the block)
    kind: str  # one of KINDS


def _register(operand: str) -> tuple[str, bool] | None:
    """(family, partial write) of a register operand, or None."""
    name = operand.lstrip("*%").split("{")[0].strip().lower()
    known = _REGISTERS.get(name)
    if known is not None:
        return known
    match = _NUMBERED.match(name)
    if match:
        return f"r{match.group(1)}", match.group(2) in ("w", "b")
    match = _VECTOR.match(name)
    if match:
        return f"v{match.group(1)}", False
    return None


_REGISTERS = {  # the common names, looked up; `_register` falls back to the patterns for the rest
    **{name: (family, name in _PARTIAL) for name, family in _GPR_FAMILIES.items()},
    **{f"r{n}{suffix}": (f"r{n}", suffix in ("w", "b")) for n in range(32) for suffix in ("", "d", "w", "b")},
    **{f"{kind}mm{n}": (f"v{n}", False) for kind in "xyz" for n in range(32)},
}


def _address(operand: str) -> tuple[str, tuple[str, ...]] | None:
    """(address expression, registers it reads) of a memory operand, or None."""
    operand = operand.lstrip("*").split("{")[0].strip()
    if "(" not in operand and ":" not in operand:
        return None
    registers = {r for r in map(_register, _REGISTER_NAMES.findall(operand.split(":")[-1])) if r}
    return operand, tuple({family for family, _ in registers if family != "rip"})


@bounded_memo(1 << 14)
def _operand(operand: str) -> tuple[tuple[str, bool] | None, tuple[str, tuple[str, ...]] | None]:
    """(register, address) of one operand, either None; operands repeat far more than lines do."""
    if operand.startswith("%") and ":" in operand:  # %fs:40, %es:(%rdi): memory through a segment
        return None, _address(operand)
    return (_register(operand) if operand.startswith("%") else None,
            _address(operand) if not operand.startswith(("%", "$")) else None)


def _starts(mnemonic: str, stems: Sequence[str]) -> bool:
    return mnemonic.startswith(tuple(stems))


class _Traits(NamedTuple):
    """What a mnemonic with so many operands implies, whatever its operands (worked out once)."""

    lea: bool
    reads: frozenset[str]  # implicit operands: mul/div's rax and rdx, push/pop's stack
    writes: frozenset[str]
    loads: frozenset[str]
    stores: frozenset[str]
    exchange: bool  # xchg/xadd: every operand read and written
    sources_only: bool  # one operand, a source (mul, div, push, jmp, call)
    compare: bool
    write_only: bool
    zero_idiom: bool  # a zero idiom when its first two operands are the same register
    flag_read: bool
    flag_write: bool


@functools.lru_cache(maxsize=4096)
def _traits(mnemonic: str, count: int) -> _Traits:
    reads, writes, loads, stores = set(), set(), set(), set()
    if mnemonic.startswith(("mul", "div", "idiv")) or (mnemonic.startswith("imul") and count == 1):
        reads.update({"rax", "rdx"} if mnemonic.startswith(("div", "idiv")) else {"rax"})
        writes.update({"rax", "rdx"})
    elif mnemonic in ("cqto", "cltq", "cwtl", "cltd"):
        reads.add("rax")
        writes.add("rdx" if mnemonic in ("cqto", "cltd") else "rax")
    elif _STRING.match(mnemonic):  # implicit %rsi / %rdi, both stepped; the count is the rep prefix's
        pointers = {"stos": ("rdi",), "scas": ("rdi",), "lods": ("rsi",)}.get(mnemonic[:4], ("rsi", "rdi"))
        reads.update(pointers)
        writes.update(pointers)
        reads.add("rax") if mnemonic.startswith(("stos", "scas")) else None
        writes.add("rax") if mnemonic.startswith("lods") else None
        loads.update(f"({p})" for p in pointers if not mnemonic.startswith("stos") and not (mnemonic[:4] == "movs" and p == "rdi"))
        stores.update(f"({p})" for p in pointers if mnemonic.startswith(("stos", "movs")) and p == "rdi")
    elif mnemonic.startswith(("push", "pop")):
        reads.add("rsp")
        writes.add("rsp")
        (stores if mnemonic.startswith("push") else loads).add("stack")
    return _Traits(
        lea=mnemonic.startswith("lea"),
        reads=frozenset(reads), writes=frozenset(writes), loads=frozenset(loads), stores=frozenset(stores),
        exchange=mnemonic.startswith(("xchg", "xadd")),
        sources_only=count == 1 and mnemonic.startswith(("mul", "div", "idiv", "push", "jmp", "call", "imul")),
        compare=_starts(mnemonic, _COMPARES),
        write_only=(_starts(mnemonic, _WRITE_ONLY) or (mnemonic.startswith("v") and count >= 3
                                                        and not _starts(mnemonic, _VEX_READS_DEST))
                    or (mnemonic.startswith("imul") and count == 3)),
        zero_idiom=(count == 2 and _starts(mnemonic, _ZERO_IDIOMS))
        or (count == 3 and mnemonic.startswith(("vxorp", "vpxor", "vpsub"))),
        flag_read=_starts(mnemonic, _FLAG_READERS) or (mnemonic.startswith("j") and mnemonic != "jmp"),
        flag_write=_starts(mnemonic, _FLAG_WRITERS) and not mnemonic.startswith(("cmov", "mov")),
    )


def effects(instruction: str) -> Effects:
    """The reads and writes of one canonical AT&T instruction (see the module docstring for the rules)."""
    return Effects(*uses_defs(instruction))


@bounded_memo(1 << 15)
def uses_defs(instruction: str) -> UsesDefs:
    """The keys one canonical instruction reads and writes, as a pair of plain tuples of strings:
    every distinct line makes one, and plain tuples of strings drop out of the garbage collector's sight."""
    mnemonic, _, rest = instruction.partition(" ")
    repeated = False
    while rest and mnemonic in PREFIXES:
        repeated = repeated or mnemonic in _REPEATS
        mnemonic, _, rest = rest.partition(" ")
    if not mnemonic:
        return (), ()
    mnemonic = mnemonic.lower()
    operands = canonical_operands(rest) if rest and not _STRING.match(mnemonic) else []  # a string op's are implicit
    traits = _traits(mnemonic, len(operands))
    reads, writes, loads, stores = set(traits.reads), set(traits.writes), set(traits.loads), set(traits.stores)
    if repeated:
        reads.add("rcx")
        writes.add("rcx")
    registers, addresses = zip(*map(_operand, operands)) if operands else ((), ())
    for address in addresses:
        if address:
            reads.update(address[1])
    sources, dest = (operands[:-1], len(operands) - 1) if operands else ([], None)
    if traits.exchange:
        sources, dest = operands, None  # both operands read and written
        for k, reg in enumerate(registers):
            if reg:
                writes.add(reg[0])
            elif addresses[k]:
                stores.add(addresses[k][0])
    if traits.sources_only:
        sources, dest = operands, None
    for k, operand in enumerate(sources):
        if registers[k]:
            reads.add(registers[k][0])
        elif addresses[k] and not traits.lea:
            loads.add(addresses[k][0])
    if dest is not None:
        reg, address = registers[dest], addresses[dest]
        zero_idiom = traits.zero_idiom and operands[0] == operands[1]
        if zero_idiom:
            reads.difference_update(r[0] for r in registers if r)
        reads_dest = (not traits.write_only or traits.compare) and not zero_idiom
        if reg:
            if reads_dest or reg[1]:  # 8- and 16-bit writes merge with the old value
                reads.add(reg[0])
            if not traits.compare:
                writes.add(reg[0])
        elif address:
            if reads_dest:
                loads.add(address[0])
            if not traits.compare:
                stores.add(address[0])
    if traits.flag_read:
        reads.add(FLAGS)
    if traits.flag_write:
        writes.add(FLAGS)
    return (*reads, *[MEMORY + a for a in loads]), (*writes, *[MEMORY + a for a in stores])


def links(instructions: Sequence[UsesDefs]) -> list[list[tuple[int, int]]]:
    """Every read linked to its producer, within the iteration or from the previous one: per
    consumer, its (kind's index in KINDS, producer) pairs, ordered by kind, then producer.
    On the serving path (the tokenizer's edge tokens): plain tuples and dict lookups."""
    last = {key: j for j, (_, defs) in enumerate(instructions) for key in defs}  # the block's last writers
    found: list[list[tuple[int, int]]] = []
    current: dict[str, int] = {}  # writers so far in this iteration
    for i, (uses, defs) in enumerate(instructions):
        mine: list[tuple[int, int]] = []
        for key in uses:
            j = current.get(key)
            if j is not None:
                mine.append((2 if key[0] == MEMORY else 0, j))  # mem, reg
            else:  # no writer yet this iteration: the last one of the previous iteration (j >= i)
                j = last.get(key)
                if j is not None:
                    mine.append((3 if key[0] == MEMORY else 1, j))  # mem-carried, reg-carried
        found.append(sorted(set(mine)) if len(mine) > 1 else mine)
        for key in defs:
            current[key] = i
    return found


def edges_of(instructions: Sequence[UsesDefs]) -> list[Edge]:
    """`links` as named edges."""
    return [Edge(i, j, KINDS[kind]) for i, mine in enumerate(links(instructions)) for kind, j in mine]


def edges(block: str) -> list[Edge]:
    """The def-use edges of a canonical block (one instruction a line)."""
    return edges_of([uses_defs(line) for line in block.split("\n")])


__all__ = ["FLAGS", "KINDS", "Edge", "Effects", "UsesDefs", "edges", "edges_of", "effects", "links", "uses_defs"]
