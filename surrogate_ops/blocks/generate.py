"""Synthetic basic blocks with controlled dependency structure: training data that covers the
input space, where real code (BHive, local binaries) leaves gaps.

A block draws its instructions from the forms in `presets/instruction_forms.json` (what llvm-mca's
x86 backend accepts and what real code uses, weighted) and fills their operands from small pools:
`k` general registers, `kv` vector registers and a few memory addresses. The pool sizes are the
control: a pool of one or two registers makes nearly every instruction read what an earlier one
wrote (in-iteration chains, loop-carried chains, pointer chases when a load's destination is its own
base, store-to-load pairs through the same address); a pool of fifteen makes most instructions
independent. `DENSITIES` names the mixes; "mixed" is the training default, "dense" the held-out
probe of issue 13 (chains everywhere), "sparse" nearly none, "unrolled" an unrolled loop body:
one to three forms repeated, so that one kind of instruction fills the block and its ports set
the throughput (two independent `vaddps` on a CPU with one vector adder), and "loops" the loop a
person types first: one to four instructions over one to four registers, where a single latency,
port or zero idiom of the CPU decides the answer (`xorl %eax, %eax` / `incl %eax`), and "forms" the
breadth of the ISA: most instructions drawn uniformly over every form LLVM's X86 target has that
llvm-mca accepts for the CPU (`presets/llvm_forms.json`, made by `programs.x86_forms`: pmaddubsw,
aesenc, shld, rorx, rep stos, byte registers, AVX-512 masks ...), the rest from the hand list so that
the blocks still read as code; its addresses are now and then RIP-relative or segment-based.
"vectors" is "forms" held to the vector instructions (an operand in xmm, ymm or zmm registers),
over few vector registers: the long shuffle, integer and FMA chains of SIMD kernels.

The LLVM forms have slots of their own, filled from the same pools, so that pool sizes still set
the chains: {w} and {l} are the 16- and 8-bit names of the block's general registers, {zmm}, {mm},
{st} and the mask registers {k} (a write mask `{%k}`) follow its vector registers, {rc} is a
rounding mode; `{z}`, `{sae}` and `{1to8}` in a form are AVX-512's own text, and `{vex}` the prefix
that asks for a VEX encoding, kept as they are.

Blocks are a pure function of (seed, index): `generate(n, seed)` always gives the same blocks, so a
resumed `collect --generate` finds the blocks it labeled already. Seeds from `PROBE_SEED` up are
kept for held-out probe sets: never train on them.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from surrogate_ops import presets

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi", "rbp": "ebp",
          **{f"r{n}": f"r{n}d" for n in range(8, 16)}}
_GPR16 = {g: g[1:] if g[1:] in ("ax", "bx", "cx", "dx", "si", "di", "bp") else f"{g}w" for g in GPRS}
_GPR8 = {"rax": "al", "rbx": "bl", "rcx": "cl", "rdx": "dl", "rsi": "sil", "rdi": "dil", "rbp": "bpl",
         **{f"r{n}": f"r{n}b" for n in range(8, 16)}}
ROUNDING = ("rn-sae", "rd-sae", "ru-sae", "rz-sae")
DECORATIONS = re.compile(r"z|sae|1to\d+|vex")  # AVX-512's text inside braces, and the {vex} prefix: kept as they are
SEGMENTS = ("fs", "gs")  # the segment overrides user code has (thread-local storage)
IMMEDIATES = (1, 2, 3, 4, 7, 8, 15, 16, 32, 64, 100, 255, 1000, 4096)
DISPLACEMENTS = (0, 0, 0, 4, 8, 8, 16, 24, 32, 64, -8, -16, 128)
PROBE_SEED = 9000  # seeds from here up are held out: probe sets only, never training data


@dataclass(frozen=True)
class Density:
    """How densely a block's operands reuse registers: pool sizes are drawn from these choices."""

    gprs: tuple[int, ...]
    vectors: tuple[int, ...]
    addresses: tuple[int, ...]
    forms: tuple[int, ...] = ()  # distinct forms a block repeats (an unrolled loop); () draws every instruction
    longest: int = 0  # at most this many instructions; 0: the usual lengths, mostly short, a tail to the limit
    llvm: float = 0.0  # the share of instructions drawn uniformly over LLVM's forms (`llvm_forms`), not the hand list
    vector: bool = False  # only forms with a vector register operand, of both lists


