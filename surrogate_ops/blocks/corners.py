"""Small blocks built around one corner case of llvm-mca's x86 scheduling models: training data
for what a surrogate trained on ordinary code gets wrong (18-22% error on such blocks).

Each block is 1-8 instructions over 1-4 general registers (2-4 where mul/div bring %rax and %rdx;
address bases such as %rsp aside) and 1-4 vector registers, laid out as: up to two
producers that put a long-latency chain on a register, the corner instruction(s) on that register,
then consumers that read it (the last of them often write it again, so the chain is carried from
one iteration to the next). The corner then decides the throughput. `KINDS` names the corners;
about a fifth of a kind's blocks hold a near miss instead (`xorl %ecx, %eax` for `xorl %eax,
%eax`, `movzbl` for `movl`), so what decides is the exact form, not the mnemonic.

What llvm-mca 14 makes of them differs by CPU, which is the point (cycles per iteration, haswell /
znver3; tests/test_corners.py checks each claim against the real llvm-mca):
  zero_idiom    xor/sub/pxor/xorps/psub/pcmpgt of a register with itself reads nothing: `imulq
                %rax, %rax; xorl %eax, %eax` 1 / 1 against `andq %rax, %rax` 4 / 4; ivybridge does
                not recognize `vxorps %ymm` (but does `vxorps %xmm`), haswell not `pandn` / `andnps`.
  dep_break     pcmpeq of a register with itself (all ones) and `sbb` of one with itself break the
                chain on znver2/znver3 only: `pmulld; pcmpeqd %xmm0, %xmm0` 11 / 0.6.
  move_elim     register moves are eliminated on znver3 only: a two-move ring 2 / 0.35; haswell's
                model eliminates none; `movzbl`, `movss` and self-moves never.
  partial_reg   writes of 8/16-bit registers (`movb`, `setcc`, `%ah`) leave the full register
                waiting on its old value: `imulq %rax, %rax; movb %cl, %al` 3 / 4, with `movl` 1 / 1.
  false_dep     `cvtsi2sd`, `sqrtss`, `roundsd`, `movss` and the like merge into their destination:
                `mulsd %xmm0, %xmm0; cvtsi2sd %rax, %xmm0` 9 / 6, 1.1 after `xorps %xmm0, %xmm0`.
  load_fold     a folded load's register operand is read late (ReadAdvance) but its address is not:
                `imulq; addq 8(%rsp), %rax` 6 / 5 against `addq 8(%rax), %rax` 9 / 8, and 4 / 4
                with the load unfolded (`movq 8(%rsp), %rcx; addq %rcx, %rax`).
  multi_output  mul/mulx/div/cqto/xchg write two registers with their own latencies (mulx: the
                high half 4, the low 3 on haswell; `divq` 98 / 17; `xchgq` 2 / 0.35).
  flags         flag producers feeding cmov/setcc/adc/sbb/jcc; `cmovbe` (two flag groups) costs a
                cycle more than `cmovb` on haswell; a jcc at the end costs the chain nothing.

Blocks are a pure function of (seed, index) and the ISA extensions of `mcpu` (forms that need AVX2,
FMA, BMI1/2 or LZCNT are left out for ivybridge and, with `mcpu=None`, for all: `FEATURES`), as in
`generate.iter_blocks`; seeds from `generate.PROBE_SEED` up are held out for probes. To add a
corner: a table of forms (a tuple of lines is a sequence kept together; `avx2:` and the like mark
the extension a line needs) and a builder in `_BUILDERS`, named in `KINDS`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence

from surrogate_ops.blocks.generate import DISPLACEMENTS, IMMEDIATES

KINDS = {
    "zero_idiom": "zeroing idioms (xor/sub/pxor/xorps/psub/pcmpgt of a register with itself) in a chain",
    "dep_break": "dependency-breaking idioms that are not zero: pcmpeq self (all ones), sbb self",
    "move_elim": "register-to-register move chains (movq, movl, movaps, vmovdqa) the CPU may eliminate",
    "partial_reg": "8/16-bit writes (movb, movw, addb, %ah, setcc) then reads of the full register",
    "false_dep": "instructions that merge into their destination (cvtsi2sd, sqrtss, roundsd, movss, popcnt)",
    "load_fold": "load-op folding: the chain through the register operand (read late) or the address",
    "multi_output": "instructions with two outputs: mul, imul, mulx, div, idiv, cqto, cltd, xchg, xadd",
    "flags": "flag producers (cmp, test, add, inc, dec) feeding cmov, setcc, adc, sbb and a final jcc",
}
MAX_LENGTH = 8
NEAR_MISS = 0.2  # share of a kind's blocks that hold a look-alike that is not the corner case

_ALL = frozenset({"avx2", "fma", "bmi1", "bmi2", "lzcnt"})
# ISA extensions a form may need beyond x86-64 with SSE4.2, AVX and POPCNT (what every CPU here has).
FEATURES = {"haswell": _ALL, "skylake": _ALL, "znver2": _ALL, "znver3": _ALL, "ivybridge": frozenset()}

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_POOL_SIZES = (1, 2, 2, 3, 3, 4)  # registers of a class a block uses: one makes every form read itself
_LEGACY = ("rax", "rbx", "rcx", "rdx")  # the only registers with a high byte (%ah)
_BASES = ("rsp", "rsp", "rdi", "rsi", "rbp")  # bases of the addresses no chain runs through
_NUMBERS = {  # what a numeric placeholder is filled with
    "i": IMMEDIATES,
    "ib": (1, 2, 3, 7, 8, 15, 16, 32, 64, 100, 127),  # byte immediates, which the disassembler prints signed
    "s": (2, 3, 4, 5, 8, 13, 32, 63),  # shift counts; not 1: `shlq $1` is written `shlq` once assembled
    "rnd": (0, 1, 2, 3, 4, 8, 9, 10, 11),  # rounding modes of roundsd
    "t": (-64, -32, -14, -9, 6, 14, 16, 32),  # a branch's displacement, as the disassembler writes it
}
_SINGLE_FLAG = ("e", "ne", "s", "ns", "b", "ae", "o", "no", "p", "np")
_TWO_FLAGS = ("l", "ge", "le", "g", "be", "a")  # read two flag groups: two uops on Intel models
_NO_HIGH_BYTE = re.compile(r"%(?:r\d|r[a-z]{2}\b|[sd]il|[bs]pl)")  # need REX, so cannot share a line with %ah


def _names(reg: str) -> dict[str, str]:
    """A general register's names by size: q (64), l (32), w (16), b (low byte), h (high byte)."""
    if reg[1:].isdigit():
        return {"q": reg, "l": reg + "d", "w": reg + "w", "b": reg + "b", "h": "?"}
    stem = reg[1:]  # ax, bx, si, bp
    low = stem[0] + "l" if stem.endswith("x") else stem + "l"
    return {"q": reg, "l": "e" + stem, "w": stem, "b": low, "h": stem[0] + "h" if reg in _LEGACY else "?"}


