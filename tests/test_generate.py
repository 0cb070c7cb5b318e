"""The block generator: every form assembles and labels under the real llvm-mca on every CPU we
serve, blocks are a function of (seed, density, index), and density controls dependencies."""

from __future__ import annotations

import random
import subprocess

import pytest

from surrogate_ops import presets
from surrogate_ops.blocks import normalize_block
from surrogate_ops.blocks.deps import edges
from surrogate_ops.blocks.generate import DENSITIES, _Block, _forms, generate
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.programs import LlvmMca

CPUS = [cpu for cpu in presets.load("microarchitectures")]


def every_form(copies: int = 2) -> list[str]:
    rng = random.Random(7)
    forms, _ = _forms()
    return [_Block(rng, DENSITIES["mixed"]).fill(form) for form in forms for _ in range(copies)]


@pytest.mark.parametrize("mcpu", CPUS)
def test_every_form_and_generated_block_labels_under_llvm_mca(mcpu):
    blocks = (every_form() + generate(150, seed=3) + generate(150, seed=4, density="dense")
              + generate(100, seed=4, density="unrolled") + generate(100, seed=4, density="loops"))
    results = LlvmMca(mcpu).run(blocks)
    failed = [(b, r.error) for b, r in zip(blocks, results, strict=True) if not r.ok]
    assert failed == []
    assert all(r.cycles > 0 for r in results)


def test_generated_text_is_what_the_disassembler_writes():
    """Assembled and disassembled again, a generated instruction reads the same: generated and real
    (BHive, binaries) blocks tokenize alike."""
    lines = every_form(3)
    out = subprocess.run(["llvm-mc", "-triple=x86_64", "--show-encoding"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True).stdout
    codes = [line.split("encoding: [")[1].rstrip("]") for line in out.splitlines() if "encoding: [" in line]
    hexes = ["".join(byte[2:] for byte in code.split(",")) for code in codes]
    assert disassemble(hexes).blocks == lines
    assert all(normalize_block(line) == line for line in lines)


def test_blocks_are_a_function_of_seed_density_and_index():
    first = generate(40, seed=11)
    assert generate(40, seed=11) == first
    assert generate(10, seed=11, start=30) == first[30:]
    assert generate(40, seed=12) != first
    assert generate(40, seed=11, density="dense") != first
    assert all(1 <= len(b.split("\n")) <= 64 for b in generate(300, seed=1))
    assert max(len(b.split("\n")) for b in generate(300, seed=1, max_instructions=12)) <= 12


def test_density_controls_dependencies():
    def chained(density: str) -> float:
        """In-iteration register edges per instruction: how often an instruction reads an earlier one's result."""
        blocks = generate(300, seed=5, density=density, max_instructions=12)
        return sum(e.kind == "reg" for b in blocks for e in edges(b)) / sum(len(b.split("\n")) for b in blocks)

    dense, mixed, sparse = chained("dense"), chained("mixed"), chained("sparse")
    assert dense > 0.5 and dense > mixed > sparse and sparse < 0.3


def test_unrolled_blocks_repeat_a_short_body():
    blocks = generate(300, seed=6, density="unrolled", max_instructions=12)
    mnemonics = [[line.split()[0] for line in b.split("\n")] for b in blocks]
    assert all(len(set(m)) <= 3 for m in mnemonics)
    assert sum(len(m) >= 4 and len(set(m)) == 1 for m in mnemonics) > 50  # one form over and over, often


def test_loops_are_short_and_carry_chains():
    """The loops people type first: one to four instructions, most of them reading an earlier result
    (in the iteration or across it), every length present."""
    blocks = generate(400, seed=6, density="loops")
    lengths = [len(b.split("\n")) for b in blocks]
    assert set(lengths) == {1, 2, 3, 4}
    carried = sum(any(e.kind.endswith("carried") for e in edges(b)) for b in blocks)
    assert carried > 0.6 * len(blocks)


def test_unknown_density_is_refused():
    with pytest.raises(ValueError, match="unknown density"):
        generate(1, density="thick")