DENSITIES = {
    "mixed": Density(gprs=(1, 2, 3, 4, 6, 9, 15), vectors=(1, 2, 3, 4, 8, 16), addresses=(1, 2, 3, 6)),
    "dense": Density(gprs=(1, 2, 3), vectors=(1, 2, 3), addresses=(1, 2)),
    "sparse": Density(gprs=(12, 15), vectors=(12, 16), addresses=(4, 8)),
    "unrolled": Density(gprs=(2, 4, 8, 15), vectors=(2, 4, 8, 16), addresses=(1, 2, 4), forms=(1, 1, 2, 3)),
    "loops": Density(gprs=(1, 2, 2, 3, 4), vectors=(1, 2, 3, 4), addresses=(1, 1, 2), forms=(1, 2, 3, 4), longest=4),
    "forms": Density(gprs=(1, 2, 3, 4, 6, 9, 15), vectors=(1, 2, 3, 4, 8, 16), addresses=(1, 2, 3, 6), llvm=0.6),
    "vectors": Density(gprs=(2, 3, 4, 6), vectors=(1, 2, 3, 4, 6), addresses=(1, 2, 3), llvm=0.7, vector=True),
}
_VECTOR = re.compile(r"\{(?:x|y|zmm)\}|%[xyz]mm")


def _vector_only(forms: list[str], weights: list[float]) -> tuple[list[str], list[float]]:
    kept = [(f, w) for f, w in zip(forms, weights, strict=True) if _VECTOR.search(f)]
    return [f for f, _ in kept], [w for _, w in kept]


def _forms() -> tuple[list[str], list[float]]:
    table = presets.load("instruction_forms")
    groups = table["groups"]
    forms, weights = [], []
    for group, share in groups.items():
        total = sum(w for _, w in table[group])
        for form, weight in table[group]:
            forms.append(form)
            weights.append(share * weight / total)
    return forms, weights


@functools.cache
def llvm_forms(mcpu: str | None = None) -> tuple[str, ...]:
    """The forms of `presets/llvm_forms.json` listed for `mcpu` (those llvm-mca accepts for it); for
    None, those listed for every CPU the preset covers."""
    groups = presets.load("llvm_forms")["groups"]
    cpus = {cpu for group in groups for cpu in group["cpus"]}
    if mcpu is not None and mcpu not in cpus:
        raise ValueError(f"presets/llvm_forms.json has no forms for -mcpu={mcpu}; it covers {', '.join(sorted(cpus))}")
    return tuple(form for group in groups if (mcpu in group["cpus"] if mcpu else set(group["cpus"]) == cpus)
                 for form in group["forms"])


def _lengths(rng: random.Random, max_instructions: int) -> int:
    """Mostly short (as real blocks are), with a tail to the limit."""
    roll = rng.random()
    if roll < 0.7 or max_instructions <= 12:
        return rng.randint(1, min(12, max_instructions))
    if roll < 0.95 or max_instructions <= 32:
        return rng.randint(13, min(32, max_instructions))
    return rng.randint(33, max_instructions)