Option = str | tuple[str, ...]  # one line, or lines kept together in order

# Chain producers and consumers of the register in role 0, by register class.
PRODUCERS: dict[str, tuple[str, ...]] = {
    "gpr": ("imulq {q0}, {q0}", "imulq {q1}, {q0}", "addq {q1}, {q0}", "leaq 8({q0},{q1}), {q0}", "movq {m}, {q0}",
            "popcntq {q0}, {q0}", "shlq ${s}, {q0}", "imull {l1}, {l0}"),
    "xmm": ("mulps {x1}, {x0}", "mulps {x0}, {x0}", "pmulld {x1}, {x0}", "addps {x0}, {x0}", "paddd {x1}, {x0}",
            "mulsd {x0}, {x0}", "movaps {m}, {x0}", "sqrtps {x0}, {x0}"),
    "ymm": ("vmulps {y1}, {y0}, {y0}", "vaddps {y0}, {y0}, {y0}", "vsqrtps {y0}, {y0}", "avx2:vpmulld {y1}, {y0}, {y0}",
            "avx2:vpaddd {y0}, {y1}, {y0}", "fma:vfmadd231ps {y1}, {y1}, {y0}", "vmovups {m}, {y0}"),
    "fp": ("mulsd {x0}, {x0}", "addsd {x1}, {x0}", "sqrtsd {x0}, {x0}", "divsd {x1}, {x0}", "mulss {x0}, {x0}",
           "addss {x1}, {x0}"),
}
CONSUMERS: dict[str, tuple[str, ...]] = {
    "gpr": ("addq {q0}, {q1}", "addl {l0}, {l1}", "imulq {q0}, {q0}", "imulq {q0}, {q1}", "addq {q0}, {q0}",
            "incq {q0}", "leaq 1({q0},{q1}), {q1}", "orq {q0}, {q1}", "movq {q0}, {m}", "cmpq {q0}, {q1}",
            "shrq ${s}, {q0}", "subl {l1}, {l0}"),
    "xmm": ("addps {x0}, {x1}", "mulps {x0}, {x0}", "paddd {x0}, {x1}", "pmulld {x0}, {x0}", "addsd {x0}, {x1}",
            "por {x0}, {x1}", "pshufd ${ib}, {x0}, {x1}", "movaps {x0}, {m}", "vaddps {x0}, {x1}, {x1}"),
    "ymm": ("vaddps {y0}, {y1}, {y1}", "vmulps {y0}, {y0}, {y0}", "avx2:vpaddd {y0}, {y1}, {y0}",
            "vandps {y0}, {y1}, {y1}", "vmovups {y0}, {m}", "fma:vfmadd231ps {y0}, {y1}, {y1}",
            "vextractf128 $1, {y0}, {x1}"),
    "fp": ("addsd {x0}, {x1}", "mulsd {x0}, {x0}", "addsd {x0}, {x0}", "cvttsd2si {x0}, {q1}", "movsd {x0}, {m}",
           "ucomisd {x0}, {x1}", "maxsd {x0}, {x1}", "mulss {x0}, {x0}"),
}

