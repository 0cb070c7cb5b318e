"""The machine at hand as a program: basic blocks' measured throughput, BHive-style, in user space.

`native/measure.c` (built with gcc on first use) unrolls each block 100 and 200 times (more for short
blocks) between a prologue and an epilogue of its own, points every general register into pages mapped
on first touch, and keeps the fewest time-stamp-counter ticks over repeats; a block that faults is
skipped with the reason. Ticks are not core cycles (the TSC runs at a fixed rate, the core at whatever
clock it holds, and that moves), so every block is timed in turns with a reference chain of dependent
`add`s (1 cycle an iteration on every x86 core) and its cycles are the ratio. `Machine.calibrate` checks
the method on dependency chains of known latency (`presets/measure_chains.json`: imul, a
pointer-chasing load, divq, vector FP) against the documented latencies of this CPU's core family.
Hardware performance counters would count cycles directly; the virtual machines this runs on do not
expose them, so the TSC is the clock. Throughput is cycles per 100 iterations, BHive's unit.

A block measures in about a millisecond; the harness runs pinned to one CPU (the last, by default),
one block at a time, so a second core's work disturbs it as little as it can. A burst of someone else's
work can still outlast one block's repeats (a shared machine's neighbours, a host's other guests), so
every block is measured in `rounds` passes over its chunk, a fraction of a second apart, and the median
answer counts.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from surrogate_ops import config, presets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_tool
from surrogate_ops.native import cached, compile_once

SOURCE = Path(__file__).with_name("native") / "measure.c"
UNROLL = (100, 200)  # the two unrollings whose difference is one block's 100 iterations, as BHive's
CHUNK = 200  # blocks a harness process measures before the next starts (a crash loses at most these)


def build(force: bool = False) -> Path:
    """The harness's binary, compiled where missing."""
    return compile_once(SOURCE, cached(SOURCE, "measure"), ("gcc", "cc"), ["-O2", "-Wall"], force, package="gcc")


@dataclass(frozen=True)
class Measured:
    """One block on this machine: cycles per 100 iterations, or why it was skipped."""

    cycles: float | None = None
    error: str | None = None
    ticks_per_cycle: float | None = None  # the reference chain's, timed beside the block

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Chain:
    name: str
    asm: str
    cycles: float  # measured, per iteration
    documented: float | None  # this core family's latency, where known

    @property
    def off(self) -> float | None:
        """Relative distance from the documented latency."""
        return None if not self.documented else abs(self.cycles - self.documented) / self.documented


@dataclass(frozen=True)
class Cpu:
    """What this machine's CPU is, as far as `measure` needs: its name, CPUID family and model, the core
    family of `presets/measure_chains.json` it belongs to, and the bundled surrogate closest to it."""

    name: str
    vendor: str
    family: int
    model: int
    core: str | None  # a family of measure_chains.json, None when unknown
    label: str
    closest: str  # an -mcpu with a bundled surrogate

    @classmethod
    def here(cls) -> Cpu:
        info = _cpuinfo()
        vendor, family, model = info.get("vendor_id", "?"), int(info.get("cpu family", 0)), int(info.get("model", 0))
        for core, row in presets.load("measure_chains")["families"].items():
            if row["vendor"] == vendor and row["family"] == family and model in row["models"]:
                return cls(info.get("model name", platform.processor()), vendor, family, model, core, row["label"],
                           row["closest"])
        closest = "znver3" if vendor == "AuthenticAMD" else "skylake"
        return cls(info.get("model name", platform.processor()), vendor, family, model, None, "unknown", closest)

    def latency(self, chain: str) -> float | None:
        if self.core is None:
            return None
        return presets.load("measure_chains")["families"][self.core]["latency"].get(chain)


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's entry
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


@dataclass
class Calibration:
    ticks_per_cycle: float
    chains: list[Chain] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.ticks_per_cycle:.4f} time-stamp-counter ticks per core cycle (the reference chain of dependent "
               "adds, timed beside every block)"]
        for c in self.chains:
            documented = f"documented {c.documented:g}, off {100 * c.off:.1f}%" if c.documented else "not documented here"
            out.append(f"  {c.name:<7} {c.cycles:6.2f} cycles ({documented}): {c.asm.replace(chr(10), '; ')}")
        return out


