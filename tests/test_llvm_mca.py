"""The llvm-mca adapter against llvm-mca itself: batching, bad blocks, parameters, errors."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from support.cli import script

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs import LlvmMca, Result
from surrogate_ops.programs.setting import McaSetting


def same(result: Result, reference: Result) -> bool:
    """Equal up to the rounding of RThroughput in llvm-mca's text view (one decimal)."""
    return (result.cycles, result.uops, result.error) == (reference.cycles, reference.uops, reference.error) and \
        abs(result.rthroughput - reference.rthroughput) < 0.051


def plain_llvm_mca(block: str, mcpu: str, *options: str) -> Result:
    """Reference: one plain llvm-mca process on one block, its text output parsed."""
    out = subprocess.run(["llvm-mca", "-mtriple=x86_64-unknown-linux-gnu", f"-mcpu={mcpu}", "-iterations=100", *options],
                         input=block + "\n", capture_output=True, text=True, check=True).stdout
    return Result(cycles=float(re.search(r"Total Cycles:\s+(\d+)", out).group(1)),
                  uops=int(re.search(r"Total uOps:\s+(\d+)", out).group(1)),
                  rthroughput=float(re.search(r"Block RThroughput:\s+([\d.]+)", out).group(1)))


@pytest.mark.parametrize("mcpu", ["haswell", "skylake"])
def test_batched_results_match_plain_llvm_mca(fixture_blocks, fixture_llvm_version, mcpu):
    program = LlvmMca(mcpu=mcpu, workers=2, chunk_size=3)  # several chunks over two workers
    results = program.run([b["block"] for b in fixture_blocks])
    for block, result in zip(fixture_blocks, results, strict=True):
        assert same(result, plain_llvm_mca(block["block"], mcpu)), block["block"]
        if program.version == fixture_llvm_version:
            assert same(result, Result(**block[mcpu]))


def test_invalid_block_keeps_every_other_result(fixture_blocks):
    good = [b["block"] for b in fixture_blocks]
    blocks = good[:3] + ["foo %rax, %rbx"] + good[3:]
    results = LlvmMca(workers=1).run(blocks)
    assert "invalid instruction mnemonic 'foo'" in results[3].error
    assert "line 1" in results[3].error
    expected = LlvmMca(workers=1).run(good)
    assert [r for i, r in enumerate(results) if i != 3] == expected


def test_block_that_aborts_llvm_mca_is_bisected_out(fixture_blocks):
    # On skylake, llvm-mca 14 aborts the whole run on an AVX-512 masked instruction.
    bad = "vaddps %zmm1, %zmm2, %zmm3 {%k1} {z}"
    good = [b["block"] for b in fixture_blocks]
    blocks = good[:5] + [bad] + good[5:]
    results = LlvmMca(mcpu="skylake", workers=1, chunk_size=100).run(blocks)
    assert "unsupported instruction" in results[5].error
    assert [r for i, r in enumerate(results) if i != 5] == LlvmMca(mcpu="skylake").run(good)


def test_refused_shapes_are_split_out_not_bisected(fixture_blocks, tmp_path):
    """Blocks with instructions skylake's model lacks (AVX-512) cost a call each, not a bisection of
    their chunk: the shape llvm-mca named runs apart from the rest, in this and later chunks; every
    answer, the refusals' words included, is the one the block gets alone."""
    real, calls = LlvmMca().path, tmp_path / "calls"
    path = script(tmp_path, "llvm-mca", f'#!/bin/sh\ncase "$*" in *-iterations=*) echo run >> {calls};; esac\nexec {real} "$@"\n')
    good = [b["block"] for b in fixture_blocks] * 3
    bad = ["vpaddd %zmm1, %zmm2, %zmm3", "addq %rax, %rbx\nvpaddd %zmm4, %zmm5, %zmm6", "vpaddd (%rax), %zmm5, %zmm5"]
    blocks = good[:4] + bad[:1] + good[4:9] + bad[1:] + good[9:]
    results = LlvmMca(mcpu="skylake", path=path, workers=1, chunk_size=len(blocks)).run(blocks)
    alone = LlvmMca(mcpu="skylake", workers=1, chunk_size=1).run(blocks)
    assert results == alone
    assert sum("unsupported instruction" in (r.error or "") for r in results) == 3
    assert calls.read_text().count("run") <= 7  # a bisection takes more than twice as many
    calls.unlink()
    again = LlvmMca(mcpu="skylake", path=path, workers=1, chunk_size=len(blocks)).run(blocks)
    assert again == alone and calls.read_text().count("run") == 4  # the shape is known: one call for the rest, one per suspect


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ('.include "/etc/passwd"', "directive"),
        (".incbin \"/etc/shadow\"", "directive"),
        ("addq %rax, %rbx\n.p2align 4", "directive"),
        ("# LLVM-MCA-END b0", "comments"),
        ("addq %rax, %rbx # LLVM-MCA-BEGIN evil", "comments"),
        ("addq %rax, %rbx\n# LLVM-MCA-END\n# LLVM-MCA-BEGIN x\nimulq %rcx, %rdx", "comments"),
        ("addq %rax, %rbx; .include \"x\"", "';'"),
        ("loop: addq %rax, %rbx", "label"),
        ("addq %rax,\x00 %rbx", "control character"),
        ("addq %rax, %rbx /* LLVM-MCA-END */", "comments"),
        ("", "empty"),
    ],
)
def test_injected_directives_and_markers_are_rejected(fixture_blocks, block, reason):
    good = [b["block"] for b in fixture_blocks[:3]]
    results = LlvmMca(workers=1).run([good[0], block, good[1], good[2]])
    assert results[1].error is not None and reason in results[1].error
    assert "block 1" in results[1].error
    assert [results[0], results[2], results[3]] == LlvmMca(workers=1).run(good)