# (the corner forms, their near misses) by register class
ZERO_IDIOMS = {
    "gpr": (("xorl {l0}, {l0}", "xorq {q0}, {q0}", "subl {l0}, {l0}", "subq {q0}, {q0}"),
            ("xorl {l1}, {l0}", "subq {q1}, {q0}", "xorw {w0}, {w0}", "xorb {b0}, {b0}", "andl $0, {l0}",
             "movl $0, {l0}", "andq {q0}, {q0}", "orq {q0}, {q0}")),
    "xmm": (("pxor {x0}, {x0}", "xorps {x0}, {x0}", "xorpd {x0}, {x0}", "psubd {x0}, {x0}", "psubq {x0}, {x0}",
             "psubb {x0}, {x0}", "pcmpgtd {x0}, {x0}", "pcmpgtq {x0}, {x0}", "pandn {x0}, {x0}", "andnps {x0}, {x0}",
             "vxorps {x0}, {x0}, {x0}", "vpxor {x1}, {x1}, {x0}", "vxorps {x1}, {x1}, {x0}", "vpsubd {x0}, {x0}, {x0}"),
            ("pxor {x1}, {x0}", "xorps {x1}, {x0}", "psubusb {x0}, {x0}", "por {x0}, {x0}", "vxorps {x1}, {x2}, {x0}",
             "pand {x0}, {x0}")),
    "ymm": (("vxorps {y0}, {y0}, {y0}", "vxorpd {y0}, {y0}, {y0}", "vxorps {y1}, {y1}, {y0}",
             "vandnps {y0}, {y0}, {y0}", "vxorps {x0}, {x0}, {x0}", "vpxor {x0}, {x0}, {x0}",
             "avx2:vpxor {y0}, {y0}, {y0}", "avx2:vpsubd {y0}, {y0}, {y0}", "avx2:vpsubq {y1}, {y1}, {y0}",
             "avx2:vpcmpgtq {y0}, {y0}, {y0}"),
            ("vxorps {y1}, {y0}, {y0}", "vandps {y0}, {y0}, {y0}", "vorps {y0}, {y0}, {y0}",
             "avx2:vpxor {y1}, {y2}, {y0}")),
}
ONES_IDIOMS = {  # dependency-breaking, not zero: all ones; sbb's result hangs on the carry alone
    "xmm": (("pcmpeqd {x0}, {x0}", "pcmpeqb {x0}, {x0}", "pcmpeqw {x0}, {x0}", "pcmpeqq {x0}, {x0}",
             "vpcmpeqd {x0}, {x0}, {x0}", "vpcmpeqb {x1}, {x1}, {x0}"),
            ("pcmpeqd {x1}, {x0}", "vpcmpeqd {x1}, {x2}, {x0}", "pcmpeqd {m}, {x0}")),
    "ymm": (("avx2:vpcmpeqd {y0}, {y0}, {y0}", "avx2:vpcmpeqq {y1}, {y1}, {y0}", "avx2:vpcmpeqb {y0}, {y0}, {y0}"),
            ("avx2:vpcmpeqd {y1}, {y2}, {y0}", "vcmptrueps {y0}, {y0}, {y0}")),
    "gpr": ((("cmpq {q1}, {q2}", "sbbq {q0}, {q0}"), ("addq {q1}, {q2}", "sbbl {l0}, {l0}"),
             ("btq ${s}, {q1}", "sbbq {q0}, {q0}"), ("cmpq ${i}, {q2}", "sbbl {l0}, {l0}")),
            (("cmpq {q1}, {q2}", "sbbq {q1}, {q0}"), ("cmpq {q1}, {q2}", "adcq {q0}, {q0}"),
             ("addq {q1}, {q2}", "sbbq $0, {q0}"))),
}
MOVES = {  # a move from role 0 to role 1
    "gpr": (("movq {q0}, {q1}", "movl {l0}, {l1}"),
            ("movzbl {b0}, {l1}", "movzwl {w0}, {l1}", "movslq {l0}, {q1}", "movsbq {b0}, {q1}", "movw {w0}, {w1}",
             "movb {b0}, {b1}", "movl {l0}, {l0}", "movq {q0}, {q0}")),
    "xmm": (("movaps {x0}, {x1}", "movapd {x0}, {x1}", "movdqa {x0}, {x1}", "movdqu {x0}, {x1}", "movups {x0}, {x1}",
             "vmovaps {x0}, {x1}", "vmovdqa {x0}, {x1}", "vmovups {x0}, {x1}"),
            ("movss {x0}, {x1}", "movsd {x0}, {x1}", "pshufd $228, {x0}, {x1}")),
    "ymm": (("vmovaps {y0}, {y1}", "vmovapd {y0}, {y1}", "vmovdqa {y0}, {y1}", "vmovdqu {y0}, {y1}",
             "vmovups {y0}, {y1}"),
            ("vpermilps $228, {y0}, {y1}", "avx2:vpermq $228, {y0}, {y1}")),
}
PARTIAL_WRITES = (
    ("movb {b1}, {b0}", "movb ${ib}, {b0}", "movw {w1}, {w0}", "movw ${i}, {w0}", "addb {b1}, {b0}", "addb ${ib}, {b0}",
     "addw {w1}, {w0}", "incb {b0}", "movb {m}, {b0}", "movw {m}, {w0}", "movb {b1}, {h0}", "addb ${ib}, {h0}",
     "movb {h1}, {b0}", ("cmpq {q1}, {q2}", "set{cc} {b0}"), ("testq {q2}, {q2}", "set{cc} {b0}", "movzbl {b0}, {l0}")),
    ("movl {l1}, {l0}", "movzbl {b1}, {l0}", "movzwl {w1}, {l0}", "movzbl {m}, {l0}", "movsbl {b1}, {l0}",
     ("xorl {l0}, {l0}", "cmpq {q1}, {q2}", "set{cc} {b0}")),
)
PARTIAL_READS = ("addq {q0}, {q1}", "movq {q0}, {q1}", "imulq {q0}, {q0}", "addl {l0}, {l1}", "movzbl {b0}, {l0}",
                 "movzbl {b0}, {l1}", "movzwl {w0}, {l1}", "movsbl {b0}, {l1}", "movzbl {h0}, {l1}", "addq {q0}, {q0}",
                 "testl {l0}, {l0}", "movq {q0}, {m}", "addb {b0}, {b1}")
