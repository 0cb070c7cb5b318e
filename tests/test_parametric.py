"""The parametric llvm-mca (programs.parametric): llvm-mca's own pipeline under per-instruction
scheduling tables, checked against the real llvm-mca."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.cli import CLI, COMMAND_TIMEOUT
from support.data import BHIVE
from support.servers import free_port

from surrogate_ops.blocks.elf import blocks_from_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_tool
from surrogate_ops.programs import LlvmMca, parametric, tables
from surrogate_ops.programs.llvm_mca import read_setting
from surrogate_ops.programs.setting import McaSetting

FOUR_ADDS = "addq %rax, %rbx\naddq %rcx, %rdx\naddq %rsi, %rdi\naddq %r8, %r9"  # independent: port-bound


@pytest.fixture(scope="module")
def driver():
    return parametric.build(LlvmMca().path)


def driven(driver, blocks: list[str], table: dict, knobs: dict | None = None) -> list[float | None]:
    """The driver's cycles for blocks under one table, in chunks on both cores."""
    chunks = [blocks[s:s + 2000] for s in range(0, len(blocks), 2000)]

    def one(chunk):
        return parametric.run(driver, "haswell", 100, parametric.job_text(knobs or {}, table, chunk), len(chunk),
                              COMMAND_TIMEOUT)

    with ThreadPoolExecutor(2) as pool:
        return [cycles for part in pool.map(one, chunks) for cycles, _ in part]


@pytest.mark.shared_data
@pytest.mark.slow
def test_stock_tables_give_stock_cycles_on_a_third_of_bhive(driver):
    """Without entries, and with an entry of no changes for every opcode the blocks use (each opcode
    then runs on a scheduling class of its own), the cycles are stock llvm-mca's, block for block:
    every third BHive Haswell block of ../shared (skipped without them; 18,700 blocks, four passes
    of them: every block took two minutes of the suite) and the blocks of a local binary."""
    hexes = [h for h, _ in blocks_from_binaries(["/usr/bin/ls"])]
    with open(BHIVE / "hsw.csv", newline="") as handle:
        hexes += [row["hex"] for row in csv.DictReader(handle)][::3]
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
        return [r.cycles for r in LlvmMca(setting=McaSetting(knobs, table)).run([chain, adds, "imulq (%rdi), %rdx"])]

    assert cycles({"IMUL64rr": {"latency": 10}}) == [1003, 103, 308]  # the register form only
    assert cycles({"ADD64rr": {"ports": {"HWPort0": 4}}}) == [303, 1600, 308]  # four adds on one port, 4 cycles each
    assert cycles({"ADD64rr": {"ports": {"HWPort0156": 2}}}) == [303, 202, 308]  # four ports, 2 cycles each
    assert cycles({"ADD64rr": {"uops": 4}}) == [303, 403, 308]  # 16 micro-ops an iteration, 4 a cycle
    assert cycles({"IMUL64rr": {}}, dispatch_width=1) == [r.cycles for r in LlvmMca(setting=McaSetting({"dispatch_width": 1})).run(
        [chain, adds, "imulq (%rdi), %rdx"])]  # global knobs as llvm-mca's own


def test_a_params_file_carries_a_table(tmp_path):
    """`per_instruction` beside the global knobs in a --params file: what predict, collect and serve read."""
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"dispatch_width": 4, "per_instruction": {"IMUL64rr": {"latency": 5}}}))
    program = LlvmMca(setting=read_setting(str(path)))
    assert program.run(["imulq %rcx, %rdx"])[0].cycles == 503
    assert program.setting == McaSetting({"dispatch_width": 4}, {"IMUL64rr": {"latency": 5}}, "haswell")


@pytest.mark.parametrize("table, says", [
    ({"NOTANOPCODE": {"latency": 2}}, "X86 target has no opcode NOTANOPCODE"),
    ({"ADD64rr": {"ports": {"HWPort9": 1}}}, "scheduling model has no resource HWPort9"),
    ({"ADD64rr": {"speed": 2}}, "an entry has only latency, uops, ports"),
    ({"ADD64rr": {"latency": -1}}, "a latency is whole cycles from 0 to 1000"),
])
def test_bad_entries_are_named(table, says):
    """Through the library, when the program is made: the values, and the names against LLVM's
    opcodes and the mcpu's resources (the driver refuses an unknown one too, a last guard)."""
    with pytest.raises(SurrogateOpsError, match=says):
        LlvmMca(setting=McaSetting(table=table)).run(["addq %rax, %rbx"])


PORTS = ("HWPort0", "HWPort1", "HWPort5", "HWPort6")
# the tester's table: 17,000 on each of four ports wrapped HWPort0156's 16-bit sum and hung the driver
WRAPPED = {"ADD64rr": {"ports": dict.fromkeys(PORTS, 17_000)}}


