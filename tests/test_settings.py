"""One settings object: every SURROGATE_OPS_* variable is read in surrogate_ops/config.py, by its
literal name, and each one changes what it says it does."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surrogate_ops import config, llvm_tools
from surrogate_ops.config import VARIABLES, Settings, settings
from surrogate_ops.errors import SurrogateOpsError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("surrogate_ops", "bento", "deploy")
NAME = re.compile(r"SURROGATE_OPS_[A-Z0-9_]*[A-Z0-9]")
TEXT = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".json", ".template", ".txt", ""}


def _files():
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in TEXT and "pretrained" not in path.parts and "__pycache__" not in path.parts:
                yield path


@pytest.fixture
def clean_environment(monkeypatch):
    """No SURROGATE_OPS_* variable set; whatever a test sets (`export` too) is undone after it."""
    for name in VARIABLES.values():
        monkeypatch.setenv(name, "")  # remembered, so that the test's own changes are undone
        monkeypatch.delenv(name)
    return monkeypatch


def test_every_variable_in_the_tree_is_a_setting_named_in_config():
    source = (ROOT / "surrogate_ops" / "config.py").read_text()
    found = {name: path for path in _files() for name in NAME.findall(path.read_text(errors="replace"))}
    assert len(found) >= 19, sorted(found)  # the search does find them
    for name, path in sorted(found.items()):
        assert name in [*VARIABLES.values(), config.TOOL_PARENT], f"{name} ({path.relative_to(ROOT)}) is no setting"
        assert f'"{name}"' in source, f"{name} is not spelt out in config.py"
    for field, name in VARIABLES.items():
        assert source.count(f'"{name}"') >= 2, f"{name}: read in from_environ and named in VARIABLES"
        assert re.search(rf"^\s+{name}\s+{field}\s", Settings.__doc__, re.M), f"{name} ({field}) is not documented"


def test_nothing_but_config_reads_or_writes_a_variable_by_name():
    """Outside config.py a name may appear in a message or a docstring, never as a value of its own (a
    key of os.environ, click's envvar=, a child's env) nor built from a prefix (f"SURROGATE_OPS_{x}")."""
    for path in _files():
        if path.suffix != ".py" or path == ROOT / "surrogate_ops" / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not NAME.fullmatch(node.value), f"{where} uses {node.value} by itself: ask config.settings()"
                assert not node.value.endswith("SURROGATE_OPS_"), f"{where} builds a variable's name"
            if isinstance(node, ast.JoinedStr):
                for part in node.values:
                    if isinstance(part, ast.Constant) and str(part.value).endswith("SURROGATE_OPS_"):
                        raise AssertionError(f"{where} builds a variable's name in an f-string")


def test_fields_names_and_reads_agree(clean_environment):
    assert list(VARIABLES) == [f.name for f in dataclasses.fields(Settings)]
    assert Settings.from_environ({}) == Settings() == settings()
    given = {"home": Path("/tmp/h"), "llvm_mca": "/x/llvm-mca", "llvm_mc": "/x/llvm-mc", "llvm_objdump": "/x/od",
             "mca_timeout": 3.5, "mca_retry": 7.0, "model": "models:/m@champion", "mca_setting": "/p.json",
             "threads": 3, "frontend": "python", "job": "a-training-job"}
    given.update({f: 11 + k for k, f in enumerate(VARIABLES) if f not in given})
    written = config.child_environ({}, **given)
    assert set(written) == set(VARIABLES.values())
    assert Settings.from_environ(written) == Settings(**given)  # each variable reaches its own field


def test_unset_or_empty_is_the_default_and_a_bad_number_names_its_variable(clean_environment):
    assert Settings.from_environ({name: "" for name in VARIABLES.values()}) == Settings()
    with pytest.raises(SurrogateOpsError, match="SURROGATE_OPS_MAX_BLOCKS='many' is not an integer"):
        Settings.from_environ({"SURROGATE_OPS_MAX_BLOCKS": "many"})


def test_read_once_and_again_when_the_environment_changes(clean_environment):
    first = settings()
    assert settings() is first
    clean_environment.setenv("SURROGATE_OPS_MCA_RETRY", "2")
    assert settings().mca_retry == 2.0
    assert settings(refresh=True) is not first and config.reload().mca_retry == 2.0


def test_home_moves_the_work_directory_and_the_store(clean_environment, tmp_path):
    clean_environment.setenv("SURROGATE_OPS_HOME", str(tmp_path / "home"))
    assert config.work_dir() == tmp_path / "home" and (tmp_path / "home").is_dir()
    assert config.default_store_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    env = config.child_environ(home=tmp_path / "other")  # a child process reads it the same way
    out = subprocess.run([sys.executable, "-m", "surrogate_ops.config"], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    assert out.strip() == str(tmp_path / "other")


def test_llvm_tools_are_found_where_their_variables_point(clean_environment, tmp_path):
    fake = tmp_path / "my-llvm-mca"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    clean_environment.setenv("SURROGATE_OPS_LLVM_MCA", str(fake))
    assert llvm_tools.find_tool("llvm-mca") == str(fake)
    clean_environment.setenv("SURROGATE_OPS_LLVM_OBJDUMP", "/nonexistent/llvm-objdump")
    with pytest.raises(SurrogateOpsError, match=r"\(SURROGATE_OPS_LLVM_OBJDUMP\)"):
        llvm_tools.find_tool("llvm-objdump")
    config.export(llvm_mc=str(fake))  # the CLI's --llvm-mca: for this process and its children
    assert os.environ["SURROGATE_OPS_LLVM_MC"] == str(fake) and llvm_tools.find_tool("llvm-mc") == str(fake)


def test_mca_timeout_bounds_a_tool_call(clean_environment):
    clean_environment.setenv("SURROGATE_OPS_MCA_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(llvm_tools.ToolTimeout, match="after 0.5 s"):
        llvm_tools.run_tool(["sleep", "30"])
    assert time.monotonic() - start < 10


def test_service_limits_come_from_the_environment_other_limits_do_not(clean_environment):
    from surrogate_ops.serving.policy import Limits

    clean_environment.setenv("SURROGATE_OPS_MAX_BLOCKS", "300")
    clean_environment.setenv("SURROGATE_OPS_MCA_GATHER", "0")
    clean_environment.setenv("SURROGATE_OPS_MCA_TIMEOUT", "3")
    served = Limits.from_environment()
    assert (served.max_blocks, served.mca_gather, served.mca_timeout) == (300, 0, 3.0)
    assert served.max_instructions == Limits().max_instructions  # unset: Limits's own default
    assert Limits().max_blocks == 4096  # `predict`'s and `coverage`'s limits are their own
    assert Limits().mca_timeout == 3.0  # but every llvm-mca call keeps the timeout


def test_serve_writes_the_service_its_settings(clean_environment):
    env = config.child_environ({"PATH": "/bin"}, model="models:/m@champion", mca_setting=Path("/tmp/p.json"))
    assert env == {"PATH": "/bin", "SURROGATE_OPS_MODEL": "models:/m@champion", "SURROGATE_OPS_MCA_PARAMS": "/tmp/p.json"}
    assert Settings.from_environ(env).model == "models:/m@champion"
    assert "SURROGATE_OPS_MODEL" not in config.child_environ(env, model=None)


def test_named_choices_keep_the_words_in_files_and_answers():
    """The enums' values are what CSV columns, model records and HTTP answers hold."""
    import json

    from surrogate_ops.config import ENGINE_CHOICES, EngineName, Source

    assert [s.value for s in Source] == ["surrogate", "llvm-mca", "error"]
    assert ENGINE_CHOICES == ("auto", "onnxruntime", "tvm", "tvm-cuda", "torch", "torch-cuda")
    assert all(type(choice) is str for choice in ENGINE_CHOICES)  # click would match an Enum by its NAME
    assert json.dumps({"source": Source.LLVM_MCA}) == '{"source": "llvm-mca"}' and f"{EngineName.TVM_CUDA}" == "tvm-cuda"
    engines = pytest.importorskip("surrogate_ops.runtime.engines")
    assert set(engines.ENGINES) == set(EngineName)
