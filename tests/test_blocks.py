"""Block sources: hex through llvm-mc, ELF binaries through llvm-objdump, assembly text files."""

from __future__ import annotations

import re
import subprocess

import pytest
from support.data import BHIVE, BHIVE_FILES, FIXTURES

from surrogate_ops.blocks import BlockError, normalize_block, read_asm_file
from surrogate_ops.blocks.elf import blocks_from_binaries, find_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError


@pytest.mark.parametrize("in_process", [True, False], ids=["libLLVM", "llvm-mc"])
def test_hex_round_trip(fixture_blocks, in_process):
    result = disassemble([b["hex"] for b in fixture_blocks], in_process=in_process)
    assert result.errors == {}
    assert result.blocks == [b["block"] for b in fixture_blocks]


@pytest.mark.parametrize("in_process", [True, False], ids=["libLLVM", "llvm-mc"])
def test_hex_batch_keeps_good_blocks_around_bad_ones(fixture_blocks, in_process):
    good = [b["hex"] for b in fixture_blocks]
    hexes = [good[0], "ffff", good[1], "4801", "xyz", good[2], "0f0b" + good[3], "48", "f0", "f0" + good[0]]
    result = disassemble(hexes, in_process=in_process)
    assert result.blocks[0] == fixture_blocks[0]["block"]
    assert result.blocks[2] == fixture_blocks[1]["block"]
    assert result.blocks[5] == fixture_blocks[2]["block"]
    assert result.blocks[6] == "ud2\n" + fixture_blocks[3]["block"]  # a block holding ud2 of its own
    assert set(result.errors) == {1, 3, 4, 7, 8}
    assert "invalid instruction encoding" in result.errors[1]
    assert "hex" in result.errors[4]
    assert result.blocks[9].startswith("lock ")  # a prefix joins the instruction it prefixes


@pytest.mark.shared_data
def test_the_in_process_disassembler_prints_what_llvm_mc_prints(tiny_binary):
    """libLLVM's C disassembler and llvm-mc give the same canonical text and the same failures, on
    blocks cut from binaries, on every BHive block of ../shared (skipped without them), and on
    bytes chosen to fail (truncated, invalid, a bare prefix)."""
    import csv

    from surrogate_ops.blocks.elf import blocks_from_binaries
    from surrogate_ops.blocks.hexcode import llvm_disasm
    from surrogate_ops.llvm_tools import find_tool

    assert llvm_disasm.load(find_tool("llvm-mc")) is not None  # Debian's llvm links libLLVM: the fast path is taken
    hexes = [h for h, _ in blocks_from_binaries([tiny_binary, "/usr/bin/ls"])]
    hexes += ["4801", "48", "ffff", "f0", "0f0b", "c5", "c5fc", "62f1"]
    for name in BHIVE_FILES:  # hsw, skl, ivb
        with open(BHIVE / name, newline="") as handle:
            hexes += [row["hex"] for row in csv.DictReader(handle)]
    hexes = list(dict.fromkeys(hexes))
    fast, reference = disassemble(hexes), disassemble(hexes, in_process=False)
    assert fast.blocks == reference.blocks
    assert set(fast.errors) == set(reference.errors)


