"""The compiled front end (blocks/native/frontend.cpp) against its reference, the Python front end:
the same canonical text from hex, the same token ids and edge tokens, the same errors naming the
same blocks, on every BHive block, on blocks cut from real libraries and on the odd spellings users
type. Each block the compiled side reads is compared with what Python reads of it; the share it
leaves to Python is held small, so the comparison covers the compiled path, not the fallback."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from support.data import BHIVE, BHIVE_FILES

from surrogate_ops.blocks import compiled, hexcode
from surrogate_ops.blocks.batching import Flat
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir

pytestmark = pytest.mark.skipif(compiled.library() is None, reason="no C++ compiler here to build the front end")


def rows(flat: Flat) -> list[list[tuple[int, ...]]]:
    """A Flat back as token ids per instruction per block."""
    tokens = flat.tokens.tolist()
    out, t, k = [], 0, 0
    for count in flat.per_block.tolist():
        block = []
        for n in flat.per_instruction[k:k + count].tolist():
            block.append(tuple(tokens[t:t + n]))
            t += n
        k += count
        out.append(block)
    return out


def compare(predictor: Predictor, blocks: list[str], first: int = 0) -> float:
    """Both front ends on `blocks`: every block the compiled side reads gets Python's ids, and the
    mixed path (compiled, the rest in Python) gets Python's errors and unknown tokens. The share
    the compiled side read itself."""
    native = predictor.native
    flat, deferred = native.encode(blocks, threads=2)
    predictor._lines.clear()
    encoded, where, errors, unknown = predictor._encode_part(blocks, first)
    python = dict(zip(where, encoded, strict=True))
    mine = np.flatnonzero(~deferred).tolist()
    for block, i in zip(rows(flat), mine, strict=True):
        assert i in python and python[i] == block, f"block {i}: {blocks[i]!r}\ncompiled {block}\npython   {python.get(i)}"
        assert i not in unknown
    mixed, mixed_where, mixed_errors, mixed_unknown = predictor._encode_native(blocks, first)
    assert mixed_errors == errors and sorted(mixed_unknown) == sorted(unknown)
    assert dict(zip(mixed_where.tolist(), rows(mixed), strict=True)) == {i: list(b) for i, b in python.items()}
    return len(mine) / max(len(blocks), 1)


def respelled(text: str, k: int) -> str:
    """A canonical block as users type it: tabs, no space after commas, blank lines, upper case."""
    if k % 3 == 0:
        return text.replace(", ", ",").replace(" ", "\t", 1).upper()
    if k % 3 == 1:
        return "  " + text.replace("\n", " \n\n ") + "\r"
    return text


ODD = [
    "lock xaddl %ecx, (%rbx)", "lock\nxaddl %ecx, (%rbx)", "rep movsb (%rsi), %es:(%rdi)", "REP STOSQ %rax, %es:(%rdi)",
    "addq $0x10, %rax", "addq $-1, %rax", "addq $+5, %rax", "addq $007, %rax", "addq $1_0, %rax", "addq $0b1, %rax",
    "addq $0X1F, %rax", "addq $-0x1, %rax", "addq $00, %rax", "movabsq $0x123456789abcdef01, %rax",
    "movabsq $-9223372036854775808, %rax",
    "movabsq $18446744073709551615, %rax", "movabsq $18446744073709551616, %rax", "movabsq $0x00000000000000000ff, %rax",
    "movabsq $0x10000000000000000, %rax", "movq 0x123456789abcdef012(%rax), %rbx", "addq $000000000000000000001, %rax", "movq %fs:40, %rax", "movq %fs:(%rax), %rbx", "movq 8(%rip), %rax",
    "vaddps (%rax){1to16}, %zmm1, %zmm2{%k1}{z}", "vaddps %zmm1, %zmm2, %zmm3{%k1", "movq (,%rax,8), %rbx",
    "movq 0(%rax,%rbx), %rcx", "movq -0(%rax), %rcx", "movq 16(%rsp,%rax,1), %rcx", "jmp *%rax", "jmp *8(%rax)",
    "callq 0x10", "addq %rax,, %rbx", "addq %rax, %rbx # a comment", "addq %rax, %rbx; subq %rax, %rbx",
    "addq %rax, %rbx\n\n\nsubq %rbx, %rax", "", "   \n\t", "label: addq %rax, %rbx", ".byte 0x90", "{vex} vpdpbusd %xmm1, %xmm2, %xmm3",
    "addq\t%r8d, %r15w", "movl %r08d, %eax", "xorl %eax, %eax\nincl %eax", "vpxor %xmm1, %xmm1, %xmm1",
    "imulq %rcx\ndivq %rbx", "mulx %rax, %rbx, %rcx", "pushq %rax\npopcnt %rax, %rbx\npopq %rcx", "cqto\ncltq",
    "xchgq %rax, (%rbx)\nxaddq %rcx, (%rbx)", "cmovneq %rax, %rbx\nsete %al", "addq %rax, %rbx\n" * 3 + "lock",
    "invlpg (%rax)", "addq %rax, %rbx\n" + "x" * 300, "addq %rax, %rbx\x00", "addq %rax, %rbé",
    "\n".join(["addq %rax, %rbx"] * 65), "\n".join(["addq %rax, %rbx"] * 64), "vfmadd231ps %ymm1, %ymm2, %ymm3",
    "movsb\ncmpsq\nlodsl\nscasw", "ADDQ %RAX, %RBX", "addq %rax , %rbx", "movq %xmm0, %rax\nmovq %rax, %xmm1",
]


def test_odd_spellings_read_as_python_reads_them():
    predictor = Predictor(ModelDir.bundled("haswell"))
    share = compare(predictor, ODD)
    assert share > 0.5  # most of them are the compiled side's own
    python = Predictor(ModelDir.bundled("haswell"))
    python.native = None
    assert predictor.predict(ODD) == python.predict(ODD)


def test_calls_past_the_line_cache_read_as_python_reads_them():
    """Blocks whose distinct lines outnumber a thread's line cache (2**17), so that the cache empties
    during a call, over two calls: each block's lines outlive the block (emptied mid-block, the
    rows already read pointed into freed memory: a crash on the second call, or wrong ids)."""
    from surrogate_ops.blocks.generate import PROBE_SEED, iter_blocks

    blocks = [f"{b}\naddq ${k}, %rax" for k, b in enumerate(iter_blocks(40_000, seed=PROBE_SEED + 12))]
    assert len({line for b in blocks for line in b.split("\n")}) > 1 << 17
    predictor = Predictor(ModelDir.bundled("haswell"))
    for half in (blocks[:20_000], blocks[20_000:]):
        predictor.native.encode(half, threads=1)  # one thread: one state, its cache filled and emptied
    assert compare(predictor, blocks) > 0.9


def test_hex_disassembles_as_python_does(fixture_blocks, monkeypatch):
    hexes = [b["hex"] for b in fixture_blocks] + ["f00fc10b", "f3a4", "f0", "0f0b4801c3", "c5", "ffff", "4801c3f3", "4801c", ""]
    fast = hexcode.disassemble(hexes)
    assert fast == _python_disassembly(hexes, monkeypatch)
    assert fast.errors[len(hexes) - 1] == "not an even-length hex string" and fast.blocks[0] is not None


def bhive_hexes() -> list[str]:
    return sorted({row["hex"] for name in BHIVE_FILES for row in csv.DictReader((BHIVE / name).open())})


@pytest.mark.shared_data
@pytest.mark.slow
def test_every_bhive_block_reads_as_python_reads_it(monkeypatch):
    """Every distinct block of BHive's three files: the same text from hex as the Python
    disassembly, and the same arrays from that text and from a respelled copy, for the bundled
    Haswell and znver3 vocabularies."""
    hexes = bhive_hexes()
    fast = hexcode.disassemble(hexes, workers=2)
    texts = [b for b in fast.blocks if b is not None]
    reference = _python_disassembly(hexes, monkeypatch)
    assert fast.blocks == reference.blocks and fast.errors == reference.errors
    for cpu in ("haswell", "znver3"):
        predictor = Predictor(ModelDir.bundled(cpu))
        assert compare(predictor, texts) > 0.99
        assert compare(predictor, [respelled(t, k) for k, t in enumerate(texts)]) > 0.6


@pytest.mark.slow
def test_blocks_of_real_libraries_read_as_python_reads_them(monkeypatch):
    """Blocks cut from glibc and OpenSSL's libcrypto (held out of every bundle's training)."""
    from surrogate_ops.blocks.elf import blocks_from_binaries

    libraries = [p for p in (Path("/usr/lib/x86_64-linux-gnu/libc.so.6"), Path("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"))
                 if p.is_file()]
    assert libraries, "glibc is on every machine this runs on"
    hexes = [h for h, _ in blocks_from_binaries(libraries, per_binary=4000)]
    fast = hexcode.disassemble(hexes, workers=2)
    reference = _python_disassembly(hexes, monkeypatch)
    assert fast.blocks == reference.blocks and fast.errors == reference.errors
    predictor = Predictor(ModelDir.bundled("skylake"))
    assert compare(predictor, [b for b in fast.blocks if b is not None]) > 0.9


def _python_disassembly(hexes: list[str], monkeypatch) -> hexcode.Disassembly:
    """The Python front end's disassembly (the compiled one turned off)."""
    with monkeypatch.context() as patch:
        patch.setenv("SURROGATE_OPS_FRONTEND", "python")
        return hexcode.disassemble(hexes, workers=1)
