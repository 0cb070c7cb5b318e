"""Measured datasets of this machine: blocks from any source, timed here (`programs.measure`), written in
BHive's format so that `collect --bhive`, `finetune --data` and `optimize-table --data` read them.

`measure(out, ...)` writes three files:

    OUT                  hex,throughput (cycles per 100 iterations), one row per distinct block measured
    OUT.json             the CPU (name, CPUID family and model, core family, the closest bundled
                         surrogate's -mcpu), the calibration (ticks per cycle, every chain against its
                         documented latency), the harness's settings, the counts, faults by reason
    <OUT stem>.faults.csv  hex,block,reason of every block skipped (a fault, or text llvm-mc refused)

The CSV is written to a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from surrogate_ops import config
from surrogate_ops.blocks.encode import assemble
from surrogate_ops.data.datasets import Generated, gather
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.files import written
from surrogate_ops.programs.measure import Calibration, Cpu, Machine


@dataclass
class MeasureResult:
    out: Path
    measured: int
    faults: Counter
    cpu: Cpu
    calibration: Calibration
    faults_path: Path | None


def measure(out: str | Path, bhive: Sequence[str | Path] = (), binaries: Sequence[str | Path] = (),
            asm: Sequence[str | Path] = (), generated: Generated | None = None, limit: int | None = None,
            per_binary: int | None = None, exclude: Sequence[str] = (), repeats: int = 16, cpu: int | None = None,
            progress: bool = True, rounds: int = config.MEASURE_ROUNDS) -> MeasureResult:
    """Measure the distinct blocks of the sources (at most `limit`) on this machine into `out`."""
    out = Path(out)
    here = Cpu.here()
    if generated is not None and generated.mcpu is None:
        generated = Generated(generated.count, generated.seed, generated.density, here.closest)
    records = gather(bhive, binaries, asm, limit, progress, generated=generated, per_binary=per_binary,
                     exclude=exclude)
    if not records:
        raise SurrogateOpsError("no blocks found in the given sources")
    blocks: dict[str, str] = {}  # hex -> canonical text, each distinct block once
    skipped: list[tuple[str, str, str]] = [(r.hex or "", r.block or "", r.error) for r in records if r.error]
    texts = [r for r in records if not r.error and r.hex is None and r.block]
    for record, (code, why) in zip(texts, assemble([r.block for r in texts]), strict=True):
        if code is None:
            skipped.append(("", record.block, why))
        else:
            record.hex = code
    for r in records:
        if not r.error and r.hex:
            blocks.setdefault(r.hex, r.block or "")
    machine = Machine(cpu, repeats, rounds=rounds)
    calibration = machine.calibrate(here)
    hexes = list(blocks)
    with tqdm(total=len(hexes), unit="block", desc="measuring", disable=not progress) as bar:
        results = machine.run(hexes, progress=bar.update)
    rows = [(h, f"{m.cycles:.2f}") for h, m in zip(hexes, results, strict=True) if m.ok]
    skipped += [(h, blocks[h], m.error) for h, m in zip(hexes, results, strict=True) if not m.ok]
    _write_csv(out, ["hex", "throughput"], rows)
    faults_path = out.with_name(out.stem + ".faults.csv")
    if skipped:
        _write_csv(faults_path, ["hex", "block", "reason"], skipped)
    elif faults_path.exists():
        faults_path.unlink()
    faults = Counter(_kind(why) for _, _, why in skipped)
    out.with_name(out.name + ".json").write_text(json.dumps({
        "cpu": asdict(here), "mcpu": here.closest, "calibration": {
            "ticks_per_cycle": calibration.ticks_per_cycle,
            "chains": {c.name: {"asm": c.asm, "cycles": c.cycles, "documented": c.documented} for c in calibration.chains}},
        "harness": {"unroll": list(machine.unroll), "repeats": repeats, "rounds": rounds, "cpu": machine.cpu, "clock": "time-stamp counter"},
        "blocks": len(records), "measured": len(rows), "faults": dict(faults)}, indent=1) + "\n")
    return MeasureResult(out, len(rows), faults, here, calibration, faults_path if skipped else None)


def _kind(reason: str) -> str:
    """A fault's reason without its address, for counting."""
    return reason.split(" at 0x")[0].split(" (line")[0]


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with written(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
