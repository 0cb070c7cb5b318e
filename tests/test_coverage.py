"""`coverage`: how much of a user's own code the bundled surrogates answer themselves, per CPU, with
the real surrogates and the real llvm-mca, on a binary compiled here and an assembly file."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pandas as pd
import pytest
from support.cli import CLI

from surrogate_ops.metrics import mape
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.serving import coverage

KNOWN = "addq %rax, %rbx\nimulq %rcx, %rbx\nmovq (%rdi), %rdx"
ASM = "\n\n".join([
    KNOWN,
    "invlpg (%rax)\naddq %rcx, %rdx",  # invlpg (privileged, in no training set): outside the bundled vocabularies
    "lgdt 16(%rip)\naddq %rax, %rbx",  # so is lgdt
    "\n".join(["addq %rax, %rbx"] * 70),  # over the surrogates' 64 instructions
    ".p2align 4\naddq %rax, %rbx",  # a directive: unreadable
]) + "\n"


def _coverage(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "coverage", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SURROGATE_OPS_HOME": str(home)})


@pytest.fixture(scope="module")
def user_code(tiny_binary, tmp_path_factory):
    asm = tmp_path_factory.mktemp("asm") / "mine.s"
    asm.write_text(ASM)
    return tiny_binary, asm


def test_each_cpu_answers_most_blocks_itself_and_names_why_not_the_rest(user_code):
    binary, asm = user_code
    records = coverage.read_blocks([binary], [asm], limit=200)
    assert len(records) > len(ASM.split("\n\n")) and records[-1].error is not None  # the directive block
    cpus = coverage.coverage(records, {m: ModelDir.bundled(m) for m in ("haswell", "znver3")})
    assert [c.mcpu for c in cpus] == ["haswell", "znver3"]
    for cpu in cpus:
        rows = cpu.rows
        assert cpu.blocks == len(records) and 0 < cpu.answered_share < 1
        reasons = dict(cpu.reasons())
        assert reasons["unknown_tokens"] >= 2 and reasons["too_long"] == 1 and reasons["unreadable"] == 1
        assert list(reasons.values()) == sorted(reasons.values(), reverse=True)
        assert cpu.answered + sum(reasons.values()) == cpu.blocks
        tokens = dict(cpu.unknown_tokens())
        assert tokens["invlpg"] == 1 and tokens["lgdt"] >= 1
        mine = rows[rows["file"] == str(asm)].reset_index(drop=True)
        assert list(mine["source"]) == ["surrogate", "llvm-mca", "llvm-mca", "llvm-mca", "error"]
        assert "invlpg" in mine.loc[1, "reason"] and "over the model's limit of 64" in mine.loc[3, "reason"]
        # the surrogate's answer is the Predictor's; a fallback's is llvm-mca's own
        reference = Predictor(ModelDir.bundled(cpu.mcpu)).cycles([KNOWN])[0]
        assert mine.loc[0, "cycles"] == pytest.approx(reference, rel=1e-4)
        fallback = rows[rows["source"] == "llvm-mca"]
        assert (fallback["cycles"] == fallback["mca_cycles"]).all() and fallback["surrogate_cycles"].isna().all()
        # MAPE and tau over the surrogate's own answers only, against llvm-mca run here on the same blocks
        own = rows[rows["source"] == "surrogate"]
        truth = [r.cycles for r in LlvmMca(cpu.mcpu).run(list(own["block"]))]
        assert cpu.mape_vs_mca == pytest.approx(mape(own["cycles"], truth))
        assert 0 < cpu.mape_vs_mca < 0.5 and 0.5 < cpu.tau_vs_mca <= 1
        answered = rows[np.isfinite(rows["cycles"])]
        assert mape(answered["cycles"], answered["mca_cycles"]) < cpu.mape_vs_mca  # fallbacks would flatter it
        assert cpu.metrics()[f"{cpu.mcpu}_answered_share"] == cpu.answered_share


@pytest.mark.system
def test_command_prints_the_table_writes_rows_and_logs_figures(user_code, fresh_home, tmp_path):
    import mlflow

    binary, asm = user_code
    out = tmp_path / "rows.csv"
    done = _coverage(fresh_home, "--binary", str(binary), "--asm", str(asm), "--mcpu", "skylake", "--limit", "50",
                     "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    figures = next(line.split() for line in lines if line.split()[0] == "skylake")  # cpu blocks answered MAPE tau
    rows = pd.read_csv(out)
    share = (rows["source"] == "surrogate").mean()
    assert figures[2] == f"{100 * share:.1f}%"
    assert any(line.strip().startswith("skylake: unknown_tokens") and "invlpg 1" in line for line in lines)
    run_id = lines[-1].removeprefix("logged to run ")
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["skylake_answered_share"] == pytest.approx(share)
    assert float(figures[3].rstrip("%")) == pytest.approx(100 * metrics["skylake_mape_vs_mca"], abs=0.006)
    assert metrics["skylake_fallback_too_long"] == 1


@pytest.mark.system
def test_a_model_answers_for_its_own_cpu_only(user_code, fresh_home):
    done = _coverage(fresh_home, "--asm", str(user_code[1]), "--model", str(ModelDir.bundled("haswell").path),
                     "--mcpu", "znver3", "--no-log")
    assert done.returncode == 2 and done.stderr.strip().endswith("imitates -mcpu=haswell, not znver3"), done.stderr
