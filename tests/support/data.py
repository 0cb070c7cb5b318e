"""Data the tests read: the tiny real blocks checked in under fixtures/, the blocks the service
tests send, BHive's measurements in ../shared when they are here, and BHive-format CSVs made here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# ../shared/data/bhive from the repository root: not in the repository; tests marked `shared_data` skip without it
BHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "bhive"
BHIVE_FILES = ("hsw.csv", "skl.csv", "ivb.csv")  # Haswell, Skylake and Ivy Bridge measurements

GOOD = [b["block"] for b in json.loads((FIXTURES / "blocks.json").read_text())["blocks"]]
UNKNOWN = "invlpg (%rax)\naddq %rax, %rbx"  # invlpg (privileged, in no training set): outside the bundled vocabulary
LONG = "\n".join(["addq %rax, %rbx", "imulq %rcx, %rdx"] * 40)  # 80 instructions, over the model's 64


def bhive_absent() -> str | None:
    """Why the shared BHive data cannot be read here, or None when every file of BHIVE_FILES is."""
    missing = [name for name in BHIVE_FILES if not (BHIVE / name).is_file()]
    if missing:
        return (f"needs BHive's measurements ({', '.join(missing)}) in {BHIVE}, i.e. ../shared/data/bhive "
                "beside the repository; they are not part of it")
    return None


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