FALSE_DEPS = {
    "fp": (("cvtsi2sd {q1}, {x0}", "cvtsi2sd {l1}, {x0}", "cvtsi2ss {q1}, {x0}", "cvtsi2ss {l1}, {x0}",
            "cvtsi2sdq {m}, {x0}", "sqrtss {x1}, {x0}", "sqrtsd {x1}, {x0}", "sqrtsd {m}, {x0}", "cvtss2sd {x1}, {x0}",
            "cvtsd2ss {x1}, {x0}", "rcpss {x1}, {x0}", "rsqrtss {x1}, {x0}", "roundsd ${rnd}, {x1}, {x0}",
            "roundss ${rnd}, {x1}, {x0}", "movss {x1}, {x0}", "movsd {x1}, {x0}", "vcvtsi2sd {q1}, {x0}, {x0}",
            "vsqrtsd {x1}, {x0}, {x0}", "vcvtss2sd {x1}, {x0}, {x0}", "vroundsd ${rnd}, {x1}, {x0}, {x0}"),
           (("xorps {x0}, {x0}", "cvtsi2sd {q1}, {x0}"), ("pxor {x0}, {x0}", "sqrtss {x1}, {x0}"),
            ("vxorps {x0}, {x0}, {x0}", "cvtsi2ss {l1}, {x0}"), ("movsd {m}, {x0}", "sqrtsd {x1}, {x0}"),
            "vcvtsi2sd {q1}, {x1}, {x0}", "vsqrtsd {x1}, {x1}, {x0}", "movsd {m}, {x0}")),
    "gpr": (("popcntq {q1}, {q0}", "popcntl {l1}, {l0}", "lzcnt:lzcntq {q1}, {q0}", "bmi1:tzcntq {q1}, {q0}",
             "bsfq {q1}, {q0}", "bsrq {q1}, {q0}"),
            (("xorl {l0}, {l0}", "popcntq {q1}, {q0}"), ("xorl {l0}, {l0}", "lzcnt:lzcntq {q1}, {q0}"))),
}
LOAD_OPS = {  # (operand from the chain, address from the chain), then the unfolded near misses
    "gpr": (("addq {m}, {q0}", "subq {m}, {q0}", "andq {m}, {q0}", "orq {m}, {q0}", "xorq {m}, {q0}", "imulq {m}, {q0}",
             "addl {m}, {l0}", "adcq {m}, {q0}", ("cmpq {m}, {q0}", "cmovlq {q1}, {q0}"), "cmovlq {m}, {q0}",
             "addq {q0}, {m}", "testq {q0}, {m}"),
            ("movq {m0}, {q0}", "addq {m0}, {q1}", "movq {m0}, {q1}", "imulq {m0}, {q1}", "addq {m0}, {q0}",
             "movzbl {m0}, {l0}", ("cmpq {m0}, {q1}", "cmovlq {q1}, {q0}")),
            (("movq {m}, {q1}", "addq {q1}, {q0}"), ("movq {m}, {q1}", "imulq {q1}, {q0}"))),
    "xmm": (("addps {m}, {x0}", "addsd {m}, {x0}", "mulsd {m}, {x0}", "paddd {m}, {x0}", "vpaddd {m}, {x0}, {x0}",
             "fma:vfmadd231sd {m}, {x1}, {x0}", "vmulsd {m}, {x0}, {x0}"),
            ("movsd {m0}, {x0}", "addsd {m0}, {x0}", "vaddps {m0}, {x1}, {x0}", "movaps {m0}, {x0}"),
            (("movsd {m}, {x1}", "addsd {x1}, {x0}"), ("movaps {m}, {x1}", "paddd {x1}, {x0}"))),
    "ymm": (("vaddps {m}, {y0}, {y0}", "vmulps {m}, {y0}, {y0}", "fma:vfmadd231ps {m}, {y1}, {y0}",
             "fma:vfmadd213ps {m}, {y1}, {y0}", "fma:vfmadd231pd {m}, {y1}, {y0}", "avx2:vpaddd {m}, {y0}, {y0}"),
            ("vmovups {m0}, {y0}", "vaddps {m0}, {y1}, {y0}", "fma:vfmadd231ps {m0}, {y1}, {y0}"),
            (("vmovups {m}, {y1}", "vaddps {y1}, {y0}, {y0}"),
             ("vmovups {m}, {y2}", "fma:vfmadd231ps {y2}, {y1}, {y0}"))),
}
MULTI_OUTPUT = (  # %rax and %rdx are in every such block's pool
    ("mulq {q1}", "imulq {q1}", "mull {l1}", "imull {l1}", "mulq {m}", "imulq {m}", "bmi2:mulxq {q1}, {q2}, {q3}",
     "bmi2:mulxq {m}, {q2}, {q3}", ("cqto", "idivq {q1}"), ("xorl %edx, %edx", "divq {q1}"), ("cltd", "idivl {l1}"),
     ("xorl %edx, %edx", "divl {l1}"), "divq {q1}", "cqto", "cltd", "xchgq {q1}, {q2}", "xchgl {l1}, {l2}",
     "xaddq {q1}, {q2}", "cmpxchgq {q1}, {q2}"),
    ("imulq {q1}, %rax", "imull {l1}, %eax", "imulq $7, {q1}, %rdx", "cltq", ("movq {q1}, {q2}", "movq {q2}, {q1}")),
)
MULTI_PRODUCERS = ("imulq %rax, %rax", "addq {q1}, %rax", "movq {m}, %rax", "imulq {q1}, %rdx", "addq %rdx, %rax",
                   "leaq 1(%rax,%rdx), %rax")
