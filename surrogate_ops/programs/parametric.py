"""llvm-mca under per-instruction scheduling parameters: `native/parametric_mca.cpp`, built here.

Stock llvm-mca takes global knobs only (dispatch width, queue sizes). The expert's choices that
decide most blocks live per instruction in LLVM's scheduling model: each opcode's latency, micro-op
count and cycles on each execution port (DiffTune's space). The driver runs llvm-mca's own pipeline
in process through libLLVM, with a per-opcode table of our own on top of the stock model; with an
empty table its cycles are stock llvm-mca's (a test holds this on BHive).

A per-instruction table maps opcode names (LLVM's, e.g. `IMUL64rr`, `ADD64rr`; `opcodes()` lists
them) to entries with any of:

    {"IMUL64rr": {"latency": 4, "uops": 1, "ports": {"HWPort1": 1}}}

`latency`: cycles until the first result is ready; `uops`: micro-ops; `ports`: cycles on processor
resources (units such as `HWPort1` or groups such as `HWPort0156`), replacing the stock cycles of
those named and keeping the rest (0 removes one). A group is raised to cover the resources inside it,
as LLVM's tables keep them. `LlvmMca(params={"per_instruction": table, ...})` runs it.

The driver is compiled once per source and LLVM version, with g++ against the LLVM development
package of the llvm-mca in use (`apt-get install llvm-14-dev` for llvm-mca 14), into
`~/.cache/surrogate-ops/bin`; `surrogate-ops build-native` does it ahead of time (CI's set-up runs it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_tool, tool_version
from surrogate_ops.programs import tables

SOURCE = Path(__file__).with_name("native") / "parametric_mca.cpp"
# a build depends on the source and the LLVM only, not on a work directory: one per user
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "surrogate-ops" / "bin"
FIELDS = ("latency", "uops", "ports")


def llvm_config(llvm_mca: str) -> tuple[str, str]:
    """The llvm-config of the LLVM that `llvm_mca` belongs to (its major version must match), and
    that LLVM's full version."""
    major = tool_version(llvm_mca).split(".")[0]
    for candidate in (Path(llvm_mca).resolve().parent / "llvm-config", Path(f"/usr/lib/llvm-{major}/bin/llvm-config"),
                      shutil.which(f"llvm-config-{major}"), shutil.which("llvm-config")):
        if candidate and Path(candidate).is_file():
            found = subprocess.run([str(candidate), "--version"], capture_output=True, text=True)
            if found.returncode == 0 and found.stdout.split(".")[0] == major:
                return str(candidate), found.stdout.strip()
    raise SurrogateOpsError(f"per-instruction parameters need LLVM {major}'s development files for the driver "
                            f"(llvm-config, headers, libLLVM): apt-get install llvm-{major}-dev")


_built: dict[str, Path] = {}  # llvm-mca path -> its driver, found or built once per process


def build(llvm_mca: str, force: bool = False) -> Path:
    """The driver's binary for the LLVM of `llvm_mca`, compiled on first use (about 10 s); looked
    up once per process, not per call (LlvmMca asks for every chunk)."""
    if llvm_mca in _built and not force:
        return _built[llvm_mca]
    tool, version = llvm_config(llvm_mca)
    digest = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:12]
    binary = CACHE / f"parametric-mca-{digest}"
    if binary.is_file() and not force:
        _built[llvm_mca] = binary
        return binary
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise SurrogateOpsError("per-instruction parameters need a C++ compiler for the driver: apt-get install g++")
    flags = subprocess.run([tool, "--cxxflags", "--ldflags", "--libs"], capture_output=True, text=True,
                           check=True).stdout.split()
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=binary.parent, delete=False) as out:
        partial = Path(out.name)
    # after llvm-config's flags: C++17 (it asks for 14) and NDEBUG (libLLVM is a release build)
    command = [compiler, str(SOURCE), *flags, "-std=c++17", "-O2", "-DNDEBUG", "-fno-rtti", "-o", str(partial)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SurrogateOpsError(f"building the parametric llvm-mca driver failed:\n{proc.stderr[-2000:]}")
    partial.chmod(0o755)
    os.replace(partial, binary)  # whole or not at all: another process may be building it too
    _built[llvm_mca] = binary
    return binary


def check_table(table: Mapping[str, object]) -> dict[str, dict]:
    """A per-instruction table as the driver takes it, or a SurrogateOpsError naming the bad entry."""
    if not isinstance(table, Mapping):
        raise SurrogateOpsError("per_instruction must map opcode names to entries")
    checked: dict[str, dict] = {}
    for opcode, entry in table.items():
        if not isinstance(entry, Mapping) or not set(entry) <= set(FIELDS):
            raise SurrogateOpsError(f"per_instruction[{opcode!r}]: an entry has {', '.join(FIELDS)}, got {entry!r}")
        ports = entry.get("ports", {})
        numbers = [entry.get("latency", 0), entry.get("uops", 0), *ports.values()]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 15 for n in numbers):
            raise SurrogateOpsError(f"per_instruction[{opcode!r}]: values are whole cycles or micro-ops, 0 or more")
        checked[str(opcode)] = {k: (dict(v) if k == "ports" else int(v)) for k, v in entry.items()}
    return checked


