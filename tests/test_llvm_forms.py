"""The forms taken from LLVM (`presets/llvm_forms.json`, made by `programs.x86_forms`): every one
assembles and schedules under the real llvm-mca for each CPU that lists it, the preset covers the
instruction classes real code has and the hand list lacked, and the "forms" density draws them
into deterministic blocks llvm-mca accepts, with their registers from the block's pools."""

from __future__ import annotations

import random
import re

import pytest

from surrogate_ops import presets
from surrogate_ops.blocks.deps import edges
from surrogate_ops.blocks.generate import _GPR8, _GPR16, Density, _Block, fill, generate, llvm_forms
from surrogate_ops.programs import LlvmMca, x86_forms
from surrogate_ops.programs.x86_forms import Printed

SERVED = list(presets.load("microarchitectures"))
LISTED = sorted({cpu for group in presets.load("llvm_forms")["groups"] for cpu in group["cpus"]})


def refused(blocks: list[str], mcpu: str) -> list[tuple[str, str]]:
    results = LlvmMca(mcpu, iterations=1, chunk_size=1000).run(blocks)
    return [(b, r.error) for b, r in zip(blocks, results, strict=True) if not r.ok]


@pytest.mark.parametrize("mcpu", LISTED)
def test_every_form_is_accepted_for_the_cpus_that_list_it(mcpu):
    assert refused(fill(list(llvm_forms(mcpu))), mcpu) == []


def test_the_preset_covers_the_served_cpus_and_their_isa():
    assert set(SERVED) <= set(LISTED)
    for cpu in SERVED:
        forms = llvm_forms(cpu)
        assert len(forms) > 3000
        assert not any("{zmm}" in f or "{%k}" in f or "{k}" in f for f in forms)  # no AVX-512 without avx512f
    wide = llvm_forms("skylake-avx512")
    assert set(llvm_forms("haswell")) < set(wide)
    assert {"vmovdqa32 {zmm}, {zmm}{%k}", "vaddps {zmm}, {zmm}, {zmm}{%k}{z}", "kmovw {k}, {k}"} <= set(wide)
    assert set(llvm_forms(None)) == set(llvm_forms("haswell"))  # None: what every CPU of the preset lists


@pytest.mark.parametrize("mcpu", SERVED)
def test_the_preset_covers_what_the_hand_list_lacked(mcpu):
    forms = llvm_forms(mcpu)
    wanted = {
        "pmaddubsw": r"pmaddubsw \{x\}, \{x\}", "pclmulqdq": r"pclmulqdq \$\{b\}, \{x\}, \{x\}",
        "aesenc": r"aesenc \{m\}, \{x\}", "vpbroadcastd": r"vpbroadcastd \{x\}, \{y\}",
        "vinserti128": r"vinserti128 \$\{b\}, \{x\}, \{y\}, \{y\}", "shld": r"shldq \$\{b\}, \{r\}, \{m\}",
        "rorx": r"rorxq \$\{b\}, \{r\}, \{r\}", "mulx": r"mulxq \{r\}, \{r\}, \{r\}", "xchg": r"xchgq \{r\}, \{m\}",
        "rep stos": r"rep stosq %rax, %es:\(%rdi\)", "byte registers": r"movzbl \{l\}, \{e\}",
        "16-bit cmov": r"cmovew \{w\}, \{w\}", "lock": r"lock cmpxchgq \{r\}, \{m\}", "x87": r"fadd \{st\}, %st",
    }
    missing = [name for name, pattern in wanted.items() if not any(re.fullmatch(pattern, f) for f in forms)]
    assert missing == []