MULTI_CONSUMERS = ("addq %rdx, %rax", "movq %rdx, %rax", "imulq %rdx, %rax", "addq %rdx, {q1}", "addq %rax, {q1}",
                   "adcq %rdx, {q1}", "movq %rax, {m}", "leaq (%rax,%rdx), {q1}", "imulq {q1}, {q1}")
FLAG_SETTERS = ("cmpq {q1}, {q0}", "cmpq ${i}, {q0}", "cmpl {l1}, {l0}", "testq {q0}, {q0}", "testl {l0}, {l1}",
                "addq {q1}, {q0}", "subq ${i}, {q0}", "andq {q1}, {q0}", "incq {q0}", "decq {q0}", "negq {q0}",
                "shlq ${s}, {q0}", "btq ${s}, {q0}", "cmpq {m}, {q0}", "ucomisd {x1}, {x0}")
FLAG_USERS = ("cmov{cc}q {q1}, {q2}", "cmov{cc}l {l1}, {l0}", "cmov{cc}q {q2}, {q0}", "set{cc} {b2}", "adcq {q1}, {q2}",
              "adcq $0, {q0}", "sbbq {q1}, {q2}", "sbbl $0, {l2}", "cmov{cc}q {m}, {q2}")
PARTIAL_FLAGS = (("incq {q1}", "adcq {q2}, {q0}"), ("decq {q1}", "sbbq $0, {q0}"), ("incq {q1}", "cmovbq {q2}, {q0}"),
                 ("decq {q0}", "adcq {q0}, {q2}"), ("incq {q1}", "setb {b0}"))