def test_values_past_the_bounds_are_refused_and_the_bounds_answer_in_seconds(driver):
    """A value over MAX_VALUE (the tester's 17,000, and MAX_VALUE + 1) or an entry over
    MAX_ENTRY_CYCLES is refused, by the check and by the driver on its own; entries at every bound
    (each value at MAX_VALUE, ten resources adding up to MAX_ENTRY_CYCLES, groups named over their
    units, one port) answer within seconds, with llvm-mca's knobs at their defaults and at their
    tightest, and the imulq block run after them in the same process keeps the answer it has alone
    (303 cycles under the defaults)."""
    top = tables.MAX_VALUE
    over = [WRAPPED, {"ADD64rr": {"latency": top + 1}}, {"ADD64rr": {"uops": top + 1}},
            {"ADD64rr": {"ports": {"HWPort0": top + 1}}},
            {"ADD64rr": {"ports": dict.fromkeys([*PORTS, "HWPort0156", "HWPortAny", "HWPort2", "HWPort3", "HWPort4",
                                                 "HWPort7", "HWPort23"], top)}}]
    for table in over:
        with pytest.raises(SurrogateOpsError, match=r"from 0 to 1000|more than the 10,000"):
            LlvmMca(setting=McaSetting(table=table))
        refused = run_tool([str(driver), "-mcpu=haswell"], parametric.job_text({}, table, [FOUR_ADDS]), timeout=30)
        assert refused.returncode == 1 and refused.stdout.startswith("error ADD64rr "), refused.stdout
    assert "17000 is not a whole number from 0 to 1000" in run_tool(
        [str(driver), "-mcpu=haswell"], parametric.job_text({}, WRAPPED, [FOUR_ADDS]), timeout=30).stdout
    assert top * 10 == tables.MAX_ENTRY_CYCLES
    at_bounds = [{"ports": dict.fromkeys([*PORTS, "HWPort0156", "HWPortAny", "HWPort2", "HWPort3", "HWPort4", "HWPort7"], top)},
                 {"ports": dict.fromkeys(["HWPort0", "HWPort01", "HWPort015", "HWPort0156", "HWPortAny", "HWPort05",
                                          "HWPort056", "HWPort06", "HWPort04", "HWPort16"], top)},
                 {"ports": {"HWPort0": top}}, {"ports": {"HWPort0156": top}}, {}]
    blocks = [FOUR_ADDS, "imulq %rcx, %rdx", "\n".join([FOUR_ADDS] * 4)]
    for entry in at_bounds:
        table = parametric.check_table({"ADD64rr": {"latency": top, "uops": top, **entry}}, LlvmMca().path, "haswell")
        for knobs in ({}, {"dispatch": 1, "micro-op-queue-size": 1, "decoder-throughput": 1, "register-file-size": 1}):
            alone = parametric.run(driver, "haswell", 100, parametric.job_text(knobs, {}, blocks[1:2]), 1, timeout=60)
            assert knobs or alone[0] == (303, None)
            started = time.monotonic()
            answers = parametric.run(driver, "haswell", 100, parametric.job_text(knobs, table, blocks), 3, timeout=60)
            assert time.monotonic() - started < 10
            assert answers[1] == alone[0] and all(c and c >= 100 * top for c, _ in answers[::2]), (entry, answers)
    assert alone[0] != (303, None)  # the knobs act on every block: the imulq block's answer is its own under them


BAD_TABLES = {  # name: (a --params file's text, what its one-line message says)
    "wrapped": (WRAPPED, r"per_instruction\['ADD64rr'\]\['ports'\]\['HWPort0'\] is 17000: cycles on a resource are "
                         r"whole cycles from 0 to 1000"),
    "negative": ({"ADD64rr": {"latency": -1}}, r"\['latency'\] is -1: a latency is whole cycles from 0 to 1000"),
    "huge": ({"ADD64rr": {"uops": 10**9}}, r"\['uops'\] is 1000000000: micro-ops are a whole number from 0 to 1000"),
    "float": ({"ADD64rr": {"latency": 1.5}}, r"\['latency'\] is 1.5: a latency is whole cycles"),
    "bool": ({"ADD64rr": {"ports": {"HWPort0": True}}}, r"\['HWPort0'\] is True: cycles on a resource are whole"),
    "unknown knob": ({"ADD64rr": {"speed": 2}}, r"per_instruction\['ADD64rr'\]: an entry has only latency, uops, ports"),
    "unknown parameter": ({"speed": 2}, r"unknown llvm-mca parameter 'speed'"),
    "unknown opcode": ({"ADD64rx": {"latency": 2}}, r"LLVM's X86 target has no opcode ADD64rx \(did you mean ADD64rr\?\)"),
    "unknown port": ({"ADD64rr": {"ports": {"HWPort9": 1}}},
                     r"\['HWPort9'\]: -mcpu=haswell's scheduling model has no resource HWPort9 \(it has HWDivider"),
    "space in a key": ({"ADD64rr": {"ports": {"HWPort1 50": 1}}},
                       r"\['HWPort1 50'\]: a resource is named by an identifier .* not 'HWPort1 50'"),
    "newline in a key": ({"ADD64rr\nBLOCK 1": {"latency": 1}},
                         r"per_instruction\['ADD64rr\\nBLOCK 1'\]: an opcode is named by an identifier"),
    "ports as a list": ({"ADD64rr": {"ports": [1, 2]}}, r"\['ports'\] maps resource names to cycles, not \[1, 2\]"),
    "a key twice": ('{"per_instruction": {"ADD64rr": {"latency": 1}, "ADD64rr": {"latency": 2}}}',
                    r"key 'ADD64rr' is given twice"),
    "deep nesting": ('{"per_instruction": ' + "[" * 100_000 + "]" * 100_000 + "}", r"nested more than 16 levels deep"),
    "100k entries": ({f"ADD64rr{k}": {"latency": 1} for k in range(100_000)},
                     r"per_instruction has 100,000 entries, more than the 4,096 allowed"),
}


