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
port or zero idiom of the CPU decides the answer (`xorl %eax, %eax` / `incl %eax`).

Blocks are a pure function of (seed, index): `generate(n, seed)` always gives the same blocks, so a
resumed `collect --generate` finds the blocks it labeled already. Seeds from `PROBE_SEED` up are
kept for held-out probe sets: never train on them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from surrogate_ops import presets

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi", "rbp": "ebp",
          **{f"r{n}": f"r{n}d" for n in range(8, 16)}}
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


DENSITIES = {
    "mixed": Density(gprs=(1, 2, 3, 4, 6, 9, 15), vectors=(1, 2, 3, 4, 8, 16), addresses=(1, 2, 3, 6)),
    "dense": Density(gprs=(1, 2, 3), vectors=(1, 2, 3), addresses=(1, 2)),
    "sparse": Density(gprs=(12, 15), vectors=(12, 16), addresses=(4, 8)),
    "unrolled": Density(gprs=(2, 4, 8, 15), vectors=(2, 4, 8, 16), addresses=(1, 2, 4), forms=(1, 1, 2, 3)),
    "loops": Density(gprs=(1, 2, 2, 3, 4), vectors=(1, 2, 3, 4), addresses=(1, 1, 2), forms=(1, 2, 3, 4), longest=4),
}


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
        raise ValueError(f"instruction form placeholder {{{slot}}} is not one the generator fills")


def generate(count: int, seed: int = 0, density: str = "mixed", max_instructions: int = 64,
             start: int = 0) -> list[str]:
    """`count` blocks (canonical AT&T text), the `start`-th to the `start + count - 1`-th of `seed`'s stream."""
    return list(iter_blocks(count, seed, density, max_instructions, start))


def iter_blocks(count: int, seed: int = 0, density: str = "mixed", max_instructions: int = 64,
                start: int = 0) -> Iterator[str]:
    if density not in DENSITIES:
        raise ValueError(f"unknown density {density!r}; choose from {', '.join(DENSITIES)}")
    forms, weights = _forms()
    for index in range(start, start + count):
        rng = random.Random(f"{seed}/{density}/{index}")  # a block is a function of (seed, density, index)
        mix = DENSITIES[density]
        block = _Block(rng, mix)
        length = rng.randint(1, min(mix.longest, max_instructions)) if mix.longest else _lengths(rng, max_instructions)
        if mix.forms:  # the same few forms over and over, in order, as an unrolled loop repeats its body
            body = rng.choices(forms, weights, k=rng.choice(mix.forms))
            chosen = [body[k % len(body)] for k in range(length)]
        else:
            chosen = rng.choices(forms, weights, k=length)
        yield "\n".join(block.fill(form) for form in chosen)


__all__ = ["DENSITIES", "PROBE_SEED", "generate", "iter_blocks"]
