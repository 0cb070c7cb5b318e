"""The corner-case generator: its blocks run under the real llvm-mca on every CPU we serve, use only
the ISA extensions of their CPU (checked by GNU as, whose tables are not LLVM's), read back from
machine code as written, are a function of (seed, index), and each kind's corner is one llvm-mca
really treats as a corner: a pair of blocks per claim, the corner against its look-alike."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass

import pytest

from surrogate_ops import presets
from surrogate_ops.blocks import normalize_block
from surrogate_ops.blocks.corners import FEATURES, KINDS, generate, iter_blocks, kind_of
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.programs import LlvmMca

CPUS = list(presets.load("microarchitectures"))
INTEL = ("haswell", "skylake", "ivybridge")
ZEN = ("znver2", "znver3")
# GNU as names for the ISA of each feature set: Ivy Bridge is Nehalem's with AVX
GAS_MARCH = {"ivybridge": "corei7+avx", None: "corei7+avx", "haswell": "corei7+avx2+fma+bmi+bmi2+lzcnt",
             "skylake": "corei7+avx2+fma+bmi+bmi2+lzcnt", "znver2": "znver2", "znver3": "znver3"}


@dataclass(frozen=True)
class Claim:
    """llvm-mca makes `cheap` at least `margin` cycles an iteration cheaper than `dear` on `cpus`, and
    both cost the same on `alike` (a corner its model of those CPUs leaves out). `emitted`: a regex
    for the corner line, which the generator's blocks of the kind must hold."""

    kind: str
    cheap: str
    dear: str
    emitted: str
    cpus: tuple[str, ...]
    alike: tuple[str, ...] = ()
    margin: float = 1.0