class _Block:
    """One block's pools, and the operand filler for its forms."""

    def __init__(self, rng: random.Random, density: Density):
        self.rng = rng
        self.gprs = rng.sample(GPRS, rng.choice(density.gprs))
        self.vectors = rng.sample(range(16), rng.choice(density.vectors))
        bases = self.gprs if rng.random() < 0.7 else ["rsp", "rbp", "rdi"]
        self.addresses = [self._address(bases) for _ in range(rng.choice(density.addresses))]
        if density.llvm:  # only the densities drawing LLVM forms: the others' streams stay as they were
            self.addresses = [self._unusual(address) for address in self.addresses]

    def _unusual(self, address: str) -> str:
        """Now and then a RIP-relative address or a segment override, as compiled code has them."""
        roll = self.rng.random()
        if roll < 0.1:
            return f"{self.rng.choice(DISPLACEMENTS[3:])}(%rip)"
        if roll < 0.15:
            return f"%{self.rng.choice(SEGMENTS)}:{address}"
        return address

    def _address(self, bases: list[str]) -> str:
        rng = self.rng
        disp = rng.choice(DISPLACEMENTS)
        base = rng.choice(bases)
        if rng.random() < 0.2:
            scale = rng.choice((1, 2, 4, 8))
            return f"{disp or ''}(%{base},%{rng.choice(self.gprs)}{f',{scale}' if scale > 1 else ''})"
        return f"{disp or ''}(%{base})"

    def fill(self, form: str) -> str:
        rng = self.rng
        out, rest = [], form
        while "{" in rest:
            head, _, tail = rest.partition("{")
            slot, _, rest = tail.partition("}")
            out.append(head)
            out.append(self._operand(slot, rng))
        out.append(rest)
        return "".join(out)

    def _operand(self, slot: str, rng: random.Random) -> str:
        if slot == "r":
            return "%" + rng.choice(self.gprs)
        if slot == "e":
            return "%" + _GPR32[rng.choice(self.gprs)]
        if slot == "x":
            return f"%xmm{rng.choice(self.vectors)}"
        if slot == "y":
            return f"%ymm{rng.choice(self.vectors)}"
        if slot == "m":
            return rng.choice(self.addresses)
        if slot == "i":
            return str(rng.choice(IMMEDIATES))
        if slot == "b":
            return str(rng.randrange(256))
        if slot == "s":
            return str(rng.choice((2, 3, 4, 5, 8, 13, 32, 63)))  # not 1: `shlq $1` is written `shlq` once assembled
        if slot == "d":
            return str(rng.choice(DISPLACEMENTS) or "")  # (%rax), as the disassembler writes a zero displacement
        if slot == "sc":
            return str(rng.choice((2, 4, 8)))
        return self._wide_operand(slot, rng)

    def _wide_operand(self, slot: str, rng: random.Random) -> str:
        """The slots of LLVM's forms (see the module's note); none of them is in the hand list."""
        if slot == "w":
            return "%" + _GPR16[rng.choice(self.gprs)]
        if slot == "l":
            return "%" + _GPR8[rng.choice(self.gprs)]
        if slot == "zmm":
            return f"%zmm{rng.choice(self.vectors)}"
        if slot == "k":  # k1-k7 (k0 cannot mask), one per vector register of the pool
            return f"%k{1 + rng.choice(self.vectors) % 7}"
        if slot == "%k":
            return f"{{%k{1 + rng.choice(self.vectors) % 7}}}"
        if slot == "mm":
            return f"%mm{rng.choice(self.vectors) % 8}"
        if slot == "st":
            return f"%st({1 + rng.choice(self.vectors) % 7})"
        if slot == "rc":
            return "{" + rng.choice(ROUNDING) + "}"
        if DECORATIONS.fullmatch(slot):
            return "{" + slot + "}"
        raise ValueError(f"instruction form placeholder {{{slot}}} is not one the generator fills")


def generate(count: int, seed: int = 0, density: str = "mixed", max_instructions: int = 64,
             start: int = 0, mcpu: str | None = None) -> list[str]:
    """`count` blocks (canonical AT&T text), the `start`-th to the `start + count - 1`-th of `seed`'s
    stream. `mcpu` chooses the LLVM forms of the densities that draw them ("forms"): those llvm-mca
    accepts for that CPU; None, those it accepts for every CPU of the preset. Other densities ignore it."""
    return list(iter_blocks(count, seed, density, max_instructions, start, mcpu))


def iter_blocks(count: int, seed: int = 0, density: str = "mixed", max_instructions: int = 64,
                start: int = 0, mcpu: str | None = None) -> Iterator[str]:
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose from {', '.join(DENSITIES)}")
    forms, weights = _forms()
    mix = DENSITIES[density]
    wide = llvm_forms(mcpu) if mix.llvm else ()
    if mix.vector:
        forms, weights = _vector_only(forms, weights)
        wide = tuple(f for f in wide if _VECTOR.search(f))
    for index in range(start, start + count):
        rng = random.Random(f"{seed}/{density}/{index}")  # a block is a function of (seed, density, index)
        block = _Block(rng, mix)
        length = rng.randint(1, min(mix.longest, max_instructions)) if mix.longest else _lengths(rng, max_instructions)
        if mix.forms:  # the same few forms over and over, in order, as an unrolled loop repeats its body
            body = rng.choices(forms, weights, k=rng.choice(mix.forms))
            chosen = [body[k % len(body)] for k in range(length)]
        elif mix.llvm:
            chosen = [rng.choice(wide) if rng.random() < mix.llvm else rng.choices(forms, weights)[0]
                      for _ in range(length)]
        else:
            chosen = rng.choices(forms, weights, k=length)
        yield "\n".join(block.fill(form) for form in chosen)


def fill(forms: list[str], seed: int = 0, density: str = "sparse") -> list[str]:
    """Each form filled once, from a block of `density`'s pools of its own (seeded by `seed` and the
    form's place): what `programs.x86_forms` and the tests hand llvm-mca to check the forms."""
    return [_Block(random.Random(f"fill/{seed}/{density}/{k}"), DENSITIES[density]).fill(form)
            for k, form in enumerate(forms)]


__all__ = ["DENSITIES", "PROBE_SEED", "fill", "generate", "iter_blocks", "llvm_forms"]
