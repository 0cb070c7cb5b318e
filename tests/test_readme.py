"""The README's examples run as written: each fenced Python block, from a temporary working directory
against a store holding the bundled Haswell surrogate, must print what its trailing comments show;
each shell block marked `<!-- tested -->` runs command by command and must print what it shows. The
links of the README and docs/ point at files (and headings) that exist, the architecture page names
every module, and the MLproject pages name every entry point. So the README cannot drift."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.stores import store_with

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    home = store_with(tmp_path_factory, llvm_mca_haswell="llvm-mca-haswell")
    # `surrogate-ops` in a shell line is this interpreter's package, whatever else is on the PATH: a
    # console script as pip writes one (so the program calls itself `surrogate-ops` in its usage line)
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "surrogate-ops").write_text(f"#!{sys.executable}\nfrom surrogate_ops.cli import main\n\nmain()\n")
    (bin_dir / "surrogate-ops").chmod(0o755)
    return {**os.environ, "SURROGATE_OPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


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
    """Line by line and word by word; numbers within 0.1% (or 1.5e-4: a printed estimate's last digit).
    A last shown line of `...` stands for whatever more is printed."""
    if shown and shown[-1] == "...":
        printed, shown = printed[:len(shown) - 1], shown[:-1]
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


def shell_blocks() -> list[list[tuple[str, list[str]]]]:
    """The README's tested shell blocks (a fenced console/bash/sh block right after `<!-- tested -->`),
    each as its steps: a `$ ` command and the lines shown after it, up to the next command."""
    blocks = re.findall(r"^<!-- tested -->\n```(?:console|bash|sh)\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    parsed = []
    for block in blocks:
        steps: list[tuple[str, list[str]]] = []
        for line in block.rstrip("\n").split("\n"):
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                assert steps, f"a tested block must start with a `$ ` command:\n{block}"
                steps[-1][1].append(line)
        parsed.append(steps)
    return parsed


def shown_files(blocks) -> dict[str, str]:
    """`$ cat FILE` and the lines after it: the file the example works on, written before it runs."""
    return {command.split()[1]: "\n".join(shown) + "\n" for steps in blocks for command, shown in steps
            if re.fullmatch(r"cat [\w.-]+", command)}


def test_readme_has_tested_shell_blocks_with_the_predict_example():
    commands = [command for steps in shell_blocks() for command, _ in steps]
    assert "surrogate-ops --help" in commands and "surrogate-ops predict --input blocks.s" in commands
    assert "blocks.s" in shown_files(shell_blocks())


@pytest.mark.parametrize("index", range(len(shell_blocks())))
def test_readme_shell_block_prints_what_it_shows(index, env, tmp_path):
    """Each command of the block, in order, in one fresh directory holding the files shown by `cat` in
    this block or an earlier one; each must exit 0 and print (on stdout) what the README shows, where it
    shows anything."""
    blocks = shell_blocks()
    for name, text in shown_files(blocks[:index + 1]).items():
        (tmp_path / name).write_text(text)
    for command, shown in blocks[index]:
        out = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, f"`{command}` exited {out.returncode}:\n{out.stderr[-3000:]}"
        if not shown:
            continue  # the README shows no output: exiting 0 is what it claims
        printed = out.stdout.rstrip("\n").split("\n")
        assert same(printed, shown), f"`{command}` printed:\n{out.stdout}\nbut the README shows:\n" + "\n".join(shown)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def outside_code(text: str) -> str:
    """The text without fenced blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def anchors(path: Path) -> set[str]:
    seen: Counter = Counter()
    found = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # a `# comment` in code is no heading
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this test's business
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_docs_exist_and_the_readme_links_every_one():
    assert DOCS, "docs/ holds no page"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in re.findall(r"\]\(([^)\s#]+)", README.read_text())}
    assert not [d.name for d in DOCS if d.resolve() not in linked], "docs pages the README does not link"


def test_architecture_page_names_every_module():
    """docs/architecture.md names every module of the package by its path (and every subpackage and data
    folder as `name/`): a module added, moved or renamed must be entered there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "surrogate_ops"
    missing = [f"`{p.relative_to(package)}`" for p in sorted(package.rglob("*.py"))
               if "__pycache__" not in p.parts and not (p.name == "__init__.py" and p.parent != package)
               and f"`{p.relative_to(package)}`" not in text]
    missing += [f"`{d.name}/`" for d in sorted(package.iterdir())
                if d.is_dir() and d.name != "__pycache__" and f"`{d.name}/`" not in text]
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)


def test_mlproject_pages_name_every_entry_point():
    import yaml

    points = set(yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"])
    registry = (ROOT / "docs" / "registry.md").read_text()
    table = registry.split("## MLflow Projects", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M)) == points
    for page in (README.read_text(), registry):
        assert f"`MLproject` has {len(points)} entry points" in page
