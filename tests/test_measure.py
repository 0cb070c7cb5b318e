"""`measure`: basic blocks timed on this machine by the real harness (gcc-built, run pinned to a CPU),
and the measured CSV read by `finetune` with the real llvm-mca and MLflow store."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest
from support.cli import CLI, COMMAND_TIMEOUT

from surrogate_ops.blocks.encode import assemble
from surrogate_ops.programs.measure import Machine

ADD, IMUL, LOAD = "4801c0", "480fafc0", "488b00"  # addq %rax,%rax; imulq %rax,%rax; movq (%rax),%rax


@pytest.fixture(scope="module")
def machine() -> Machine:
    return Machine(repeats=8)


def test_chains_take_their_latencies_in_order(machine):
    """A chain of 3-cycle multiplies takes about three times a chain of 1-cycle adds (both are 1 and 3
    cycles on every x86 core since Sandy Bridge and Zen), a pointer-chasing load longer still; four
    independent adds a block take no longer than one dependent add (they run side by side)."""
    independent = assemble(["addq %rax, %rbx\naddq %rcx, %rdx\naddq %rsi, %rdi\naddq %r8, %r9"])[0][0]
    add, imul, load, wide = (m.cycles for m in machine.iterations([ADD, IMUL, LOAD, independent]))
    assert 2.6 < imul / add < 3.4, (add, imul)
    assert load > 3.5 * add and load > imul
    assert wide < 1.5 * add


def test_a_faulting_block_is_skipped_with_its_reason_and_the_rest_go_on(machine):
    """ud2 is an illegal instruction; a load from address 16 cannot be mapped in user space; a block
    that divides by a register holding an address overflows the quotient: each is skipped, named."""
    blocks = [ADD, "0f0b", "488b042510000000", "48f7f1", IMUL, "zz"]
    got = machine.iterations(blocks)
    assert [m.ok for m in got] == [True, False, False, False, True, False]
    assert "illegal instruction" in got[1].error
    assert "segmentation fault at 0x10" in got[2].error
    assert "arithmetic error" in got[3].error
    assert "not machine code" in got[5].error
    assert 2.6 < got[4].cycles / got[0].cycles < 3.4


def test_calibration_turns_ticks_into_cycles(machine):
    """Cycles per 100 iterations: the add chain is 100 by construction, the imul chain about 300."""
    machine.calibrate()
    add, imul = machine.run([ADD, IMUL])
    assert add.cycles == pytest.approx(100, rel=0.02)
    assert imul.cycles == pytest.approx(300, rel=0.12)
    assert {c.name for c in machine.calibration.chains} >= {"add", "imul", "load", "divq", "vaddpd", "vmulpd"}


@pytest.mark.slow
@pytest.mark.system
def test_measured_csv_feeds_finetune(tmp_path):
    """`measure` writes a BHive-format CSV (and what it ran on), and `finetune` reads it as it reads
    BHive's own files: a model of this machine, registered with its lineage."""
    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    out = tmp_path / "here.csv"
    proc = subprocess.run([*CLI, "measure", "--generate", "400", "--generate-seed", "9100", "--density", "loops",
                           "--repeats", "4", "--out", str(out), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) > 300 and all(float(r["throughput"]) > 0 for r in rows)
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["measured"] == len(rows) and record["cpu"]["closest"] == record["mcpu"]
    assert record["harness"]["repeats"] == 4 and record["harness"]["rounds"] == 3
    assert "closest bundled surrogate" in proc.stdout and "ticks per core cycle" in proc.stdout
    mcpu = record["mcpu"]
    proc = subprocess.run([*CLI, "finetune", "--from", f"models:/llvm-mca-{mcpu}@champion", "--data", str(out),
                           "--mcpu", mcpu, "--epochs", "2", "--register", f"llvm-mca-{mcpu}-measured", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MAPE vs measured" in proc.stdout and f"registered llvm-mca-{mcpu}-measured v1" in proc.stdout
    blocks = tmp_path / "blocks.s"
    blocks.write_text("addq %rax, %rbx\nimulq %rbx, %rcx\n\nmovq (%rdi), %rax\naddq $1, %rax\n")
    proc = subprocess.run([*CLI, "predict", "--input", str(blocks), "--mcpu", mcpu, "--target", "measured"],
                          capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    assert [r["source"] for r in rows] == ["surrogate", "surrogate"] and all(float(r["cycles"]) > 0 for r in rows)
