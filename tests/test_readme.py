"""The README's examples run as written: each fenced Python block, from a temporary working directory
against a store holding the bundled Haswell surrogate, must print what its trailing comments show;
the blocks file shown for `predict --input` must get the rows shown. So the README cannot drift."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import CLI, store_with

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    home = store_with(tmp_path_factory, llvm_mca_haswell="llvm-mca-haswell")
    return {**os.environ, "SURROGATE_OPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def shown_output(block: str) -> list[str]:
    """The comment lines that end a block: what it prints."""
    lines = block.rstrip("\n").split("\n")
    shown = []
    while lines and lines[-1].startswith("#"):
        shown.insert(0, lines.pop()[2:])
    return shown


def same(printed: list[str], shown: list[str]) -> bool:
    """Line by line and word by word; numbers within 0.1% (or 1.5e-4: a printed estimate's last digit)."""
    if len(printed) != len(shown):
        return False
    for got, want in zip(printed, shown, strict=True):
        words = [re.split(r"[\s\[\],()]+", line.strip()) for line in (got, want)]
        if len(words[0]) != len(words[1]):
            return False
        for a, b in zip(*words, strict=True):
            try:
                if not math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1.5e-4):
                    return False
            except ValueError:
                if a != b:
                    return False
    return True


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_prints_what_it_shows(index, env, tmp_path):
    block = python_blocks()[index]
    shown = shown_output(block)
    assert shown, f"README Python block {index} shows no output to check:\n{block}"
    out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.rstrip("\n").split("\n")
    assert same(printed, shown), f"README block {index} printed:\n{out.stdout}\nbut shows:\n" + "\n".join(shown)


def test_readme_blocks_file_gets_the_rows_shown(env, tmp_path):
    text = README.read_text()
    example = re.search(r"^    \$ cat blocks\.s\n(.*?)^    \$ surrogate-ops predict --input blocks\.s\n(.*?)\n\n",
                        text, flags=re.M | re.S)
    assert example, "the README's blocks-file example is missing"
    (tmp_path / "blocks.s").write_text("\n".join(line[4:] for line in example.group(1).split("\n")))
    out = subprocess.run([*CLI, "predict", "--input", "blocks.s"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    shown = [line[4:] for line in example.group(2).split("\n")]
    printed = out.stdout.rstrip("\n").split("\n")
    assert same(printed, shown), out.stdout