class _Block:
    """One block's registers and the filler for its forms: `{q0}` is the general register of role
    0 in 64 bits (`{l0}` `{w0}` `{b0}` `{h0}` in 32, 16, 8, high 8), `{x0}`/`{y0}` the vector
    register of role 0, `{m}` an address no chain runs through, `{m0}` one based on role 0."""

    def __init__(self, rng: random.Random, extensions: frozenset[str], gprs: Sequence[str] | None = None):
        self.rng, self.extensions = rng, extensions
        self.gprs = list(gprs) if gprs else rng.sample(_GPRS, rng.choice(_POOL_SIZES))
        self.vectors = rng.sample(range(16), rng.choice(_POOL_SIZES))
        self.bases = [b for b in _BASES if b not in self.gprs]

    def options(self, options: Sequence[Option]) -> list[Option]:
        """The options whose every line needs no ISA extension but this block's CPU's."""
        def runs(line: str) -> bool:
            need, _, _ = line.rpartition(":")
            return not need or need in self.extensions
        return [o for o in options if all(runs(line) for line in ((o,) if isinstance(o, str) else o))]

    def pick(self, options: Sequence[Option], roles: Sequence[int] = (0, 1, 2, 3)) -> list[str]:
        chosen = self.rng.choice(self.options(options))
        cc = self.rng.choice(_TWO_FLAGS if self.rng.random() < 0.4 else _SINGLE_FLAG)  # one condition per option
        return [self.fill(line, roles, cc) for line in ((chosen,) if isinstance(chosen, str) else chosen)]

    def fill(self, line: str, roles: Sequence[int] = (0, 1, 2, 3), cc: str = "e") -> str:
        line = line.rpartition(":")[2]
        if "{h" in line:  # %ah exists for the four legacy registers, and never beside a REX prefix
            filled = self._fill(line, roles, cc)
            if "%?" not in filled and not _NO_HIGH_BYTE.search(filled):
                return filled
            line = line.replace("{h", "{b")
        return self._fill(line, roles, cc)

    def _fill(self, line: str, roles: Sequence[int], cc: str) -> str:
        def operand(match: re.Match) -> str:
            slot, role = match.group(1), match.group(2)
            if role and slot in ("q", "l", "w", "b", "h"):
                return "%" + _names(self.gprs[roles[int(role)] % len(self.gprs)])[slot]
            if role and slot in ("x", "y"):
                return f"%{slot}mm{self.vectors[roles[int(role)] % len(self.vectors)]}"
            if slot == "m":
                return self._address(self.gprs[roles[int(role)] % len(self.gprs)] if role else None)
            return self._immediate(slot, cc)

        return _canonical(re.sub(r"\{([a-z]+)(\d?)\}", operand, line))

    def _address(self, chained: str | None) -> str:
        rng = self.rng
        disp = rng.choice(DISPLACEMENTS) or ""
        if chained is None:
            return f"{disp}(%{rng.choice(self.bases)})"
        if rng.random() < 0.3:
            scale = rng.choice(("", ",2", ",4", ",8"))  # scale 1 is written without one
            return f"{disp}(%{rng.choice(self.bases)},%{chained}{scale})"
        return f"{disp}(%{chained})"

    def _immediate(self, slot: str, cc: str) -> str:
        if slot == "cc":
            return cc
        if slot not in _NUMBERS:
            raise ValueError(f"corner form placeholder {{{slot}}} is not one the generator fills")
        return str(self.rng.choice(_NUMBERS[slot]))