class Machine:
    """This machine, measuring hex blocks in a harness pinned to `cpu` (default: the last one allowed)."""

    name = "this machine"

    def __init__(self, cpu: int | None = None, repeats: int = 16, unroll: tuple[int, int] = UNROLL,
                 rounds: int = config.MEASURE_ROUNDS):
        allowed = sorted(os.sched_getaffinity(0))
        self.cpu = allowed[-1] if cpu is None else cpu
        if self.cpu not in allowed:
            raise SurrogateOpsError(f"CPU {self.cpu} is not one this process may run on ({allowed})")
        if platform.machine() not in ("x86_64", "AMD64"):
            raise SurrogateOpsError(f"measure runs x86-64 blocks on an x86-64 machine, not {platform.machine()}")
        if rounds < 1:
            raise SurrogateOpsError(f"rounds must be at least 1, not {rounds}")
        self.repeats, self.unroll, self.rounds = repeats, unroll, rounds
        self.binary = build()
        self.calibration: Calibration | None = None

    def iterations(self, hexes: Sequence[str], progress: Callable[[int], object] | None = None) -> list[Measured]:
        """Core cycles per iteration of each block (in `Measured.cycles`), in order: its time-stamp-counter
        ticks over those of the reference chain of dependent adds (1 cycle an iteration), timed in turns
        with it, so that the core's clock, whatever it does meanwhile, cancels; the median of `rounds` passes
        over each chunk, a block that faults in any of them skipped with the first reason."""
        out: list[Measured] = []
        for start in range(0, len(hexes), CHUNK):
            chunk = list(hexes[start:start + CHUNK])
            answers = self._chunk(chunk * self.rounds)
            out += [_median(answers[k::len(chunk)]) for k in range(len(chunk))]
            if progress:
                progress(len(chunk))
        return out

    def _chunk(self, hexes: list[str]) -> list[Measured]:
        command = [str(self.binary), str(self.cpu), str(self.unroll[0]), str(self.unroll[1]), str(self.repeats)]
        proc = run_tool(command, "".join(h + "\n" for h in hexes), timeout=60 + 2 * len(hexes))
        if proc.returncode and not proc.stdout:
            raise SurrogateOpsError(f"the measuring harness failed (exit status {proc.returncode}): "
                                    f"{proc.stderr.strip()[-300:]}")
        answers = [_parse(line) for line in proc.stdout.splitlines()[:len(hexes)]]
        if len(answers) < len(hexes):  # the harness itself died: the block it was on is named, the rest rerun
            why = f"the harness stopped (exit status {proc.returncode}): {proc.stderr.strip()[-200:] or 'no message'}"
            answers.append(Measured(error=why))
            answers += self._chunk(hexes[len(answers):]) if len(answers) < len(hexes) else []
        return answers

    def calibrate(self, cpu: Cpu | None = None) -> Calibration:
        """Every chain of `presets/measure_chains.json` in cycles beside the documented latency of this
        CPU's core family, and the time-stamp-counter ticks a cycle took meanwhile."""
        cpu = cpu or Cpu.here()
        chains = presets.load("measure_chains")["chains"]
        measured = self.iterations([row["hex"] for row in chains.values()])
        failed = [f"{name}: {m.error}" for name, m in zip(chains, measured, strict=True) if not m.ok]
        if failed:
            raise SurrogateOpsError("the calibration chains did not run here: " + "; ".join(failed))
        ticks = sorted(m.ticks_per_cycle for m in measured)[len(measured) // 2]
        self.calibration = Calibration(ticks, [Chain(name, row["asm"], m.cycles, cpu.latency(name))
                                               for (name, row), m in zip(chains.items(), measured, strict=True)])
        return self.calibration

    def run(self, hexes: Sequence[str], progress: Callable[[int], object] | None = None) -> list[Measured]:
        """Cycles per 100 iterations of each block (BHive's unit)."""
        if self.calibration is None:
            self.calibrate()
        return [Measured(cycles=round(100 * m.cycles, 2), ticks_per_cycle=m.ticks_per_cycle) if m.ok and m.cycles > 0
                else Measured(error=m.error or f"not measurable: {m.cycles:.3f} cycles an iteration")
                for m in self.iterations(hexes, progress)]


def _median(rounds: list[Measured]) -> Measured:
    """One block's answer from its rounds: the median cycles (and the reference's ticks beside them)."""
    failed = [m for m in rounds if not m.ok]
    if failed:
        return failed[0]
    return sorted(rounds, key=lambda m: m.cycles)[(len(rounds) - 1) // 2]  # the lower middle of an even count


def _parse(line: str) -> Measured:
    kind, _, rest = line.partition(" ")
    if kind == "ok":
        ticks, reference = map(float, rest.split())
        return Measured(cycles=ticks / reference, ticks_per_cycle=reference)
    return Measured(error=rest or line)