CLAIMS = {
    "xor-self-breaks-the-chain": Claim(
        "zero_idiom", "imulq %rax, %rax\nxorl %eax, %eax", "imulq %rax, %rax\nxorl %ecx, %eax",
        r"^xorl (%e\w+), \1$", tuple(CPUS), margin=2.5),
    "pxor-self-breaks-the-chain": Claim(
        "zero_idiom", "pmulld %xmm0, %xmm0\npxor %xmm0, %xmm0", "pmulld %xmm0, %xmm0\npxor %xmm1, %xmm0",
        r"^pxor (%xmm\d+), \1$", tuple(CPUS), margin=3),
    "vxorps-ymm-self-but-not-on-ivybridge": Claim(
        "zero_idiom", "vmulps %ymm0, %ymm0, %ymm0\nvxorps %ymm0, %ymm0, %ymm0",
        "vmulps %ymm0, %ymm0, %ymm0\nvxorps %ymm1, %ymm0, %ymm0",
        r"^vxorps (%ymm\d+), \1, \1$", ("haswell", "skylake", *ZEN), margin=3),
    "pcmpeqd-self-breaks-on-zen-only": Claim(
        "dep_break", "pmulld %xmm0, %xmm0\npcmpeqd %xmm0, %xmm0", "pmulld %xmm0, %xmm0\npcmpeqd %xmm1, %xmm0",
        r"^pcmpeqd (%xmm\d+), \1$", ZEN, alike=INTEL, margin=3),
    "sbb-self-hangs-on-the-carry-alone-on-zen": Claim(
        "dep_break", "imulq %rax, %rax\ncmpq %rcx, %rdx\nsbbq %rax, %rax",
        "imulq %rax, %rax\ncmpq %rcx, %rdx\nsbbq %rbx, %rax", r"^sbbq (%r\w+), \1$", ZEN, alike=INTEL, margin=2),
    "moves-eliminated-on-znver3-only": Claim(
        "move_elim", "movq %rax, %rbx\nmovq %rbx, %rax", "addq %rax, %rbx\naddq %rbx, %rax",
        r"^movq %r\w+, %r\w+$", ("znver3",), alike=("haswell", "skylake", "ivybridge", "znver2"), margin=1.5),
    "movzbl-never-eliminated": Claim(
        "move_elim", "movzbl %al, %ebx\nmovzbl %bl, %eax", "addq %rax, %rbx\naddq %rbx, %rax",
        r"^movzbl %\w+l, %e\w+$", (), alike=tuple(CPUS)),
    "byte-write-keeps-the-old-value": Claim(
        "partial_reg", "imulq %rax, %rax\nmovl %ecx, %eax", "imulq %rax, %rax\nmovb %cl, %al",
        r"^movb %\w+, %\w+l$", tuple(CPUS), margin=1.5),
    "setcc-without-xor-waits": Claim(
        "partial_reg", "imulq %rax, %rax\nxorl %eax, %eax\ncmpq %rcx, %rdx\nsetl %al",
        "imulq %rax, %rax\ncmpq %rcx, %rdx\nsetl %al", r"^set[a-z]+ %\w+$", tuple(CPUS), margin=1.5),
    "cvtsi2sd-merges-into-its-destination": Claim(
        "false_dep", "mulsd %xmm0, %xmm0\nxorps %xmm0, %xmm0\ncvtsi2sd %rax, %xmm0",
        "mulsd %xmm0, %xmm0\ncvtsi2sd %rax, %xmm0", r"^cvtsi2sd %r\w+, %xmm\d+$", tuple(CPUS), margin=4),
    "vex-form-merges-its-first-source": Claim(
        "false_dep", "mulsd %xmm0, %xmm0\nvcvtsi2sd %rax, %xmm1, %xmm0",
        "mulsd %xmm0, %xmm0\nvcvtsi2sd %rax, %xmm0, %xmm0", r"^vcvtsi2sd %r\w+, (%xmm\d+), \1$", tuple(CPUS),
        margin=4),
    "folded-operand-read-late-address-not": Claim(
        "load_fold", "imulq %rax, %rax\naddq 8(%rsp), %rax", "imulq %rax, %rax\naddq 8(%rax), %rax",
        r"^addq -?\d*\(%r\w+\), %r\w+$", tuple(CPUS), margin=2.5),
    "unfolded-load-cheaper-on-intel": Claim(
        "load_fold", "imulq %rax, %rax\nmovq 8(%rsp), %rcx\naddq %rcx, %rax", "imulq %rax, %rax\naddq 8(%rsp), %rax",
        r"^movq -?\d*\(%r\w+\), %r\w+$", INTEL, margin=1.5),
    "mulx-high-half-later-than-low": Claim(
        "multi_output", "mulxq %rcx, %rdx, %rax", "mulxq %rcx, %rax, %rdx", r"^mulxq %r\w+, %r\w+, %r\w+$",
        ("haswell", "skylake", "znver3"), alike=("znver2",), margin=0.9),
    "jcc-at-the-end-costs-nothing-cmov-does": Claim(
        "flags", "imulq %rax, %rax\ntestq %rax, %rax\njne 14",
        "imulq %rax, %rax\ntestq %rax, %rax\ncmovneq %rcx, %rax",
        r"^j[a-z]+ -?\d+$", tuple(CPUS), margin=1.5),
    "cmovbe-reads-two-flag-groups-on-intel": Claim(
        "flags", "imulq %rax, %rax\ncmpq %rcx, %rax\ncmovbq %rcx, %rax",
        "imulq %rax, %rax\ncmpq %rcx, %rax\ncmovbeq %rcx, %rax", r"^cmovbeq %r\w+, %r\w+$", INTEL, alike=ZEN,
        margin=0.9),
}


@pytest.fixture(scope="module")
def claimed() -> dict[tuple[str, str], float]:
    """Cycles an iteration of every claim's blocks, by (mcpu, block): one llvm-mca run per CPU."""
    blocks = sorted({b for c in CLAIMS.values() for b in (c.cheap, c.dear)})
    out = {}
    for mcpu in CPUS:
        mca = LlvmMca(mcpu)
        for block, result in zip(blocks, mca.run(blocks), strict=True):
            assert result.ok, (mcpu, block, result.error)
            out[mcpu, block] = result.cycles / mca.iterations
    return out


@pytest.mark.parametrize("mcpu", CPUS)
def test_blocks_run_under_llvm_mca(mcpu):
    blocks = generate(2000, seed=1, mcpu=mcpu) + generate(300, seed=2)  # the CPU's own, and those for any
    failed = [(b, r.error) for b, r in zip(blocks, LlvmMca(mcpu).run(blocks), strict=True) if not r.ok]
    assert failed == []