def test_a_timed_out_chunk_is_run_again_in_halves_and_a_broken_llvm_mca_is_remembered(fixture_blocks, tmp_path):
    """A chunk that times out while llvm-mca still simulates one instruction is run again once, in
    halves, so the blocks beside a slow one get their answers; an llvm-mca that answers --version
    but hangs on every simulation is marked unavailable for `retry` seconds at the first timeout,
    and one that hangs on everything too; the whole process group is killed each time."""
    real, blocks = LlvmMca().path, [b["block"] for b in fixture_blocks[:6]]
    calls = tmp_path / "calls"
    path = script(tmp_path, "llvm-mca", f'#!/bin/sh\n[ -e {tmp_path}/hang ] && sleep 987654\n'
                                        f'case "$*" in *-iterations=*) echo run >> {calls};\n'
                                        f'  input=$(cat)\n'
                                        f'  case "$input" in *"LLVM-MCA-BEGIN b3"*) [ -e {tmp_path}/slow4 ] && sleep 987654;; esac\n'
                                        f'  [ -e {tmp_path}/slow ] && sleep 987654\n'
                                        f'  printf "%s\\n" "$input" | {real} "$@"; exit $? ;; esac\n'
                                        f'exec {real} "$@"\n')
    program = LlvmMca(path=path, workers=1, timeout=1, retry=2)
    expected = LlvmMca(workers=1).run(blocks)
    (tmp_path / "slow4").touch()  # slow on any run of four blocks or more
    assert program.run(blocks) == expected
    assert calls.read_text().count("run") == 4  # the chunk, the one-instruction check, two halves
    (tmp_path / "slow4").unlink()
    (tmp_path / "slow").touch()  # answers --version, hangs on every simulation
    results = program.run(blocks)
    assert all(r.error.startswith("llvm-mca unavailable: llvm-mca hangs on a one-instruction block") for r in results)
    assert all(r.error.startswith("llvm-mca unavailable") for r in program.run(blocks))  # at once, remembered
    assert calls.read_text().count("run") == 6
    (tmp_path / "slow").unlink()
    time.sleep(2)
    (tmp_path / "hang").touch()
    assert all("it hangs" in r.error for r in program.run(blocks))
    assert all("llvm-mca unavailable: llvm-mca hangs" in r.error for r in program.run(blocks))  # at once
    assert calls.read_text().count("run") == 6
    (tmp_path / "hang").unlink()
    time.sleep(2)
    assert program.run(blocks) == expected
    assert not subprocess.run(["pgrep", "-f", "sleep 987654"], capture_output=True).stdout


def test_an_llvm_mca_that_crashes_on_everything_is_not_bisected(fixture_blocks, tmp_path):
    """It answers --version but crashes on every simulation: one call for the chunk and one check,
    not the 2n-1 calls of a bisection, and the next chunks fail at once until `retry` has passed."""
    real, calls = LlvmMca().path, tmp_path / "calls"
    path = script(tmp_path, "llvm-mca", f'#!/bin/sh\ncase "$*" in *-iterations=*) echo run >> {calls}; kill -SEGV $$;; esac\n'
                                        f'exec {real} "$@"\n')
    blocks = [b["block"] for b in fixture_blocks] * 8
    results = LlvmMca(path=path, workers=1, retry=60).run(blocks)
    assert all(r.error.startswith("llvm-mca unavailable: llvm-mca crashes on a one-instruction block") for r in results)
    assert calls.read_text().count("run") == 2
    assert LlvmMca(path=path, workers=1, chunk_size=4).run(blocks) == results  # every chunk at once
    assert calls.read_text().count("run") == 2


def test_parameters_reach_llvm_mca(fixture_blocks):
    block = fixture_blocks[2]["block"]
    narrow = LlvmMca(setting=McaSetting({"dispatch_width": 1, "noalias": False})).run([block])[0]
    assert same(narrow, plain_llvm_mca(block, "haswell", "--dispatch=1", "--noalias=false"))
    assert narrow.cycles > LlvmMca().run([block])[0].cycles
    by_option = LlvmMca(setting=McaSetting({"dispatch": 1, "noalias": "false"})).run([block])[0]
    assert by_option == narrow


@pytest.mark.parametrize(
    ("params", "message"),
    [({"dispatch_width": 0}, "outside"), ({"warp_speed": 3}, "unknown llvm-mca parameter"),
     ({"load_queue": "many"}, "expected an integer"), ({"noalias": "maybe"}, "true or false")],
)
def test_bad_parameters_are_clear_errors(params, message):
    with pytest.raises(SurrogateOpsError, match=message):
        LlvmMca(setting=McaSetting(params))


def test_unknown_mcpu_is_an_error():
    with pytest.raises(SurrogateOpsError, match="does not know -mcpu=pentium9000"):
        LlvmMca(mcpu="pentium9000")


def test_missing_llvm_mca_says_how_to_install(monkeypatch):
    monkeypatch.setenv("SURROGATE_OPS_LLVM_MCA", "/nonexistent/llvm-mca")
    with pytest.raises(SurrogateOpsError, match="apt-get install -y llvm"):
        LlvmMca()


def test_program_declares_version_and_parameters():
    program = LlvmMca()
    assert re.fullmatch(r"\d+\.\d+\.\d+", program.version)
    assert {"dispatch_width", "micro_op_queue_size", "decoder_throughput", "register_file_size", "load_queue",
            "store_queue", "noalias"} <= set(program.parameters)
