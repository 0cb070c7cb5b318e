"""Shared fixtures: the tiny real blocks in fixtures/ with their true llvm-mca output."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
BHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bhive"


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


def rows(stdout: str) -> list[dict]:
    """The rows of `predict`'s CSV output: index, cycles, source, reason."""
    import csv
    import io

    return list(csv.DictReader(io.StringIO(stdout)))


@contextmanager
def in_home(home: Path):
    """For module-scoped fixtures: work in `home`'s store; neither it nor the MLflow variables that
    configuring it sets outlive the fixture."""
    import os

    from surrogate_ops import tracking

    keys = ("SURROGATE_OPS_HOME",)
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_") or k in keys}
    os.environ["SURROGATE_OPS_HOME"] = str(home)
    try:
        tracking.configure()
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("MLFLOW_") or k in keys]:
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A fresh work directory for one test, hence a fresh MLflow store and registry."""
    from surrogate_ops import tracking

    monkeypatch.setenv("SURROGATE_OPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    return tmp_path


@pytest.fixture(autouse=True)
def _isolated_mlflow_environment():
    """mlflow.set_tracking_uri and set_experiment write MLFLOW_* variables into os.environ; keep one
    test's store from leaking into the next test's subprocesses."""
    import os

    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ.update(saved)


def interruptible() -> None:
    """preexec_fn for a child the test interrupts with SIGINT: a test run started in the background
    ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bhive_csv(path: Path, blocks: list[list[str]], throughputs: list[float]) -> Path:
    """A BHive-format CSV (hex,throughput) of `blocks` (AT&T instructions), hex from the real llvm-mc."""
    flat = [ins for block in blocks for ins in block]
    out = subprocess.run(["llvm-mc", "-triple=x86_64", "--show-encoding"], input="\n".join(flat) + "\n",
                         capture_output=True, text=True, check=True).stdout
    codes = [line.split("encoding: [")[1].rstrip("]") for line in out.splitlines() if "encoding: [" in line]
    assert len(codes) == len(flat)
    hexes = iter("".join(byte[2:] for byte in code.split(",")) for code in codes)
    rows = ["hex,throughput"] + [f"{''.join(next(hexes) for _ in block)},{value}"
                                 for block, value in zip(blocks, throughputs, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path