def gas(march: str, blocks: list[str]) -> subprocess.CompletedProcess:
    """GNU as on the distinct lines of `blocks`, for the ISA `march` names."""
    assert shutil.which("as"), "GNU as (binutils) is needed to check the ISA extensions"
    lines = sorted({line for block in blocks for line in block.split("\n")})
    return subprocess.run(["as", "--64", f"-march={march}", "-o", "/dev/null", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True)


@pytest.mark.parametrize("mcpu", [*CPUS, None])
def test_blocks_use_only_their_cpus_isa(mcpu):
    """GNU as, told the CPU's extensions, assembles every line; blocks for any CPU are ivybridge's."""
    proc = gas(GAS_MARCH[mcpu], generate(1500, seed=3, mcpu=mcpu))
    assert proc.returncode == 0, proc.stderr[:2000]
    if mcpu is None:
        assert generate(200, seed=3) == generate(200, seed=3, mcpu="ivybridge")


def test_ivybridge_gets_no_avx2_fma_or_bmi():
    """The check above has teeth: haswell's blocks hold lines that Ivy Bridge's ISA lacks."""
    proc = gas(GAS_MARCH["ivybridge"], generate(1500, seed=3, mcpu="haswell"))
    refused = set(re.findall(r"`(\w+)'", proc.stderr))
    assert proc.returncode != 0 and {"mulx", "vfmadd231ps", "tzcnt", "lzcnt"} <= refused, refused


def test_text_is_what_the_disassembler_writes():
    """Assembled and disassembled again, every line but a branch (whose target is relative) reads
    the same, and is canonical: corner and real blocks tokenize alike."""
    lines = sorted({line for mcpu in ("haswell", None) for block in generate(1000, seed=4, mcpu=mcpu)
                    for line in block.split("\n") if not line.startswith("j")})
    out = subprocess.run(["llvm-mc", "-triple=x86_64", "--show-encoding"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True).stdout
    codes = [line.split("encoding: [")[1].rstrip("]") for line in out.splitlines() if "encoding: [" in line]
    assert disassemble(["".join(byte[2:] for byte in code.split(",")) for code in codes]).blocks == lines
    assert all(normalize_block(line) == line for line in lines)


def test_blocks_are_a_function_of_seed_and_index():
    first = generate(60, seed=11)
    assert generate(60, seed=11) == first
    assert generate(20, seed=11, start=40) == first[40:]
    assert list(iter_blocks(60, seed=11)) == first
    assert generate(60, seed=12) != first
    for kind in KINDS:  # a kind's stream is the mixed stream where that kind was drawn
        alone = generate(60, seed=11, kind=kind)
        assert all(alone[i] == first[i] for i in range(60) if kind_of(i, seed=11) == kind)


def test_every_kind_appears_and_blocks_stay_small():
    kinds = Counter(kind_of(i, seed=5) for i in range(800))
    assert set(kinds) == set(KINDS) and min(kinds.values()) > 60
    for kind in KINDS:
        blocks = generate(300, seed=5, kind=kind, mcpu="haswell")
        assert all(1 <= len(b.split("\n")) <= 8 for b in blocks)
        vectors = [set(re.findall(r"%[xy]mm(\d+)", b)) for b in blocks]
        general = [set(re.findall(r"(?<!\()%(?:r|e)?(ax|bx|cx|dx|si|di|bp|\d+)", re.sub(r"\(.*?\)", "", b)))
                   for b in blocks]
        assert max(map(len, vectors)) <= 4 and max(map(len, general)) <= 4, kind


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="corner kind 'zero'"):
        generate(1, kind="zero")
    with pytest.raises(ValueError, match="mcpu 'pentium4'"):
        generate(1, mcpu="pentium4")
    assert set(FEATURES) == set(CPUS)


def test_every_kind_has_a_claim():
    assert {c.kind for c in CLAIMS.values()} == set(KINDS)


@pytest.mark.parametrize("name", CLAIMS)
def test_llvm_mca_treats_the_corner_as_claimed(name, claimed):
    claim = CLAIMS[name]
    blocks = generate(2000, seed=6, kind=claim.kind, mcpu="haswell")
    assert any(re.match(claim.emitted, line) for b in blocks for line in b.split("\n")), "the generator never emits it"
    for mcpu in claim.cpus:
        cheap, dear = claimed[mcpu, claim.cheap], claimed[mcpu, claim.dear]
        assert dear - cheap >= claim.margin, f"{mcpu}: {cheap:.2f} vs {dear:.2f} cycles an iteration"
    for mcpu in claim.alike:
        cheap, dear = claimed[mcpu, claim.cheap], claimed[mcpu, claim.dear]
        assert abs(dear - cheap) < 0.1, f"{mcpu}: {cheap:.2f} vs {dear:.2f} cycles an iteration"
