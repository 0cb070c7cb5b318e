"""The registered model as MLflow hands it out (`mlflow_model`): through `mlflow.pyfunc.load_model` and
`mlflow models serve` it keeps the product's policy (llvm-mca where the surrogate is not trusted,
refusals with the reason, the error head's estimates); and the bundled surrogates open by name from
any working directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import pytest
from support.data import GOOD, LONG, UNKNOWN
from support.servers import free_port
from support.stores import in_home, store_with

from surrogate_ops.config import PRETRAINED
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor

URI = "models:/pyfunc-test@champion"
VFOO, DIRECTIVE, LABEL, CONTROL = "vfoo %xmm0", ".p2align 4", "a:.if 0", "addq %rax, %rbx\x00"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh store holding the bundled Haswell surrogate (it has an error head) as `pyfunc-test`."""
    return store_with(tmp_path_factory, pyfunc_test="llvm-mca-haswell")


@pytest.fixture(scope="module")
def model(home):
    with in_home(home):
        yield mlflow.pyfunc.load_model(URI)


def rows(model, blocks: list[str]) -> list[dict]:
    table = model.predict(blocks)
    assert list(table.columns) == ["cycles", "source", "reason", "estimated_error", "error"]
    return table.to_dict("records")


def test_pyfunc_answers_as_predict_does(model):
    blocks = [GOOD[1], UNKNOWN, LONG, VFOO, DIRECTIVE, LABEL, CONTROL]
    good, unknown, long, vfoo, directive, label, control = rows(model, blocks)
    cycles, estimated = Predictor(PRETRAINED / "llvm-mca-haswell").estimate([GOOD[1]])
    assert good["source"] == "surrogate" and good["reason"] is None and good["error"] is None
    assert good["cycles"] == pytest.approx(cycles[0], rel=1e-5)
    assert good["estimated_error"] == pytest.approx(estimated[0], abs=1e-4)  # the error head's estimate
    truth = LlvmMca(mcpu="haswell").run([UNKNOWN, LONG])
    assert unknown["source"] == "llvm-mca" and unknown["cycles"] == truth[0].cycles
    assert unknown["reason"] == "tokens outside the model's vocabulary: invlpg"
    assert long["source"] == "llvm-mca" and long["cycles"] == truth[1].cycles
    assert long["reason"] == "80 instructions, over the model's limit of 64"
    assert vfoo["source"] == "error" and "invalid instruction mnemonic 'vfoo'" in vfoo["error"]  # llvm-mca's refusal
    assert directive["error"] == "block 4, line 1: assembler directive '.p2align' is not allowed in a block"
    assert label["error"] == "block 5, line 1: label 'a:' is not allowed in a block"
    assert "control character" in control["error"]
    for row in (vfoo, directive, label, control):  # no number, no NaN: None where nothing applies
        assert row["source"] == "error" and row["cycles"] is None and row["estimated_error"] is None


def test_pyfunc_without_llvm_mca_refuses_untrusted_blocks(model, monkeypatch):
    monkeypatch.setenv("SURROGATE_OPS_LLVM_MCA", "/nonexistent/llvm-mca")
    good, unknown, directive = rows(model, [GOOD[1], UNKNOWN, DIRECTIVE])
    assert good["source"] == "surrogate" and good["estimated_error"] is not None
    assert unknown["source"] == "error" and unknown["cycles"] is None
    assert unknown["error"] == "block 1: not answered without llvm-mca: tokens outside the model's vocabulary: invlpg"
    assert directive["source"] == "error" and "'.p2align' is not allowed" in directive["error"]


@pytest.mark.server
@pytest.mark.system
def test_mlflow_models_serve_answers_inputs(home, tmp_path):
    """`mlflow models serve` with `{"inputs": [...]}`: the same rows, as strict JSON (null, not NaN)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "SURROGATE_OPS_HOME": str(home)}
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
                                 "-p", str(port)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.25)
        body = json.dumps({"inputs": [GOOD[0], UNKNOWN, DIRECTIVE]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
        good, unknown, directive = json.loads(text, parse_constant=pytest.fail)["predictions"]
        assert good["source"] == "surrogate" and good["cycles"] > 0 and good["estimated_error"] is not None
        assert unknown["source"] == "llvm-mca" and unknown["reason"].startswith("tokens outside")
        assert directive == {"cycles": None, "source": "error", "reason": None, "estimated_error": None,
                             "error": "block 2, line 1: assembler directive '.p2align' is not allowed in a block"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_bundled_surrogates_open_by_name_from_any_directory(tmp_path):
    code = ("from surrogate_ops.runtime.inference import Predictor\n"
            "from surrogate_ops.runtime.modeldir import ModelDir\n"
            "print(Predictor('llvm-mca-haswell').cycles(['addq %rax, %rbx'])[0])\n"
            "print(ModelDir.bundled('znver3').mcpu, ModelDir.bundled('llvm-mca-skylake').mcpu)\n"
            "try:\n    ModelDir.open('llvm-mca-nosuchcpu')\nexcept Exception as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cycles, mcpus, missing = out.stdout.strip().splitlines()
    assert float(cycles) == pytest.approx(Predictor(PRETRAINED / "llvm-mca-haswell").cycles(["addq %rax, %rbx"])[0])
    assert mcpus == "znver3 skylake"
    assert "the bundled ones are llvm-mca-haswell, llvm-mca-ivybridge" in missing
