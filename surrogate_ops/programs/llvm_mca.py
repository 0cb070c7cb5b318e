"""llvm-mca, LLVM's basic-block throughput simulator, behind the `Program` interface.

Blocks are run many per process, each as a named code region (`# LLVM-MCA-BEGIN b<i>`), in
chunks spread over a pool of workers sized to the cores. Process start-up costs about as much as
simulating 30 blocks, so there is never one process per block on this path.

One bad block never sinks the others, nor changes their answers: the gate (`blocks.asm`) lets
instructions alone reach llvm-mca, and every run is checked for the marks a block that escaped it
would leave on its neighbours: each block must come back as its own region with at least as many
instructions as it has lines, or with llvm-mca's error on one of its own lines. A block llvm-mca's
assembler rejects is dropped from the output and named, by line, on stderr; a chunk that llvm-mca
aborts, or whose answers miss those marks, is bisected until each culprit stands alone, so a
block's answer never depends on what ran beside it.

Time is bounded: every call, the start-up probes included, runs under the instance's timeout with
its process group killed past it. When a chunk times out or aborts, llvm-mca itself is checked
first (`--version`, then one instruction under the same setting): an llvm-mca that fails these is
marked unavailable for `retry` seconds, with the reason, and every chunk in that time fails at once
(no bisection into hundreds of doomed calls). One that passes was slowed by the chunk: a timed-out
chunk is run again once as two halves, a lone block that times out fails with the timeout.

An instruction the CPU's scheduling model lacks (AVX-512 on most models) aborts the whole run, naming
the instruction. Its opcode's shape (`signature`: mnemonic, register classes, operand kinds) is
remembered per llvm-mca and CPU; a failed chunk, and every later chunk, is split into the blocks with
an instruction of a refused shape and the rest, so that the rest runs in one call and each suspect alone (its answer, a refusal included, is then
llvm-mca's words for it, whatever ran beside it); only when no block holds the instruction as
llvm-mca prints it is the chunk bisected. Blocks of real SIMD code label in a few calls instead of a bisection per chunk.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from surrogate_ops import presets
from surrogate_ops.blocks.asm import BlockError, normalize_block
from surrogate_ops.config import settings
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import ToolTimeout, find_tool, remembered, run_tool, tool_options, tool_version
from surrogate_ops.programs import parametric
from surrogate_ops.programs.base import Parameter, Program, Progress, Result, check_setting
from surrogate_ops.programs.cluster import Cluster
from surrogate_ops.programs.setting import McaSetting

TRIPLE = "x86_64-unknown-linux-gnu"
_DIAGNOSTIC = re.compile(r"^<stdin>:(\d+):\d+: error: (.*)$", re.MULTILINE)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@remembered
def _dispatch_width(path: str, mcpu: str, timeout: float) -> int:
    """The scheduling model's dispatch width for `mcpu`, as llvm-mca's own summary states it."""
    proc = run_tool([path, f"-mtriple={TRIPLE}", f"-mcpu={mcpu}", "-iterations=1", "--instruction-info=false",
                     "--resource-pressure=false"], "nop\n", timeout=timeout)
    match = re.search(r"^Dispatch Width:\s+(\d+)", proc.stdout, flags=re.MULTILINE)
    if not match:
        raise SurrogateOpsError(f"llvm-mca -mcpu={mcpu} printed no dispatch width: {proc.stderr.strip()[:200]}")
    return int(match.group(1))


@remembered
def _known_cpus(path: str, timeout: float) -> frozenset[str]:
    """The CPUs llvm-mca models; a SurrogateOpsError when it lists none (crashed, or not llvm-mca)."""
    proc = run_tool([path, f"-mtriple={TRIPLE}", "-mcpu=help"], timeout=timeout)
    text = proc.stdout + proc.stderr
    section = text.split("Available CPUs for this target:", 1)[-1].split("Available features", 1)[0]
    cpus = frozenset(re.findall(r"^\s+([\w.-]+)\s+- Select", section, flags=re.MULTILINE))
    if not cpus:
        raise SurrogateOpsError(f"{path} -mcpu=help listed no CPUs (exit status {proc.returncode})")
    return cpus


_hanging: dict[str, tuple[float, str]] = {}  # llvm-mca path -> (monotonic time to try again, why)
_UNSUPPORTED = re.compile(r"error: found an unsupported instruction.*\n\s*note: instruction:\s*(.+)")
_refused: dict[tuple[str, str], set[str]] = {}  # (llvm-mca path, mcpu) -> signatures of refused instructions
_SHAPES = [(re.compile(p), r) for p, r in (
    (r"\{%k[0-7]\}", "{k}"), (r"%([xyz]mm)(?:1[6-9]|[23]\d)\b", r"%\1hi"), (r"%([xyz]mm)\d+", r"%\1"),
    (r"%k[0-7]", "%k"), (r"%mm[0-7]", "%mm"), (r"%st\(\d\)", "%st"), (r"%r(?:[89]|1[0-5])([bwd]?)\b", r"%rN\1"),
    (r"\$-?(?:0x)?[0-9a-f]+", "$I"), (r"-?(?:0x)?[0-9a-f]+\(", "("))]


def signature(instruction: str) -> str:
    """An instruction's shape: its opcode's, as far as its text tells (mnemonic, register classes,
    operand kinds), with register numbers, immediates and displacements left out."""
    text = " ".join(instruction.split())
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text
PROBE_BLOCK = "addq %rax, %rbx"  # what any working llvm-mca simulates in milliseconds


def hanging(path: str) -> str | None:
    """Why llvm-mca at `path` is taken to be unavailable now (it hangs or crashes), or None."""
    until, why = _hanging.get(path, (0.0, ""))
    return why if time.monotonic() < until else None


def _declared_parameters() -> dict[str, Parameter]:
    table = {k: v for k, v in presets.load("llvm_mca_parameters").items() if not k.startswith("_")}
    return {name: Parameter(name=name, **spec) for name, spec in table.items()}


class LlvmMca(Program):
    """llvm-mca for one `mcpu`: `run(blocks)` gives Total Cycles over `iterations`, uops, RThroughput.

    `setting` (`McaSetting`) sets llvm-mca's knobs by parameter name (`dispatch_width`) or llvm-mca
    option name (`dispatch`), knobs left out keeping the scheduling model's own values for the mcpu,
    and a per-instruction table, which runs through the parametric driver (`parametric`).
    """

    name = "llvm-mca"
    parameters = _declared_parameters()

    def __init__(self, mcpu: str = "haswell", iterations: int = 100, setting: McaSetting | None = None,
                 path: str | None = None, workers: int | None = None, chunk_size: int = 500,
                 timeout: float | None = None, retry: float | None = None, nice: int = 0,
                 cluster: Cluster | None = None):
        """`timeout`: seconds per llvm-mca call (default: 30 plus 0.2 per block of a chunk; probes
        `Settings.mca_timeout`); `retry`: seconds a failed probe or a hang is remembered (default
        `Settings.mca_retry`); `nice`: the
        simulations' CPU priority below the caller's; `cluster`: run the chunks on a Ray cluster's
        CPUs (`programs.cluster`) instead of `workers` local processes."""
        self.path = find_tool("llvm-mca", path)
        self.timeout, self.retry, self.nice = timeout, retry, nice
        if mcpu not in _known_cpus(self.path, **self._probe):
            raise SurrogateOpsError(f"llvm-mca {self.version} does not know -mcpu={mcpu} (try haswell, skylake, ivybridge)")
        if iterations < 1:
            raise SurrogateOpsError("iterations must be at least 1")
        self.mcpu, self.iterations = mcpu, iterations
        setting = setting or McaSetting()
        # a table's names are held to LLVM's and this mcpu's where there are any
        self.table = parametric.check_table(setting.table, self.path, mcpu) if setting.table else {}
        self.knobs = self._check_knobs(setting.knobs)
        self.cluster = cluster
        self.workers = workers or (cluster.cpus if cluster else default_workers())
        self.chunk_size = chunk_size

    def __getstate__(self) -> dict:
        return {**self.__dict__, "cluster": None}  # what a cluster's task receives: the chunk runs where it lands

    @property
    def _probe(self) -> dict:
        return {"timeout": self.timeout, "retry": self.retry}

    @property
    def version(self) -> str:
        return tool_version(self.path, **self._probe)

    def expert_defaults(self) -> dict[str, int | bool]:
        """llvm-mca's own values for this mcpu, for the parameters this llvm-mca has: the scheduling
        model's dispatch width; 0 (unbounded, or no micro-op queue) for the sizes, which x86 models
        leave to these defaults; noalias true. Passing them changes nothing (a test holds this)."""
        width = _dispatch_width(self.path, self.mcpu, **self._probe)
        values: dict[str, int | bool] = {"dispatch_width": width, "noalias": True}
        return {name: values.get(name, 0) for name, p in self.parameters.items()
                if p.option in tool_options(self.path, **self._probe)}

    @property
    def setting(self) -> McaSetting:
        """The setting this instance runs under, as checked (knobs by their parameter names)."""
        return McaSetting(self.knobs, self.table, self.mcpu if self.table else None)

    def with_setting(self, setting: McaSetting | None, workers: int | None = None) -> LlvmMca:
        """The same llvm-mca (path, mcpu, iterations, chunking, timeout) under another setting."""
        return LlvmMca(self.mcpu, self.iterations, setting=setting, path=self.path, workers=workers or self.workers,
                       chunk_size=self.chunk_size, timeout=self.timeout, retry=self.retry, nice=self.nice,
                       cluster=self.cluster)

    def _check_knobs(self, knobs: Mapping[str, object]) -> dict[str, int | bool]:
        try:
            checked = check_setting(self.parameters, knobs, self.name)
        except ValueError as exc:
            raise SurrogateOpsError(str(exc)) from None
        for spec in (self.parameters[name] for name in checked):
            if spec.option not in tool_options(self.path, **self._probe):
                raise SurrogateOpsError(
                    f"parameter {spec.name} needs llvm-mca --{spec.option} (LLVM {spec.since} or newer); "
                    f"{self.path} is LLVM {self.version}: install a newer llvm (e.g. apt-get install llvm-19) "
                    "and point SURROGATE_OPS_LLVM_MCA at it"
                )
        return checked

    def command(self) -> list[str]:
        """The llvm-mca command line (input on stdin) this instance runs."""
        args = [self.path, f"-mtriple={TRIPLE}", f"-mcpu={self.mcpu}", f"-iterations={self.iterations}", "--json",
                "--instruction-info=false", "--resource-pressure=false"]
        for name, value in self.knobs.items():
            option = self.parameters[name].option
            args.append(f"--{option}={'true' if value else 'false'}" if isinstance(value, bool) else f"--{option}={value}")
        return args

    def run(self, blocks: Sequence[str], progress: Progress | None = None,
            tables: Sequence[Mapping[str, dict]] | None = None) -> list[Result]:
        """One Result per block, in order. Blocks are checked first; rejected ones never reach llvm-mca.
        `tables`: a per-instruction table for each block, in place of the instance's (labeling
        under sampled tables; many tables a driver process)."""
        if tables is not None and len(tables) != len(blocks):
            raise SurrogateOpsError(f"{len(tables)} tables for {len(blocks)} blocks")
        own = [parametric.check_table(t) for t in tables] if tables is not None else None
        results: list[Result | None] = [None] * len(blocks)
        valid: list[tuple[int, str]] = []
        for i, text in enumerate(blocks):
            try:
                valid.append((i, normalize_block(text, index=i)))
            except BlockError as exc:
                results[i] = Result(error=str(exc))
        if progress and len(valid) < len(blocks):
            progress(len(blocks) - len(valid))
        chunks = [valid[s:s + self.chunk_size] for s in range(0, len(valid), self.chunk_size)]

        jobs = [(self, [text for _, text in chunk], None if own is None else [own[i] for i, _ in chunk])
                for chunk in chunks]

        def store(k: int, answers: list[Result]) -> None:
            for (i, _), result in zip(chunks[k], answers, strict=True):
                results[i] = result
            if progress:
                progress(len(chunks[k]))

        def work(k: int) -> None:
            store(k, _chunk(*jobs[k]))

        if self.cluster is not None and chunks:
            for k, answers in self.cluster.map(_chunk, jobs):
                store(k, answers)
        elif len(chunks) <= 1 or self.workers == 1:
            for k in range(len(chunks)):
                work(k)
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                list(pool.map(work, range(len(chunks))))
        return results  # type: ignore[return-value]

    def _run_chunk(self, blocks: list[str], retried: bool = False, checked: bool = False) -> list[Result]:
        """Run canonical blocks in one llvm-mca process; bisect when llvm-mca fails as a whole or a
        block's answer shows its neighbours' mark, run again in halves once when it times out (see
        the module's note). `checked`: llvm-mca itself was found working since this chunk's failure."""
        why = hanging(self.path)
        if why:
            return [Result(error=f"llvm-mca unavailable: {why}")] * len(blocks)
        if self.table:
            return self._run_parametric(blocks)
        refused = _refused.get((self.path, self.mcpu), set())
        suspects = [i for i, block in enumerate(blocks) if refused and
                    any(signature(line) in refused for line in block.split("\n"))]
        if 0 < len(suspects) < len(blocks):  # a refused shape's blocks run apart from the rest
            return self._apart(blocks, suspects, retried, checked)
        lines: list[str] = []
        starts: list[int] = []  # 1-based input line of each block's first instruction
        for i, block in enumerate(blocks):
            lines.append(f"# LLVM-MCA-BEGIN b{i}")
            starts.append(len(lines) + 1)
            lines.extend(block.split("\n"))
            lines.append(f"# LLVM-MCA-END b{i}")
        timeout = self.timeout if self.timeout is not None else 30 + 0.2 * len(blocks)
        try:
            proc = run_tool(self.command(), "\n".join(lines) + "\n", timeout=timeout, nice=self.nice)
        except ToolTimeout:
            return self._timed_out(blocks, timeout, retried, checked)
        if proc.returncode != 0:
            broken = None if checked else self._broken(timeout)
            if broken:
                return [Result(error=broken)] * len(blocks)
            if len(blocks) == 1:
                return [Result(error=self._failure_message(proc.stderr, starts[0], proc.returncode))]
            refusal = _UNSUPPORTED.search(proc.stderr)
            if refusal:
                return self._refused(blocks, " ".join(refusal.group(1).split()))
            return self._bisect(blocks)
        sizes = [block.count("\n") + 1 for block in blocks]
        results, isolated = self._parse(proc.stdout, proc.stderr, starts, sizes)
        if not isolated and len(blocks) > 1:  # a block changed how llvm-mca read its neighbours
            return self._bisect(blocks)
        return results

    def _broken(self, timeout: float) -> str | None:
        """Why llvm-mca fails whatever it is given, checked after a chunk failed: the reason every
        block gets (and, for llvm-mca itself, remembered for `retry` seconds), or None when it
        simulates one instruction (then the chunk's own blocks are to blame)."""
        probe = min(timeout, 1.0)  # a working llvm-mca simulates one instruction in about 10 ms

        def fails(command: list[str]) -> str | None:
            try:
                proc = run_tool(command, PROBE_BLOCK + "\n", timeout=probe, nice=self.nice)
            except ToolTimeout:
                return f"hangs on a one-instruction block (no answer in {probe:g} s)"
            except OSError as exc:
                return f"cannot be run ({exc})"
            return None if proc.returncode == 0 else f"crashes on a one-instruction block (exit status {proc.returncode})"

        why = fails(self.command())
        if why is None:
            return None
        if self.knobs and fails(self.with_setting(None).command()) is None:  # only this setting fails
            return f"llvm-mca {why} under this setting ({json.dumps(self.knobs, sort_keys=True)})"
        retry = settings().mca_retry if self.retry is None else self.retry
        why = f"llvm-mca {why}; tried again after {retry:g} s"
        _hanging[self.path] = (time.monotonic() + retry, why)
        return f"llvm-mca unavailable: {why}"

    def _run_parametric(self, blocks: list[str], tables: list[dict] | None = None) -> list[Result]:
        """Canonical blocks through the parametric driver, under this instance's per-instruction table
        (or each block's of `tables`) and knobs; the driver answers every block, a bad one with its
        own error."""
        knobs = {self.parameters[name].option: value for name, value in self.knobs.items()}
        text = (parametric.job_text(knobs, self.table, blocks) if tables is None else
                "".join(parametric.job_text(knobs, t, [b]) for t, b in zip(tables, blocks, strict=True)))
        timeout = self.timeout if self.timeout is not None else 30 + 0.2 * len(blocks)
        try:
            answers = parametric.run(parametric.build(self.path), self.mcpu, self.iterations, text, len(blocks),
                                     timeout, self.nice)
        except ToolTimeout:
            return [Result(error=f"parametric llvm-mca timed out after {timeout:g} s")] * len(blocks)
        return [Result(cycles=cycles, error=error) for cycles, error in answers]

    def _timed_out(self, blocks: list[str], timeout: float, retried: bool, checked: bool) -> list[Result]:
        try:
            run_tool([self.path, "--version"], timeout=0.5)
        except (ToolTimeout, OSError):
            retry = settings().mca_retry if self.retry is None else self.retry
            why = f"llvm-mca hangs (a call ran past {timeout:g} s and --version did not answer); tried again after {retry:g} s"
            _hanging[self.path] = (time.monotonic() + retry, why)
            return [Result(error=f"llvm-mca timed out after {timeout:g} s: it hangs")] * len(blocks)
        broken = None if checked else self._broken(timeout)
        if broken:
            return [Result(error=broken)] * len(blocks)
        if retried or len(blocks) == 1:
            return [Result(error=f"llvm-mca timed out after {timeout:g} s")] * len(blocks)
        mid = len(blocks) // 2  # once, in halves: the blocks beside a slow one still get answers
        return (self._run_chunk(blocks[:mid], retried=True, checked=True)
                + self._run_chunk(blocks[mid:], retried=True, checked=True))

    def _refused(self, blocks: list[str], instruction: str) -> list[Result]:
        """A chunk llvm-mca aborted on `instruction`, which its model lacks: the blocks holding it run
        alone (each gets llvm-mca's own words for itself), the rest again, its shape's other blocks apart."""
        _refused.setdefault((self.path, self.mcpu), set()).add(signature(instruction))
        held = {i for i, block in enumerate(blocks) if instruction in (" ".join(line.split()) for line in block.split("\n"))}
        if not held:  # printed otherwise than the block has it: its shape's blocks run apart, bisected there
            return self._bisect(blocks)
        rest = iter(self._run_chunk([b for i, b in enumerate(blocks) if i not in held], checked=True)
                    if len(held) < len(blocks) else [])
        return [self._run_chunk([b], checked=True)[0] if i in held else next(rest) for i, b in enumerate(blocks)]

    def _apart(self, blocks: list[str], suspects: list[int], retried: bool, checked: bool) -> list[Result]:
        """The blocks at `suspects` each alone (llvm-mca most likely refuses them), the others in one
        call; answers in order."""
        inside = set(suspects)  # the others first: when llvm-mca itself fails, their call finds out
        rest = iter(self._run_chunk([b for i, b in enumerate(blocks) if i not in inside], retried, checked))
        return [self._run_chunk([b], retried, True)[0] if i in inside else next(rest) for i, b in enumerate(blocks)]

    def _bisect(self, blocks: list[str]) -> list[Result]:
        mid = len(blocks) // 2
        return self._run_chunk(blocks[:mid], checked=True) + self._run_chunk(blocks[mid:], checked=True)

    @staticmethod
    def _failure_message(stderr: str, start: int, returncode: int) -> str:
        """llvm-mca's own words for a lone block it failed on, with the line inside the block."""
        match = _DIAGNOSTIC.search(stderr)
        if match:
            return f"llvm-mca: {match.group(2)} (line {int(match.group(1)) - start + 1})"
        lines = [line.strip() for line in stderr.splitlines() if line.startswith(("error:", "note:"))]
        return "llvm-mca: " + (" ".join(" ".join(lines).split())[:300] if lines else f"exit status {returncode}")

    @staticmethod
    def _parse(stdout: str, stderr: str, starts: list[int], sizes: list[int]) -> tuple[list[Result], bool]:
        """Each block's Result from llvm-mca's JSON and diagnostics, and whether the run shows every
        block read on its own: a region of its own with at least one instruction a line (a prefix
        may add one), or an error on one of its own lines, and no error outside every block."""
        count = len(sizes)
        results: list[Result | None] = [None] * count
        try:
            regions = json.loads(stdout).get("CodeRegions", []) if stdout.strip() else []
        except json.JSONDecodeError:
            regions = []
        isolated = True
        for region in regions:
            summary, index = region["SummaryView"], int(region["Name"][1:])
            isolated &= 0 <= index < count and len(region.get("Instructions", ())) >= sizes[index]
            results[index] = Result(
                cycles=float(summary["TotalCycles"]), uops=int(summary["TotaluOps"]),
                rthroughput=float(summary["BlockRThroughput"]),
            )
        messages: dict[int, str] = {}
        for match in _DIAGNOSTIC.finditer(stderr):
            line = int(match.group(1))
            block = bisect.bisect_right(starts, line) - 1
            if block < 0 or line >= starts[block] + sizes[block]:  # on a marker or past the end: not a block's own
                isolated = False
                continue
            messages.setdefault(block, f"llvm-mca: {match.group(2)} (line {line - starts[block] + 1})")
        isolated &= all(r is not None or i in messages for i, r in enumerate(results))
        return [r if r is not None else Result(error=messages.get(i, "llvm-mca gave no result for this block"))
                for i, r in enumerate(results)], isolated


def _chunk(program: LlvmMca, blocks: list[str], tables: list[dict] | None) -> list[Result]:
    """One chunk of canonical blocks, each under the program's setting or its own table: the unit of
    work a local thread or a cluster's task runs."""
    return program._run_chunk(blocks) if tables is None else program._run_parametric(blocks, tables)


def read_setting(spec: str | Path, mcpus: Sequence[str | None] = (), llvm_mca: str | None = None) -> McaSetting:
    """A setting file or `learned:CPU`, checked strictly now, before any work starts: knobs by name and
    range, a table's values and names against the llvm-mca of each of `mcpus` (by default the table's
    own CPU, else haswell). A table is refused for a CPU other than its own. Any problem is a one-line
    SurrogateOpsError naming the file."""
    spec = str(spec)
    setting = McaSetting.load(spec)
    other = [m for m in mcpus if m and setting.mcpu and m != setting.mcpu]
    if other:
        raise SurrogateOpsError(f"--params {spec} is a table for -mcpu={setting.mcpu}, not for {', '.join(other)}")
    checked = setting
    for mcpu in [m for m in mcpus if m] or [setting.mcpu or "haswell"]:
        try:
            program = LlvmMca(mcpu, setting=setting, path=llvm_mca)
            if program.table:
                parametric.check_names(program.table, program.path, mcpu)
        except SurrogateOpsError as exc:
            raise SurrogateOpsError(f"--params {spec}: {exc}") from None
        checked = program.setting
    return McaSetting(checked.knobs, checked.table, setting.mcpu)