def _canonical(line: str) -> str:
    """As the disassembler writes it: `xchg` with %rax/%eax second (its one-byte encoding)."""
    if line.startswith("xchg"):
        mnemonic, _, rest = line.partition(" ")
        first, second = rest.split(", ")
        if first in ("%rax", "%eax"):
            return f"{mnemonic} {second}, {first}"
    return line


def _arrange(b: _Block, core: list[str], producers: Sequence[Option], consumers: Sequence[Option],
             roles_after: Sequence[int] = (0, 1, 2, 3), tail: int = 0) -> list[str]:
    """`core` with up to two chain producers before it and consumers after it, mostly few: at most
    `MAX_LENGTH` instructions with `tail` left over for the caller."""
    rng = b.rng
    room = min(MAX_LENGTH - tail - len(core), rng.choice((0, 0, 1, 1, 2, 2, 3, 4, 5, 6)))
    before = min(room, rng.choice((0, 1, 1, 1, 2)))
    head = [line for _ in range(before) for line in b.pick(producers)]
    rest = [line for _ in range(room - before) for line in b.pick(consumers, roles_after)]
    return head + core + rest


def _split(b: _Block, table: tuple) -> Sequence[Option]:
    """A corner table's forms, or its near misses for `NEAR_MISS` of the blocks (when the CPU has any)."""
    corner, near = table
    return near if b.rng.random() < NEAR_MISS and b.options(near) else corner


def _zero_idiom(b: _Block) -> list[str]:
    cls = b.rng.choice(("gpr", "gpr", "xmm", "ymm"))
    return _arrange(b, b.pick(_split(b, ZERO_IDIOMS[cls])), PRODUCERS[cls], CONSUMERS[cls])


def _dep_break(b: _Block) -> list[str]:
    classes = [c for c in ("xmm", "xmm", "ymm", "gpr", "gpr") if b.options(ONES_IDIOMS[c][0])]
    cls = b.rng.choice(classes)
    return _arrange(b, b.pick(_split(b, ONES_IDIOMS[cls])), PRODUCERS[cls], CONSUMERS[cls])


def _move_elim(b: _Block) -> list[str]:
    """A chain of moves through the pool (back to the start when the pool is small), an operation
    on its first register before it, consumers of its last after it."""
    rng = b.rng
    cls = rng.choice(("gpr", "gpr", "xmm", "ymm"))
    pool = len(b.gprs) if cls == "gpr" else len(b.vectors)
    forms = _split(b, MOVES[cls])
    moves = rng.randint(1, 4)
    core = [line for k in range(moves) for line in b.pick(forms, (k % pool, (k + 1) % pool, 2, 3))]
    last = moves % pool
    return _arrange(b, core, PRODUCERS[cls], CONSUMERS[cls], roles_after=(last, last + 1, last + 2, last + 3))


def _partial_reg(b: _Block) -> list[str]:
    if b.rng.random() < 0.6:  # mostly the registers that have a high byte too
        b = _Block(b.rng, b.extensions, b.rng.sample(_LEGACY, b.rng.choice(_POOL_SIZES)))
    writes = _split(b, PARTIAL_WRITES)
    return _arrange(b, b.pick(writes), PRODUCERS["gpr"], PARTIAL_READS)


