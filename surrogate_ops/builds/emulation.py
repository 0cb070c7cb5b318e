"""Running a foreign-architecture build here, under user-mode QEMU, to check it before it ships.

A platform whose row in `presets/platforms.json` has an `emulate` entry (arm64) can be checked on
this x86 host: QEMU's user-mode emulator runs that architecture's Python with that architecture's
TVM runtime, which loads the build and answers real blocks. The emulated machine is assembled once
per architecture in the work directory (`<work>/emulation/<debian arch>/`), from what the package
registries serve:

    root/   the architecture's Python and C libraries, from the Debian archive apt uses
            (`mmdebstrap --variant=extract`: unpacked, not installed, so nothing foreign runs)
    site/   that architecture's wheels of numpy and TVM, runtime only (no compiler library:
            the build needs none; `TVM_USE_RUNTIME_LIB=1` tells TVM's Python package so)

It is made in a temporary folder and renamed into place, so an interrupted set-up leaves nothing
half-made. Emulation is slow (an instruction at a time through QEMU's translator): its blocks/s
are for the record only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surrogate_ops import config
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_checked
from surrogate_ops.runtime import engines

# What the emulated Python runs: the build, loaded by the TVM runtime alone, on the tokens given;
# it saves the outputs and prints the blocks/s of repeated calls. It imports nothing of ours.
RUNNER = """
import json, sys, time
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

library, tokens, out, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
dev = tvm.cpu()
main = VirtualMachine(tvm.runtime.load_module(library), dev)["main"]
batch = np.load(tokens)
np.save(out, main(tvm.runtime.tensor(batch, dev)).numpy())
calls, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    main(tvm.runtime.tensor(batch, dev)).numpy()
    calls += 1
print(json.dumps({"blocks_per_s": calls * len(batch) / (time.perf_counter() - start), "tvm": tvm.__version__,
                  "python": sys.version.split()[0]}))
"""
# TVM's wheel beside its runtime: the compiler library and headers (over 250 MB) a loaded build never uses.
_RUNTIME_ONLY_SKIPS = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/lib/libtvm_runtime_cuda.so")


@dataclass(frozen=True)
class Emulated:
    """A build's outputs on real blocks under emulation, and what ran it."""

    outputs: np.ndarray
    blocks_per_s: float
    emulator: str
    python: str
    tvm: str


def spec(platform: str) -> dict:
    """The platform's `emulate` entry (QEMU binary, Debian architecture, Python, wheel tags)."""
    row = engines.platforms().get(platform, {})
    if "emulate" not in row:
        raise SurrogateOpsError(f"platform {platform} has no emulator entry in presets/platforms.json")
    return row["emulate"]


def emulator(platform: str) -> str:
    """The user-mode QEMU for the platform's architecture, or how to get it."""
    for name in (spec(platform)["qemu"], spec(platform)["qemu"].removesuffix("-static")):
        found = shutil.which(name)
        if found:
            return found
    raise SurrogateOpsError(f"{spec(platform)['qemu']} not found: to check {platform} builds here, "
                            "install QEMU's user-mode emulators (Debian: apt-get install -y qemu-user-static)")


def _run(command: list[str], what: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    return run_checked(command, what, "Debian: apt-get install -y qemu-user-static mmdebstrap", timeout, env)


def _pinned(names: list[str]) -> list[str]:
    """Each wheel at the version installed here, where it is: the emulated TVM runtime must be the
    TVM that compiled the build."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def machine(platform: str, log=print) -> Path:
    """The emulated machine's folder for `platform` (root/ and site/), made once and reused (made
    again when the platform's entry or the wheels' versions change)."""
    want = {**spec(platform), "wheels": _pinned(spec(platform)["wheels"])}
    home = config.work_dir() / "emulation" / want["debian_arch"]
    ready = home / "ready.json"
    if ready.is_file() and json.loads(ready.read_text()).get("spec") == want:
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    log(f"making the emulated {want['debian_arch']} machine in {home} (once; about a minute)")
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=f".{want['debian_arch']}-") as tmp:
        made = Path(tmp)
        _run(["mmdebstrap", "--quiet", "--variant=extract", f"--architectures={want['debian_arch']}",
              f"--include={','.join(want['debian_packages'])}", want["debian_suite"], str(made / "root")],
             f"unpacking Debian's {want['debian_arch']} Python")
        wheels = made / "wheels"
        platforms = [arg for tag in want["wheel_platforms"] for arg in ("--platform", tag)]
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--python-version", want["python"], "--implementation", "cp", *platforms, "--dest", str(wheels),
              *want["wheels"]], f"fetching the {want['debian_arch']} wheels")
        site = made / "site"
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site, [n for n in archive.namelist() if not n.startswith(_RUNTIME_ONLY_SKIPS)])
        shutil.rmtree(wheels)
        (made / "ready.json").write_text(json.dumps({"spec": want, "made": time.strftime("%Y-%m-%d %H:%M:%S")}))
        if home.exists():
            shutil.rmtree(home)
        os.replace(made, home)
        made.mkdir()  # for the temporary folder's own clean-up
    return home


def run_build(platform: str, library: Path, tokens: np.ndarray, seconds: float = 2.0, log=print) -> Emulated:
    """The build's outputs on `tokens`, computed by the platform's TVM runtime under emulation, and
    the blocks/s of calls repeated for `seconds`."""
    qemu, home, want = emulator(platform), machine(platform, log), spec(platform)
    python = home / "root" / "usr" / "bin" / f"python{want['python']}"
    with tempfile.TemporaryDirectory() as tmp:
        runner, batch, out = Path(tmp) / "runner.py", Path(tmp) / "tokens.npy", Path(tmp) / "out.npy"
        runner.write_text(RUNNER)
        np.save(batch, tokens)
        env = {**os.environ, "PYTHONPATH": str(home / "site"), "TVM_USE_RUNTIME_LIB": "1", "PYTHONNOUSERSITE": "1"}
        printed = _run([qemu, "-L", str(home / "root"), str(python), str(runner), str(Path(library).resolve()),
                        str(batch), str(out), str(seconds)], f"the {platform} build under {Path(qemu).name}", 600, env)
        report = json.loads(printed.strip().splitlines()[-1])
        return Emulated(np.load(out), report["blocks_per_s"], Path(qemu).name, report["python"], report["tvm"])


def register_binfmt(machine: str) -> None:
    """Have the kernel run `machine`'s binaries (aarch64) through QEMU, so a foreign root file system's
    package scripts and a foreign container's steps run here: the registration Debian's
    qemu-user-static ships (`/usr/lib/binfmt.d/qemu-<machine>.conf`, with the F flag, so it works
    inside chroots and containers), written into binfmt_misc, mounted first if need be. Root only;
    done once per boot."""
    folder = Path("/proc/sys/fs/binfmt_misc")
    if (folder / f"qemu-{machine}").exists():
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{machine}.conf")
    if not conf.is_file():
        raise SurrogateOpsError(f"{conf} is missing: to run {machine} binaries here, install QEMU's user-mode "
                                "emulators (Debian: apt-get install -y qemu-user-static)")
    if not (folder / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(folder)], "mounting binfmt_misc (needs root)", 60)
    try:
        (folder / "register").write_text(conf.read_text().strip())
    except OSError as exc:
        raise SurrogateOpsError(f"registering QEMU for {machine} with binfmt_misc failed (needs root): {exc}") from None