def test_large_calls_are_disassembled_by_forked_workers_as_by_one_process(tiny_binary):
    from surrogate_ops.blocks import hexcode

    hexes = [h for h, _ in blocks_from_binaries([tiny_binary, "/usr/bin/ls"])] + ["4801", "48", "ffff", "zz", ""]
    hexes = hexes * (-(-hexcode.PARALLEL_MIN // len(hexes)))
    alone, shared = disassemble(hexes, workers=1), disassemble(hexes, workers=2)
    assert len(hexes) >= hexcode.PARALLEL_MIN and alone.blocks == shared.blocks and alone.errors == shared.errors
    assert len(alone.errors) >= 5 * (len(hexes) // hexcode.PARALLEL_MIN) and any(alone.blocks)


def test_forked_workers_die_on_terminate_whatever_the_parent_does_with_sigterm():
    """The CLI turns SIGTERM into KeyboardInterrupt; a worker that inherited that could outlive
    Pool.terminate and leave the parent waiting on it for ever (seen once in 10 collects)."""
    import signal

    from surrogate_ops.forking import fork_pool

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        pool = fork_pool(2)
        assert pool.map(signal.getsignal, [signal.SIGTERM] * 4) == [signal.SIG_DFL] * 4
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN  # Ctrl-C is the parent's
        pool.apply_async(__import__("time").sleep, (60,))  # a worker busy, one waiting on the queue
        pool.terminate()
        pool.join()  # returns: both die on SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_normalize_block_canonical_form():
    text = "  LOCK\n\taddq\t%rax,(%rdi)\n\n  movq   8(%rsp, %rax, 4) ,%rcx  \n"
    assert normalize_block(text) == "lock addq %rax, (%rdi)\nmovq 8(%rsp,%rax,4), %rcx"


@pytest.mark.parametrize("text", ["addq %rax, %rbx\n.section .data", "addq %rax, %rbx ; nop", "x: nop", "nop \"a\""])
def test_normalize_block_names_block_and_line(text):
    with pytest.raises(BlockError) as info:
        normalize_block(text, index=7)
    assert info.value.block == 7 and info.value.line is not None
    assert str(info.value).startswith(f"block 7, line {info.value.line}:")


def test_literals_and_lines_llvm_mca_would_refuse_are_refused(tmp_path):
    """A literal past 64 bits is refused as llvm-mca refuses it (the surrogate once answered it);
    one that fits is kept. A line past MAX_LINE is refused without being quoted whole."""
    from surrogate_ops.blocks.asm import MAX_LINE
    from surrogate_ops.programs import LlvmMca

    refused = ["movq $0x123456789abcdef01234, %rax", "movq $18446744073709551616, %rax",
               "movq 0x123456789abcdef01234(%rax), %rbx"]
    kept = ["movq $0xffffffffffffffff, %rax", "addl $-18446744073709551615, %eax"]
    for text in refused:
        with pytest.raises(BlockError, match="does not fit in 64 bits"):
            normalize_block(text)
    assert [normalize_block(text) for text in kept] == kept
    command = LlvmMca(iterations=1).command()
    for text in refused + kept:  # llvm-mca itself, on the raw text, draws the same line
        proc = subprocess.run(command, input=text + "\n", capture_output=True, text=True, timeout=60)
        assert (proc.returncode != 0) == (text in refused), (text, proc.stderr)
    line = "addq " + "%rax, " * 1000 + "%rbx"
    with pytest.raises(BlockError) as info:
        normalize_block(line, index=3)
    assert f"over the limit of {MAX_LINE}" in str(info.value) and len(str(info.value)) < 200


def test_asm_file_blocks_are_separated_by_blank_lines():
    blocks = read_asm_file(FIXTURES / "blocks.s")
    assert len(blocks) == 8
    assert normalize_block(blocks[0]) == "addq %rax, %rbx\nimulq %rcx, %rdx"


def test_elf_blocks(tiny_binary):
    found = blocks_from_binaries([tiny_binary])
    assert found and all(src == str(tiny_binary) for _, src in found)
    hexes = [h for h, _ in found]
    assert len(hexes) == len(set(hexes))  # deduplicated
    result = disassemble(hexes)
    assert result.errors == {}
    texts = [b for b in result.blocks if b]
    mnemonics = {line.split()[0] for b in texts for line in b.split("\n")}
    assert not any(m.startswith(("j", "call", "ret", "nop")) for m in mnemonics)
    # the loop body of sum(): a load and an add
    assert any("(%r" in b and "add" in b for b in texts)
    # every block is a run of consecutive instruction bytes in objdump's own listing
    listing = subprocess.run(["llvm-objdump", "-d", str(tiny_binary)], capture_output=True, text=True).stdout
    code = "".join(re.findall(r"^\s+[0-9a-f]+:\s+([0-9a-f]{2}(?: [0-9a-f]{2})*)", listing, flags=re.MULTILINE)).replace(" ", "")
    assert all(h in code for h in hexes)


def test_elf_blocks_cap_length_and_limit(tiny_binary):
    assert len(blocks_from_binaries([tiny_binary], limit=3)) == 3
    capped = disassemble([h for h, _ in blocks_from_binaries([tiny_binary], max_len=2)])
    assert all(b.count("\n") < 2 for b in capped.blocks if b)


def test_binary_sources_are_checked(tmp_path):
    (tmp_path / "notes.txt").write_text("not a binary")
    assert find_binaries([tmp_path]) == []
    with pytest.raises(SurrogateOpsError, match="not an ELF file"):
        find_binaries([tmp_path / "notes.txt"])
    with pytest.raises(SurrogateOpsError, match="no such file"):
        find_binaries([tmp_path / "missing"])
