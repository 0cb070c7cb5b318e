"""Fixtures (the tiny real blocks in fixtures/ with their true llvm-mca output, a binary built here,
a fresh store) and hooks. Helpers the tests share live in the support package (support/__init__.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.data import FIXTURES, bhive_absent


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `shared_data` reads BHive's measurements in ../shared, which the repository does
    not hold: without them it is skipped, saying so, before its fixtures run (it never shrinks to
    other data while its docstring promises BHive's)."""
    if item.get_closest_marker("shared_data") is not None and (why := bhive_absent()):
        pytest.skip(why)


@pytest.fixture(scope="session")
def fixture_blocks() -> list[dict]:
    """Blocks of fixtures/blocks.s with hex and llvm-mca's output per mcpu (made by make_fixtures.py)."""
    return json.loads((FIXTURES / "blocks.json").read_text())["blocks"]


@pytest.fixture(scope="session")
def fixture_llvm_version() -> str:
    return json.loads((FIXTURES / "blocks.json").read_text())["llvm_version"]


@pytest.fixture(scope="session")
def tiny_binary(tmp_path_factory) -> Path:
    """A small ELF program compiled here, so block extraction is tested on a known binary."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc/gcc) is needed to build the tiny test binary")
    src = tmp_path_factory.mktemp("bin") / "tiny.c"
    src.write_text(
        "#include <stdio.h>\n"
        "long sum(long *a, long n) { long s = 0; for (long i = 0; i < n; i++) s += a[i] * 3; return s; }\n"
        "int main(int argc, char **argv) { long a[64]; for (int i = 0; i < 64; i++) a[i] = i ^ argc;\n"
        "  printf(\"%ld\\n\", sum(a, 64)); return 0; }\n"
    )
    out = src.with_suffix("")
    subprocess.run([cc, "-O1", "-fno-inline", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A fresh work directory for one test, hence a fresh MLflow store and registry."""
    from surrogate_ops.registry import tracking

    monkeypatch.setenv("SURROGATE_OPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    return tmp_path


@pytest.fixture(autouse=True)
def _isolated_mlflow_environment():
    """mlflow.set_tracking_uri and set_experiment write MLFLOW_* variables into os.environ; keep one
    test's store from leaking into the next test's subprocesses."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ.update(saved)
