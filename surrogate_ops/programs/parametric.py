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
as LLVM's tables keep them. `LlvmMca(setting=McaSetting(knobs, table))` runs it.

A table is held to `check_table` where it is read: whole numbers from 0 to `tables.MAX_VALUE`, at
most `tables.MAX_ENTRY_CYCLES` over an entry's resources (LLVM keeps them in 16-bit fields; the
bounds and why are in `tables`), identifiers for names, and, given the llvm-mca and the mcpu, only
opcodes LLVM's X86 target has and resources the mcpu's scheduling model has (`known_names`, asked
of the driver once per driver build and mcpu). The driver holds its text protocol to the same
rules and refuses any line it was not meant to read, so a name can never smuggle in a line.

The driver is compiled once per source and LLVM version, with g++ against the LLVM development
package of the llvm-mca in use (`apt-get install llvm-14-dev` for llvm-mca 14), into
`~/.cache/surrogate-ops/bin`; `surrogate-ops build-native` does it ahead of time (CI's set-up runs it).
`compile_native` is that build, for any program of `native/` (`x86_forms` has one too).
"""

from __future__ import annotations

import difflib
import functools
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_tool, tool_version
from surrogate_ops.native import cached, compile_once
from surrogate_ops.programs import tables

SOURCE = Path(__file__).with_name("native") / "parametric_mca.cpp"
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
    if llvm_mca not in _built or force:
        _built[llvm_mca] = compile_native(SOURCE, "parametric-mca", llvm_mca, force)
    return _built[llvm_mca]


def compile_native(source: Path, stem: str, llvm_mca: str, force: bool = False) -> Path:
    """`source`, a C++ program of `native/` linked against libLLVM, compiled with g++ against the
    LLVM of `llvm_mca` into the build cache as `<stem>-<digest>`: once per source and LLVM version."""
    tool, version = llvm_config(llvm_mca)
    binary = cached(source, stem, salt=version)
    if binary.is_file() and not force:
        return binary
    flags = subprocess.run([tool, "--cxxflags", "--ldflags", "--libs"], capture_output=True, text=True,
                           check=True).stdout.split()
    # after llvm-config's flags: C++17 (it asks for 14) and NDEBUG (libLLVM is a release build)
    return compile_once(source, binary, ("g++", "c++"), [*flags, "-std=c++17", "-O2", "-DNDEBUG", "-fno-rtti"], force)


def check_table(table: object, llvm_mca: str | None = None, mcpu: str | None = None) -> dict[str, dict]:
    """A per-instruction table as the driver takes it, or a one-line SurrogateOpsError naming the
    culprit (opcode, field, value, the range allowed): known fields only, whole numbers (not floats,
    not booleans) within `tables`' bounds, identifiers for names, at most `tables.MAX_ENTRIES`
    entries. With `llvm_mca` and `mcpu`, its names are held to theirs too (`check_names`)."""
    if not isinstance(table, Mapping):
        raise SurrogateOpsError(f"per_instruction maps opcode names to entries, not {_shown(table)}")
    if len(table) > tables.MAX_ENTRIES:
        raise SurrogateOpsError(f"per_instruction has {len(table):,} entries, more than the {tables.MAX_ENTRIES:,} allowed")
    checked: dict[str, dict] = {}
    for opcode, entry in table.items():
        where = f"per_instruction[{_shown(opcode)}]"
        _check_name(opcode, where, "an opcode")
        if not isinstance(entry, Mapping) or not all(isinstance(k, str) and k in FIELDS for k in entry):
            raise SurrogateOpsError(f"{where}: an entry has only {', '.join(FIELDS)}, got {_shown(entry)}")
        out: dict = {field: _whole(entry[field], f"{where}[{field!r}]", field) for field in ("latency", "uops")
                     if field in entry}
        if "ports" in entry:
            ports = entry["ports"]
            if not isinstance(ports, Mapping):
                raise SurrogateOpsError(f"{where}['ports'] maps resource names to cycles, not {_shown(ports)}")
            if len(ports) > tables.MAX_RESOURCES:
                raise SurrogateOpsError(f"{where}['ports'] names {len(ports):,} resources, more than {tables.MAX_RESOURCES}")
            for resource in ports:
                _check_name(resource, f"{where}['ports'][{_shown(resource)}]", "a resource")
            out["ports"] = {r: _whole(c, f"{where}['ports'][{r!r}]", "cycles") for r, c in ports.items()}
            total = sum(out["ports"].values())
            if total > tables.MAX_ENTRY_CYCLES:
                raise SurrogateOpsError(f"{where}['ports']: its cycles add up to {total:,}, more than the "
                                        f"{tables.MAX_ENTRY_CYCLES:,} an entry may have over all its resources")
        checked[opcode] = out
    if llvm_mca is not None and mcpu is not None:
        check_names(checked, llvm_mca, mcpu)
    return checked


def _shown(value: object) -> str:
    """A value as a message quotes it: repr (a newline stays on the line), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_name(name: object, where: str, what: str) -> None:
    if not isinstance(name, str) or not tables.NAME.fullmatch(name):
        raise SurrogateOpsError(f"{where}: {what} is named by an identifier (letters, digits, _; no spaces or "
                                f"newlines), not {_shown(name)}")


def _whole(value: object, where: str, field: str) -> int:
    """A value of an entry, refused unless a whole number within the bounds (`tables.MAX_VALUE`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= tables.MAX_VALUE:
        what = {"latency": "a latency is whole cycles", "uops": "micro-ops are a whole number"}.get(
            field, "cycles on a resource are whole cycles")
        raise SurrogateOpsError(f"{where} is {_shown(value)}: {what} from 0 to {tables.MAX_VALUE}")
    return int(value)


def check_names(table: Mapping[str, Mapping], llvm_mca: str, mcpu: str) -> None:
    """A SurrogateOpsError naming the first opcode that LLVM's X86 target lacks, or the first
    resource that `mcpu`'s scheduling model lacks, in a table `check_table` passed."""
    opcodes, resources = known_names(llvm_mca, mcpu)
    for opcode, entry in table.items():
        if opcode not in opcodes:
            near = difflib.get_close_matches(opcode, opcodes, n=1)
            raise SurrogateOpsError(f"per_instruction[{opcode!r}]: LLVM's X86 target has no opcode {opcode}"
                                    + (f" (did you mean {near[0]}?)" if near else ""))
        for resource in entry.get("ports", {}):
            if resource not in resources:
                raise SurrogateOpsError(f"per_instruction[{opcode!r}]['ports'][{resource!r}]: -mcpu={mcpu}'s "
                                        f"scheduling model has no resource {resource} (it has {', '.join(sorted(resources))})")


def known_names(llvm_mca: str, mcpu: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the opcodes LLVM's X86 target has, the processor resources of `mcpu`'s scheduling model),
    as the driver of `llvm_mca`'s LLVM reads them."""
    binary = str(build(llvm_mca))  # its name holds the LLVM version: one answer per LLVM and mcpu
    return _driver_names(binary, mcpu, "OPCODES"), _driver_names(binary, mcpu, "RESOURCES")


@functools.cache
def _driver_names(binary: str, mcpu: str, what: str) -> frozenset[str]:
    if what == "OPCODES" and mcpu != "haswell":
        return _driver_names(binary, "haswell", what)  # the target's, whatever the mcpu
    proc = run_tool([binary, f"-mcpu={mcpu}"], f"{what}\n", timeout=30)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != 1:
        raise SurrogateOpsError(f"parametric llvm-mca -mcpu={mcpu} did not list its {what.lower()} "
                                f"(exit status {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return frozenset(lines[0].split())


def job_text(knobs: Mapping[str, object], table: Mapping[str, dict], blocks: Sequence[str]) -> str:
    """The driver's input for one setting (llvm-mca options by name, a per-instruction table) and
    canonical blocks; inputs joined run one after another (a table of its own for each block)."""
    lines = ["TABLE"]
    lines += [f"KNOB {option} {int(value)}" for option, value in knobs.items()]
    for opcode, entry in table.items():
        for name in (opcode, *entry.get("ports", {})):  # `check_table` refused these already: a last guard
            if not tables.NAME.fullmatch(name):
                raise SurrogateOpsError(f"per_instruction: {_shown(name)} is not a name the driver reads")
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
