"""The edge image: `surrogate-ops containerize` builds the bento's OCI image with podman on a base
made here from the Debian archive, and deploy/smoke_test.py runs it and checks every answer against
the same models served on this host (surrogate, fallback, unreadable and exact blocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import CLI, COMMAND_TIMEOUT
from support.stores import store_with

pytestmark = pytest.mark.system  # `surrogate-ops containerize`
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return store_with(tmp_path_factory, edge_test="llvm-mca-haswell")


@pytest.mark.slow
@pytest.mark.server
def test_the_image_answers_as_the_host_service_does(home, tmp_path):
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home), "BENTOML_HOME": str(tmp_path / "bentoml")}
    image = f"localhost/surrogate-ops-test:{os.getpid()}"
    built = subprocess.run([*CLI, "containerize", "--model", "models:/edge-test@champion", "--image", image],
                           capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    try:
        assert f"built {image} (" in built.stdout and "on localhost/surrogate-ops-base:bookworm" in built.stdout
        inside = subprocess.run(["podman", "run", "--rm", "--entrypoint", "sh", image, "-c",
                                 "llvm-mca --version; python -c 'import torch' 2>&1; python -c 'import mlflow' 2>&1;"
                                 " python -c 'import onnxruntime; print(onnxruntime.__version__)'"],
                                capture_output=True, text=True, timeout=120)
        assert "LLVM version" in inside.stdout, inside.stdout + inside.stderr
        assert "No module named 'torch'" in inside.stdout and "No module named 'mlflow'" in inside.stdout
        import onnxruntime

        assert inside.stdout.strip().endswith(onnxruntime.__version__)  # pinned to this host's
        report = tmp_path / "smoke.json"
        smoke = subprocess.run([sys.executable, str(ROOT / "deploy" / "smoke_test.py"), image, "--blocks", "512",
                                "--repeats", "1", "--json", str(report)], capture_output=True, text=True, env=env,
                               timeout=COMMAND_TIMEOUT)
        assert smoke.returncode == 0, (smoke.stdout + smoke.stderr)[-3000:]
        figures = json.loads(report.read_text())
        assert figures["carries"] == {"haswell": "edge-test/1"} and figures["mismatches"] == 0
        assert figures["max_rel_diff_surrogate"] <= 1e-6 and figures["container_blocks_per_s"] > 0
    finally:
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, check=False)


def test_a_per_instruction_table_is_refused_for_an_image(home, tmp_path):
    env = {**os.environ, "SURROGATE_OPS_HOME": str(home), "BENTOML_HOME": str(tmp_path / "bentoml")}
    out = subprocess.run([*CLI, "containerize", "--params", "learned:haswell"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 2 and "parametric llvm-mca driver" in out.stderr