def job_text(knobs: Mapping[str, object], table: Mapping[str, dict], blocks: Sequence[str]) -> str:
    """The driver's input for one setting (llvm-mca options by name, a per-instruction table) and
    canonical blocks; inputs joined run one after another (a table of its own for each block)."""
    lines = ["TABLE"]
    lines += [f"KNOB {option} {int(value)}" for option, value in knobs.items()]
    for opcode, entry in table.items():
        for field in ("latency", "uops"):
            if field in entry:
                lines.append(f"OP {opcode} {field} {entry[field]}")
        lines += [f"OP {opcode} res {resource} {cycles}" for resource, cycles in entry.get("ports", {}).items()]
    return "\n".join(lines) + "\n" + _blocks_text(blocks)


def _blocks_text(blocks: Sequence[str]) -> str:
    """Canonical blocks as the driver reads them: `BLOCK <lines>`, then the lines."""
    return "".join(f"BLOCK {block.count(chr(10)) + 1}\n{block}\n" for block in blocks)


def run(binary: Path, mcpu: str, iterations: int, text: str, count: int, timeout: float,
        nice: int = 0) -> list[tuple[float | None, str | None]]:
    """(cycles, error) per block of one driver input of `count` blocks; ToolTimeout past `timeout`
    (its process group killed, as every llvm-mca call is)."""
    proc = run_tool([str(binary), f"-mcpu={mcpu}", f"-iterations={iterations}"], text, timeout=timeout, nice=nice)
    answers = proc.stdout.splitlines()
    if proc.returncode != 0 or len(answers) != count:
        why = (answers[-1] if answers and answers[-1].startswith("error") else proc.stderr.strip()[-300:])
        raise SurrogateOpsError(f"parametric llvm-mca failed (exit status {proc.returncode}): {why}")
    return [(None, f"llvm-mca: {a[6:]}") if a.startswith("error") else (float(a), None) for a in answers]


def _ask(llvm_mca: str, mode: str, blocks: Sequence[str], mcpu: str) -> list[str]:
    """The driver's answer line per block in a mode other than simulating (errors left out)."""
    return [line for line in _answers(llvm_mca, mode, blocks, mcpu) if line is not None]


def _answers(llvm_mca: str, mode: str, blocks: Sequence[str], mcpu: str) -> list[str | None]:
    """The driver's answer line per block in a mode other than simulating, None where it refused one."""
    proc = run_tool([str(build(llvm_mca)), f"-mcpu={mcpu}"], f"{mode}\n" + _blocks_text(blocks),
                    timeout=30 + 0.01 * len(blocks))
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(blocks):
        raise SurrogateOpsError(f"parametric llvm-mca failed (exit status {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return [None if line.startswith("error") else line for line in lines]


def annotate(llvm_mca: str, blocks: Sequence[str], mcpu: str = "haswell") -> list[tables.Annotated | None]:
    """Each canonical block's instructions with their stock entries as the driver resolves them
    (`tables.Instruction`), None for a block the driver cannot read."""
    return [tables.parse_entries(line) if line is not None else None
            for line in _answers(llvm_mca, "DEFAULTS", blocks, mcpu)]


def opcodes(llvm_mca: str, blocks: Sequence[str], mcpu: str = "haswell") -> list[str]:
    """LLVM's opcode names of the instructions in canonical blocks (for building tables)."""
    return sorted({name for line in _ask(llvm_mca, "NAMES", blocks, mcpu) for name in line.split()})


def defaults(llvm_mca: str, blocks: Sequence[str], mcpu: str = "haswell") -> dict[str, dict]:
    """The stock entry of every opcode in canonical blocks, in the table's format: its micro-ops,
    first latency and cycles on every processor resource that carries cycles of its own (a group
    the model lists only to cover the resources inside it is left out: it follows them). Opcodes
    whose class is a variant are left out: their entry depends on the operands (`xorl %eax, %eax`
    is a zero idiom, `xorl %ebx, %eax` is not), so one entry would change some of their uses;
    `variants` lists them."""
    return _stock(llvm_mca, blocks, mcpu)[0]


def variants(llvm_mca: str, blocks: Sequence[str], mcpu: str = "haswell") -> list[str]:
    """The opcodes in canonical blocks whose stock scheduling class depends on their operands."""
    return sorted(_stock(llvm_mca, blocks, mcpu)[1])


def _stock(llvm_mca: str, blocks: Sequence[str], mcpu: str) -> tuple[dict[str, dict], set[str]]:
    table: dict[str, dict] = {}
    varying: set[str] = set()
    for block in annotate(llvm_mca, blocks, mcpu):
        for instruction in block or ():
            if instruction.variant:
                varying.add(instruction.opcode)
            else:
                table.setdefault(instruction.opcode, tables.entry_of(instruction))
    return table, varying
