"""The CLI as a user runs it, with the compiled front end and without: `surrogate-ops predict` on
BHive blocks and on blocks cut from real libraries, from hex (a CSV) and from text (a .s file),
against `--program llvm-mca` on the same file and the same cores.

Each command runs in a fresh process on the whole file and on its first block; the marginal rate
(blocks per second once started: the one-block run's time subtracted) is what is compared, as the
median of `--repeats` runs taken in turns. `SURROGATE_OPS_FRONTEND=python` is the Python front end
alone (the reference); the default is the compiled one (`surrogate_ops/blocks/compiled.py`). The
surrogate is `--model` (the bundled one of `--mcpu` by default), whose network runs from a batch's
parts (`parts.onnx`); "from tokens" is the same model without that graph, as before issue 32's
cheaper network.

    python benchmarks/frontend_race.py [--blocks 20000] [--repeats 3] [--mcpu haswell] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import DEFAULT_BHIVE, bhive_hexes

from surrogate_ops.blocks.elf import blocks_from_binaries
from surrogate_ops.blocks.hexcode import disassemble
from surrogate_ops.runtime.modeldir import PARTS, ModelDir

LIBRARIES = ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3")


def contenders(model: Path, scratch: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each contender's extra arguments and environment."""
    tokens = scratch / "from-tokens"
    shutil.copytree(model, tokens, ignore=shutil.ignore_patterns(PARTS, "builds"))
    return {"llvm-mca": (["--program", "llvm-mca"], {}),
            "compiled front end": (["--model", str(model)], {}),
            "... network from tokens": (["--model", str(tokens)], {}),
            "Python front end": (["--model", str(model)], {"SURROGATE_OPS_FRONTEND": "python"})}


def files(scratch: Path, name: str, hexes: list[str]) -> dict[str, tuple[Path, Path]]:
    """(all blocks, first block) as a hex CSV and as a .s text file of canonical blocks."""
    texts = [b for b in disassemble(hexes).blocks if b is not None]
    out = {}
    for form, rows, write in (("hex", hexes, lambda rs: "hex\n" + "\n".join(rs) + "\n"),
                              ("text", texts, lambda rs: "\n\n".join(rs) + "\n")):
        suffix = ".csv" if form == "hex" else ".s"
        paths = scratch / f"{name}-{form}{suffix}", scratch / f"{name}-{form}-one{suffix}"
        paths[0].write_text(write(rows))
        paths[1].write_text(write(rows[:1]))
        out[form] = paths
    return out


def timed(path: Path, extra: list[str], env: dict[str, str], mcpu: str) -> float:
    started = time.perf_counter()
    subprocess.run(["surrogate-ops", "predict", "--input", str(path), "--mcpu", mcpu, *extra],
                   env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bhive", type=Path, default=DEFAULT_BHIVE / "hsw.csv")
    parser.add_argument("--blocks", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mcpu", default="haswell")
    parser.add_argument("--model", type=Path, help="model directory [default: the bundled one of --mcpu]")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="frontend-race-"))
    racing = contenders(args.model or ModelDir.bundled(args.mcpu).path, scratch)
    sets = {"BHive": bhive_hexes(args.bhive, args.blocks),
            "glibc + libcrypto": [h for h, _ in blocks_from_binaries([p for p in LIBRARIES if Path(p).is_file()],
                                                                    per_binary=args.blocks // 2)]}
    print(f"`surrogate-ops predict --mcpu {args.mcpu}`, marginal blocks/s (one-block run subtracted), "
          f"median of {args.repeats}, {len(os.sched_getaffinity(0))} cores")
    print(f"{'blocks':<20} {'input':<6} {'contender':<24} {'1 block':>8} {'all':>7} {'marginal b/s':>13} {'vs llvm-mca':>12}")
    for name, hexes in sets.items():
        for form, (many, one) in files(scratch, name.split()[0], hexes).items():
            count = len(hexes)
            for extra, env in racing.values():  # untimed: caches, the build of the front end
                timed(one, extra, env, args.mcpu)
            runs = {label: ([], []) for label in racing}
            for _ in range(args.repeats):
                for label, (extra, env) in racing.items():
                    runs[label][0].append(timed(one, extra, env, args.mcpu))
                    runs[label][1].append(timed(many, extra, env, args.mcpu))
            base = None
            for label, (ones, alls) in runs.items():
                t_one, t_all = statistics.median(ones), statistics.median(alls)
                marginal = (count - 1) / max(t_all - t_one, 1e-9)
                base = base or marginal
                print(f"{name:<20} {form:<6} {label:<24} {t_one:>7.2f}s {t_all:>6.2f}s {marginal:>13,.0f} "
                      f"{marginal / base:>11.1f}x")


if __name__ == "__main__":
    main()