def test_the_native_tool_prints_every_opcode_and_the_preset_is_its_forms():
    """The enumeration runs (the tool is built if need be) and the checked-in preset is what it
    makes now: every listed form is a template of some opcode, and known opcodes read as expected."""
    features, rows = x86_forms.listing(LlvmMca().path, ["haswell", "skylake-avx512"])
    assert "+avx512f" in features["skylake-avx512"] and "+avx512f" not in features["haswell"]
    assert len({r.opcode for r in rows}) > 15000
    templates: set[tuple[str, str]] = set()  # (opcode, form)
    for row in rows:
        if x86_forms.drop_reason(row) is None:
            try:
                templates.add((row.opcode, x86_forms.template(row)))
            except ValueError:
                pass
    assert set(llvm_forms("skylake-avx512")) <= {form for _, form in templates}
    assert {("SHLD64mri8", "shldq ${b}, {r}, {m}"), ("VPMADDUBSWrr", "vpmaddubsw {x}, {x}, {x}"),
            ("XCHG64ar", "xchgq {r}, %rax"), ("SHL64rCL", "shlq %cl, {r}"), ("CMOV16rr", "cmovew {w}, {w}"),
            ("STOSQ", "rep stosq %rax, %es:(%rdi)"),
            ("VADDPSZrrbkz", "vaddps {rc}, {zmm}, {zmm}, {zmm}{%k}{z}")} <= templates


def test_what_is_dropped_and_why():
    def row(opcode: str, text: str, flags: str = "enc=legacy", classes: tuple[str, ...] = ()) -> Printed:
        return Printed(opcode, frozenset(flags.split(",")), (), classes, frozenset(), text, text)

    assert "control flow" in x86_forms.drop_reason(row("JMP_1", "jmp 1", "enc=legacy,branch,barrier,terminator"))
    assert "control flow" in x86_forms.drop_reason(row("SYSCALL", "syscall"))
    assert "privileged" in x86_forms.drop_reason(row("WRMSR", "wrmsr"))
    assert "privileged" in x86_forms.drop_reason(row("MOV64cr", "movq %cr1, %rbx", classes=("CONTROL_REG",)))
    assert "segment" in x86_forms.drop_reason(row("PUSHFS64", "pushq %fs"))
    assert x86_forms.drop_reason(row("STOSQ", "rep stosq %rax, %es:(%rdi)")) is None
    assert x86_forms.drop_reason(row("INC64r", "incq %rbx")) is None


def test_forms_blocks_are_deterministic_and_accepted():
    for mcpu in ("haswell", "skylake-avx512"):
        blocks = generate(150, seed=21, density="forms", mcpu=mcpu)
        assert generate(150, seed=21, density="forms", mcpu=mcpu) == blocks
        assert generate(50, seed=21, density="forms", mcpu=mcpu, start=100) == blocks[100:]
        assert generate(150, seed=22, density="forms", mcpu=mcpu) != blocks
        assert refused(blocks, mcpu) == []
    blocks = generate(300, seed=23, density="forms")
    mnemonics = {line.split()[0] for b in blocks for line in b.split("\n")}
    assert len(mnemonics) > 300  # uniform over thousands of forms, not the hand list's 150
    assert any("(%rip)" in b for b in blocks) and any("%fs:" in b or "%gs:" in b for b in blocks)
    assert refused(blocks, "znver3") == []
    with pytest.raises(ValueError, match="no forms for -mcpu=pentium"):
        generate(1, density="forms", mcpu="pentium")


def test_the_new_slots_draw_from_the_block_pools():
    """A block of one general and one vector register names them in every width, so its chains hold."""
    block = _Block(random.Random(1), Density(gprs=(1,), vectors=(1,), addresses=(1,)))
    lines = block.fill("movb {l}, {l}\naddw {w}, {w}\nimulq {r}, {r}\nvpaddd {zmm}, {zmm}, {zmm}{%k}").split("\n")
    gpr, vector = block.gprs[0], block.vectors[0]
    assert lines[:3] == [f"movb %{_GPR8[gpr]}, %{_GPR8[gpr]}", f"addw %{_GPR16[gpr]}, %{_GPR16[gpr]}",
                         f"imulq %{gpr}, %{gpr}"]
    assert lines[3] == f"vpaddd %zmm{vector}, %zmm{vector}, %zmm{vector}{{%k{1 + vector % 7}}}"
    assert {(e.consumer, e.producer) for e in edges("\n".join(lines)) if e.kind == "reg"} >= {(1, 0), (2, 1)}