def _false_dep(b: _Block) -> list[str]:
    cls = b.rng.choice(("fp", "fp", "fp", "gpr"))
    return _arrange(b, b.pick(_split(b, FALSE_DEPS[cls])), PRODUCERS[cls], CONSUMERS[cls])


def _load_fold(b: _Block) -> list[str]:
    rng = b.rng
    cls = rng.choice(("gpr", "gpr", "xmm", "ymm"))
    data, address, unfolded = LOAD_OPS[cls]
    roll = rng.random()
    forms = unfolded if roll < NEAR_MISS else address if roll < 0.5 else data
    # through an address the chain is a general register's, whatever the load's class
    producers = PRODUCERS["gpr"] if forms is address else PRODUCERS[cls]
    return _arrange(b, b.pick(forms), producers, CONSUMERS[cls])


def _multi_output(b: _Block) -> list[str]:
    rng = b.rng
    others = [r for r in _GPRS if r not in ("rax", "rdx")]
    pool = ["rax", "rdx", *rng.sample(others, rng.randint(0, 2))]
    rng.shuffle(pool)
    m = _Block(rng, b.extensions, pool)
    return _arrange(m, m.pick(_split(m, MULTI_OUTPUT)), MULTI_PRODUCERS, MULTI_CONSUMERS)


def _flags(b: _Block) -> list[str]:
    rng = b.rng
    branch = rng.random() < 0.4
    if rng.random() < 0.25:  # inc/dec leave CF alone: a carry reader waits on them all the same
        core = b.pick(PARTIAL_FLAGS)
    else:
        users = rng.choice((0, 1, 1, 1, 2)) if branch else rng.choice((1, 1, 2))
        core = b.pick(FLAG_SETTERS) + [line for _ in range(users) for line in b.pick(FLAG_USERS)]
    lines = _arrange(b, core, PRODUCERS["gpr"], CONSUMERS["gpr"], tail=int(branch))
    if branch:
        lines.append(b.fill("j{cc} {t}", cc=rng.choice(_SINGLE_FLAG + _TWO_FLAGS)))
    return lines


_BUILDERS: dict[str, Callable[[_Block], list[str]]] = {
    "zero_idiom": _zero_idiom, "dep_break": _dep_break, "move_elim": _move_elim, "partial_reg": _partial_reg,
    "false_dep": _false_dep, "load_fold": _load_fold, "multi_output": _multi_output, "flags": _flags,
}


def extensions(mcpu: str | None) -> frozenset[str]:
    """The ISA extensions blocks for `mcpu` may use; None: those every CPU in `FEATURES` has."""
    if mcpu is None:
        return frozenset.intersection(*FEATURES.values())
    if mcpu not in FEATURES:
        raise ValueError(f"no corner blocks for mcpu {mcpu!r}; choose from {', '.join(FEATURES)} or None")
    return FEATURES[mcpu]


def kind_of(index: int, seed: int = 0) -> str:
    """The kind the `index`-th block of `seed`'s mixed stream is (`iter_blocks` with kind=None)."""
    return random.Random(f"{seed}/corners/{index}").choice(list(KINDS))


def generate(count: int, seed: int = 0, start: int = 0, mcpu: str | None = None, kind: str | None = None) -> list[str]:
    """`count` corner blocks (canonical AT&T text), the `start`-th to the `start + count - 1`-th of `seed`'s stream."""
    return list(iter_blocks(count, seed, start, mcpu, kind))


def iter_blocks(count: int, seed: int = 0, start: int = 0, mcpu: str | None = None,
                kind: str | None = None) -> Iterator[str]:
    """Blocks of kinds drawn at random (`kind_of`), or of `kind` alone. A block of one kind is the
    block of the mixed stream at the same index wherever the mixed stream drew that kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown corner kind {kind!r}; choose from {', '.join(KINDS)}")
    available = extensions(mcpu)
    for index in range(start, start + count):
        rng = random.Random(f"{seed}/corners/{index}")  # a block is a function of (seed, index) and the ISA
        drawn = rng.choice(list(KINDS))
        yield "\n".join(_BUILDERS[kind or drawn](_Block(rng, available)))


__all__ = ["FEATURES", "KINDS", "extensions", "generate", "iter_blocks", "kind_of"]
