"""The command line as a user meets it: help, one-line errors, the main job."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from support.cli import CLI, rows
from support.data import FIXTURES

pytestmark = pytest.mark.system  # every test runs the command line


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_help_lists_every_command_with_its_purpose():
    out = run("--help").stdout
    for command in ("collect", "summary", "train", "evaluate", "promote", "quickstart"):
        line = next(line for line in out.splitlines() if line.strip().startswith(command))
        assert len(line.split()) > 2, line


def test_missing_llvm_mca_is_one_line(tmp_path):
    proc = run("collect", "--asm", str(FIXTURES / "blocks.s"), "--out", str(tmp_path / "x.parquet"),
               env={"SURROGATE_OPS_LLVM_MCA": "/nonexistent/llvm-mca"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: llvm-mca not found") and "apt-get install -y llvm" in proc.stderr


def test_llvm_mca_option_and_collect_output(tmp_path):
    proc = run("--llvm-mca", shutil.which("llvm-mca"), "collect", "--asm", str(FIXTURES / "blocks.s"), "--quiet",
               "--out", str(tmp_path / "x.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "blocks: 8" in proc.stdout
    again = run("summary", str(tmp_path / "x.parquet"))
    assert "blocks: 8" in again.stdout


def test_bad_input_paths_are_clear_errors(tmp_path):
    proc = run("summary", str(tmp_path / "missing.parquet"))
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "junk.parquet").write_text("not parquet")
    proc = run("summary", str(tmp_path / "junk.parquet"))
    assert proc.returncode == 2 and "not a readable Parquet dataset" in proc.stderr
    proc = run("collect", "--binary", str(tmp_path / "nothing"), "--out", str(tmp_path / "y.parquet"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.slow
def test_quickstart_runs_the_whole_main_job(tmp_path):
    proc = run("quickstart", "--minutes", "0.1", "--limit", "1500", env={"SURROGATE_OPS_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "registered the bundled surrogate as models:/llvm-mca-haswell/1 (champion)" in out
    assert (tmp_path / "datasets" / "default.parquet").is_file() and "blocks: 1,500" in out
    assert "registered models:/llvm-mca-haswell/2 (aliases: challenger)" in out
    assert "vs llvm-mca:  MAPE" in out and "challenger v2" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in out
    assert "Traceback" not in proc.stderr


def test_predict_with_the_surrogate_and_with_llvm_mca(tmp_path):
    env = {"SURROGATE_OPS_HOME": str(tmp_path)}
    blocks = FIXTURES / "blocks.s"
    surrogate = run("predict", "--input", str(blocks), env=env)
    assert surrogate.returncode == 0, surrogate.stderr
    program = run("predict", "--input", str(blocks), "--program", "llvm-mca", env=env)
    assert program.returncode == 0, program.stderr
    s_rows, p_rows = rows(surrogate.stdout), rows(program.stdout)
    assert [r["index"] for r in s_rows] == [str(i) for i in range(8)] == [r["index"] for r in p_rows]
    from surrogate_ops.blocks import read_asm_file
    from surrogate_ops.programs import LlvmMca

    expected = LlvmMca().run(read_asm_file(blocks))
    assert [float(r["cycles"]) for r in p_rows] == [r.cycles for r in expected]
    assert {r["source"] for r in p_rows} == {"llvm-mca"} and {r["source"] for r in s_rows} == {"surrogate"}
    assert all(float(r["cycles"]) > 0 for r in s_rows)


def test_predict_reads_csv_and_reports_bad_blocks(tmp_path, fixture_blocks):
    csv = tmp_path / "blocks.csv"
    csv.write_text("hex\n" + "\n".join([fixture_blocks[0]["hex"], "ffff", fixture_blocks[1]["hex"]]) + "\n")
    out = run("predict", "--input", str(csv), "--program", "llvm-mca", env={"SURROGATE_OPS_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert [(r["index"], r["cycles"], r["source"]) for r in rows(out.stdout)] == [
        ("0", f"{fixture_blocks[0]['haswell']['cycles']:g}", "llvm-mca"), ("1", "", "error"),
        ("2", f"{fixture_blocks[1]['haswell']['cycles']:g}", "llvm-mca")]
    assert "block 1: " in out.stderr and "invalid instruction encoding" in out.stderr


def test_predict_routes_each_mcpu_to_its_own_surrogate(tmp_path):
    """Every bundled CPU answers through its own registered surrogate; a CPU with none says how to go on."""
    import numpy as np

    from surrogate_ops.blocks import read_asm_file
    from surrogate_ops.registry.versions import PRETRAINED, bundled_names
    from surrogate_ops.runtime.inference import Predictor

    env = {"SURROGATE_OPS_HOME": str(tmp_path)}
    blocks = read_asm_file(FIXTURES / "blocks.s")
    names = bundled_names()
    assert {n.removeprefix("llvm-mca-") for n in names} >= {"haswell", "skylake", "ivybridge", "znver2", "znver3"}
    answers = {}
    for name in names:
        mcpu = name.removeprefix("llvm-mca-")
        proc = run("predict", "--mcpu", mcpu, "--input", str(FIXTURES / "blocks.s"), env=env)
        assert proc.returncode == 0, proc.stderr
        answers[mcpu] = [float(r["cycles"]) for r in rows(proc.stdout)]
        assert np.allclose(answers[mcpu], Predictor(PRETRAINED / name).cycles(blocks), rtol=1e-5)
    assert not np.allclose(answers["haswell"], answers["znver3"], rtol=1e-3)
    proc = run("predict", "--mcpu", "znver1", "--input", str(FIXTURES / "blocks.s"), env=env)
    assert proc.returncode == 2 and "no surrogate for -mcpu=znver1" in proc.stderr and "--program llvm-mca" in proc.stderr


def test_collect_generates_blocks_and_keeps_probe_seeds_out(tmp_path):
    proc = run("collect", "--generate", "40", "--generate-seed", "2", "--density", "dense", "--mcpu", "znver3",
               "--quiet", "--out", str(tmp_path / "g.parquet"))
    assert proc.returncode == 0, proc.stderr
    assert "blocks: 40" in proc.stdout and "generated:dense:2 40" in proc.stdout and "mcpu=znver3" in proc.stdout
    proc = run("collect", "--generate", "40", "--generate-seed", "9001", "--out", str(tmp_path / "p.parquet"))
    assert proc.returncode == 2 and "kept for held-out probe sets" in proc.stderr