@pytest.mark.parametrize("name", BAD_TABLES)
@pytest.mark.system
def test_predict_refuses_a_bad_table_in_one_line(tmp_path, name):
    """predict --params with each of the tester's bad tables: exit status non-zero, one line naming
    the culprit (opcode, field, value, range), no traceback, no rows (it used to answer a row of
    errors per block, or a traceback)."""
    table, says = BAD_TABLES[name]
    params = tmp_path / "params.json"
    params.write_text(table if isinstance(table, str) else
                      json.dumps({"per_instruction": table} if "parameter" not in name else table))
    asm = tmp_path / "blocks.s"
    asm.write_text("imulq %rcx, %rdx\n\naddq %rax, %rbx\n")
    proc = subprocess.run([*CLI, "predict", "--program", "llvm-mca", "--params", str(params), "--input", str(asm)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == "", proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(f"^error: --params {re.escape(str(params))}: .*{says}", proc.stderr), proc.stderr


@pytest.mark.system
def test_collect_and_serve_refuse_a_bad_table_before_they_start(tmp_path):
    """collect --params and serve --params with an unknown port: refused at once, in one line, before
    any block is labelled or the service says it serves (serve used to come up healthy and fail
    every fallback)."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"per_instruction": {"ADD64rr": {"ports": {"HWPort9": 1}}}}))
    asm = tmp_path / "blocks.s"
    asm.write_text("addq %rax, %rbx\n")
    says = "has no resource HWPort9"
    proc = subprocess.run([*CLI, "collect", "--asm", str(asm), "--params", str(params), "--quiet",
                           "--out", str(tmp_path / "out.parquet")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out.parquet").exists()
    proc = subprocess.run([*CLI, "serve", "--model", str(tmp_path / "no-such-model"), "--params", str(params),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "serving" not in proc.stdout
    # a table of its own CPU ("_mcpu") is checked against that CPU's model
    params.write_text(json.dumps({"per_instruction": {"ADD64rr": {"ports": {"HWPort0": 1}}}, "_mcpu": "skylake"}))
    proc = subprocess.run([*CLI, "serve", "--model", str(tmp_path / "no-such-model"), "--params", str(params),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0 and "-mcpu=skylake's scheduling model has no resource HWPort0" in proc.stderr


def test_the_driver_refuses_lines_it_was_not_meant_to_read(driver):
    """Defence in depth: the driver's text protocol refuses a stray word, a doubled space, a tab, a
    sign, a fraction, a leading zero, a bad name or a block cut short, with exit status 1 and the
    reason, rather than reading another meaning into the line ("res HWPort1 50 7" was 50 cycles)."""
    for lines in ["OP ADD64rr res HWPort1 50 7", "OP ADD64rr  latency 5", "OP ADD64rr\tlatency 5", "OP ADD64rr latency +5",
                  "OP ADD64rr latency 5.0", "OP ADD64rr latency 05", "OP ADD64rr latency 1001", "OP ADD64rr latency",
                  "OP ADD64rr-x latency 5", "OP ADD64rr res HWPort1", "KNOB dispatch -1", "KNOB noalias 2",
                  "KNOB Dispatch 1", "OP ADD64rr latency 5 ", "", "BLOCK 0", "NAMES x", "OP ADD64rr res InvalidUnit 1",
                  "TABLEX", "BLOCK 1\nnop\nBLOCK 2\naddq %rax, %rbx"]:
        proc = run_tool([str(driver), "-mcpu=haswell"], f"TABLE\n{lines}\n", timeout=30)
        refused = proc.stdout.splitlines()[-1]
        assert proc.returncode == 1 and refused.startswith("error ") and proc.stdout.count("error") == 1, (lines, proc.stdout)
    assert refused == "error the input ended inside a block"
    resources = run_tool([str(driver), "-mcpu=haswell"], "RESOURCES\n", timeout=30).stdout.split()
    assert {"HWPort0", "HWPort0156", "HWDivider"} <= set(resources) and "InvalidUnit" not in resources
    opcodes, known = parametric.known_names(LlvmMca().path, "skylake")
    assert {"ADD64rr", "IMUL64rr"} <= opcodes and "SKLPort0" in known and "HWPort0" not in known
