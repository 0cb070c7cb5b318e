"""The parametric llvm-mca (programs.parametric): llvm-mca's own pipeline under per-instruction
scheduling tables, checked against the real llvm-mca."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BHIVE

from surrogate_ops.blocks.elf import blocks_from_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs import LlvmMca, parametric

FOUR_ADDS = "addq %rax, %rbx\naddq %rcx, %rdx\naddq %rsi, %rdi\naddq %r8, %r9"  # independent: port-bound


@pytest.fixture(scope="module")
def driver():
    return parametric.build(LlvmMca().path)


def driven(driver, blocks: list[str], table: dict, knobs: dict | None = None) -> list[float | None]:
    """The driver's cycles for blocks under one table, in chunks on both cores."""
    chunks = [blocks[s:s + 2000] for s in range(0, len(blocks), 2000)]

    def one(chunk):
        return parametric.run(driver, "haswell", 100, parametric.job_text(knobs or {}, table, chunk), len(chunk), 600)

    with ThreadPoolExecutor(2) as pool:
        return [cycles for part in pool.map(one, chunks) for cycles, _ in part]


def test_stock_tables_give_stock_cycles_on_every_block(driver):
    """Without entries, and with an entry of no changes for every opcode the blocks use (each opcode
    then runs on a scheduling class of its own), the cycles are stock llvm-mca's, block for block:
    every shared BHive Haswell block and the blocks of a local binary."""
    hexes = [h for h, _ in blocks_from_binaries(["/usr/bin/ls"])]
    if (BHIVE / "hsw.csv").is_file():
        with open(BHIVE / "hsw.csv", newline="") as handle:
            hexes += [row["hex"] for row in csv.DictReader(handle)]
    blocks = [b for b in disassemble(list(dict.fromkeys(hexes))).blocks if b]
    stock = [r.cycles for r in LlvmMca().run(blocks)]
    assert sum(c is not None for c in stock) > 0.99 * len(blocks)
    assert driven(driver, blocks, {}) == stock
    every = {opcode: {} for opcode in parametric.opcodes(LlvmMca().path, blocks)}
    assert len(every) > 100
    assert driven(driver, blocks, every) == stock
    # the stock values written out as entries (latency, micro-ops, every port and group) say the same
    written = parametric.defaults(LlvmMca().path, blocks)
    assert len(written) > 0.9 * len(every) and "XOR32rr" in parametric.variants(LlvmMca().path, blocks)
    assert driven(driver, blocks, written) == stock


def test_entries_change_what_they_name():
    chain, adds = "imulq %rcx, %rdx", FOUR_ADDS
    stock = LlvmMca().run([chain, adds, "imulq (%rdi), %rdx"])
    assert [r.cycles for r in stock] == [303, 103, 308]

    def cycles(table, **knobs):
        return [r.cycles for r in LlvmMca(params={"per_instruction": table, **knobs}).run([chain, adds, "imulq (%rdi), %rdx"])]

    assert cycles({"IMUL64rr": {"latency": 10}}) == [1003, 103, 308]  # the register form only
    assert cycles({"ADD64rr": {"ports": {"HWPort0": 4}}}) == [303, 1600, 308]  # four adds on one port, 4 cycles each
    assert cycles({"ADD64rr": {"ports": {"HWPort0156": 2}}}) == [303, 202, 308]  # four ports, 2 cycles each
    assert cycles({"ADD64rr": {"uops": 4}}) == [303, 403, 308]  # 16 micro-ops an iteration, 4 a cycle
    assert cycles({"IMUL64rr": {}}, dispatch_width=1) == [r.cycles for r in LlvmMca(params={"dispatch_width": 1}).run(
        [chain, adds, "imulq (%rdi), %rdx"])]  # global knobs as llvm-mca's own


def test_a_params_file_carries_a_table(tmp_path):
    """`per_instruction` beside the global knobs in a --params file: what predict, collect and serve read."""
    from surrogate_ops.cli import _checked_params

    path = tmp_path / "params.json"
    path.write_text(json.dumps({"dispatch_width": 4, "per_instruction": {"IMUL64rr": {"latency": 5}}}))
    program = LlvmMca(params=_checked_params(str(path)))
    assert program.run(["imulq %rcx, %rdx"])[0].cycles == 503
    assert program.setting == {"dispatch_width": 4, "per_instruction": {"IMUL64rr": {"latency": 5}}}


@pytest.mark.parametrize("table, says", [
    ({"NOTANOPCODE": {"latency": 2}}, "unknown opcode NOTANOPCODE"),
    ({"ADD64rr": {"ports": {"HWPort9": 1}}}, "unknown processor resource HWPort9"),
    ({"ADD64rr": {"speed": 2}}, "an entry has latency, uops, ports"),
    ({"ADD64rr": {"latency": -1}}, "whole cycles or micro-ops, 0 or more"),
])
def test_bad_entries_are_named(table, says):
    with pytest.raises(SurrogateOpsError, match=says):
        LlvmMca(params={"per_instruction": table}).run(["addq %rax, %rbx"])
