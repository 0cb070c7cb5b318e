"""The edge stage: a bento as an OCI image, built and run with podman, on a base image made here.

No container registry is needed. The base image is made from the Debian archive apt already
reaches: `mmdebstrap` unpacks a minimal Debian with Python, llvm-mca (the service's fallback) and
uv (which BentoML's generated Dockerfile installs with), and `podman import` brings it in as
`BASE_IMAGE`. The bentofile names that base (`docker: base_image`), so the Dockerfile that
`bentoml build` generated for the bento starts from it; `podman build` runs that Dockerfile on the
bento's folder, with the host's package-index settings (its CA bundle and pip's find-links
folders) mounted into the build's steps only, never into the image. The image carries the
service, the models, ONNX Runtime and numpy, with no torch, MLflow or TVM compiler.

Host set-up, once: `bash deploy/podman-setup.sh` (podman with runc, and mmdebstrap).
"""

from __future__ import annotations

import json
import os
import platform as host
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.llvm_tools import run_checked
from surrogate_ops.programs.setting import McaSetting

BASE_IMAGE = "localhost/surrogate-ops-base:bookworm"
SETUP_HINT = "run `bash deploy/podman-setup.sh` as root once (podman with runc, and mmdebstrap)"
# The base: Debian 12 minbase; python3 for the bento's virtual environment, llvm for llvm-mca, passwd
# for the bento's user; docs and translations left out; merged /usr without the usrmerge package
# (which would pull in Perl).
SUITE = "bookworm"
MIRRORS = ("deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
PACKAGES = ("usr-is-merged", "python3", "python3-pip", "ca-certificates", "passwd", "llvm")
_EXCLUDED = ("/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*", "/usr/share/doc/*")
SERVICE_PORT = 3000  # where BentoML's entrypoint serves inside the image
# Image architectures (Debian's names, as podman's --arch takes them): uv's wheel for each, and the
# QEMU that runs a foreign one here (registered with the kernel: `emulation.register_binfmt`).
ARCHES = {"amd64": {"machine": "x86_64", "uv_platform": "manylinux_2_17_x86_64"},
          "arm64": {"machine": "aarch64", "uv_platform": "manylinux_2_17_aarch64"}}


@dataclass(frozen=True)
class Image:
    """A built image: its name, size, and how long the build took."""

    name: str
    size_mb: float
    seconds: float
    base: str


def podman() -> str:
    found = shutil.which("podman")
    if found is None:
        raise SurrogateOpsError(f"podman is not installed: {SETUP_HINT}")
    return found


def _run(command: list[str], what: str, timeout: float = 1800) -> str:
    return run_checked(command, what, SETUP_HINT, timeout)


def exists(image: str) -> bool:
    return subprocess.run([podman(), "image", "exists", image], capture_output=True, check=False).returncode == 0


def size_mb(image: str) -> float:
    return int(_run([podman(), "image", "inspect", "--format", "{{.Size}}", image], "podman image inspect")) / 1e6


def host_arch() -> str:
    return next((a for a, row in ARCHES.items() if row["machine"] == host.machine()), host.machine())


def base_name(arch: str) -> str:
    """The base image's name for an architecture: `BASE_IMAGE` for this host's, `BASE_IMAGE-<arch>` else."""
    return BASE_IMAGE if arch == host_arch() else f"{BASE_IMAGE}-{arch}"


def _foreign(arch: str) -> None:
    """A foreign architecture's binaries must run here (its packages' scripts, its image's steps)."""
    from surrogate_ops.builds import emulation

    if arch not in ARCHES:
        raise SurrogateOpsError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHES)}")
    if arch != host_arch():
        emulation.register_binfmt(ARCHES[arch]["machine"])


def base_image(rebuild: bool = False, log=print, arch: str | None = None) -> str:
    """The base image for `arch` [default: this host's], made from the Debian archive when podman does
    not hold it yet (about 40 s natively; a foreign one runs its packages' scripts under QEMU, minutes)."""
    arch = arch or host_arch()
    name = base_name(arch)
    if exists(name) and not rebuild:
        return name
    _foreign(arch)
    log(f"making the base image {name} from the Debian archive (once; about a minute"
        + (", longer emulated)" if arch != host_arch() else ")"))
    with tempfile.TemporaryDirectory(prefix="base-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
              ARCHES[arch]["uv_platform"], "--dest", tmp, "uv"], "fetching uv for the base image")
        (uv,) = Path(tmp).glob("uv-*.whl")
        rootfs = Path(tmp) / "rootfs.tar"
        _run(["mmdebstrap", "--quiet", "--variant=minbase", f"--architectures={arch}",
              "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr", f"--include={','.join(PACKAGES)}",
              *[f"--dpkgopt=path-exclude={p}" for p in _EXCLUDED], "--dpkgopt=path-include=/usr/share/doc/*/copyright",
              f"--customize-hook=upload {uv} /tmp/{uv.name}",
              f'--customize-hook=chroot "$1" python3 -m pip install --quiet --no-cache-dir --break-system-packages '
              f'--no-index --no-deps /tmp/{uv.name}',
              f'--customize-hook=rm -rf "$1"/tmp/{uv.name} "$1"/root/.cache',
              SUITE, str(rootfs), *MIRRORS], "mmdebstrap (the base image's root file system)")
        _run([podman(), "import", "--arch", arch,
              "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "--change", "ENV LANG=C.UTF-8", "--change", "ENV UV_SYSTEM_CERTS=1",
              "--change", 'CMD ["/bin/bash"]', str(rootfs), name], "podman import")
    return name


def _pip_settings() -> dict[str, list[str]]:
    """This host's pip settings that a build inside the image needs too: its CA bundle and find-links folders."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    found: dict[str, list[str]] = {"cert": [], "find-links": []}
    for line in out.splitlines():
        match = re.match(r"^[^.]*\.(cert|find-links)='(.*)'$", line.strip())
        if match:
            found[match.group(1)] += match.group(2).split()
    for key, env in (("cert", "PIP_CERT"), ("find-links", "PIP_FIND_LINKS")):
        found[key] += os.environ.get(env, "").split()
    return {key: sorted({v for v in values if v and Path(v).exists()}) for key, values in found.items()}


def build(bento_tag: str, image: str | None = None, rebuild_base: bool = False, log=print,
          arch: str | None = None) -> Image:
    """The bento's image for `arch` [default: this host's], from the Dockerfile `bentoml build`
    generated for it, on the base image (a foreign architecture's steps run under QEMU)."""
    import bentoml

    arch = arch or host_arch()
    base = base_image(rebuild_base, log, arch)
    bento = bentoml.get(bento_tag)
    root = Path(bento.path)
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    if f"FROM {BASE_IMAGE}" not in dockerfile:
        raise SurrogateOpsError(f"bento {bento.tag} was not built on {BASE_IMAGE} (its bentofile's docker.base_image): "
                                "build it again with `surrogate-ops bento`")
    params = root / "src" / "params.json"
    if params.is_file() and McaSetting.from_json(json.loads(params.read_text())).table:
        raise SurrogateOpsError(f"bento {bento.tag} gives llvm-mca a per-instruction table, which needs the parametric "
                                "driver compiled against LLVM's development files: the image carries llvm-mca alone")
    image = image or f"localhost/{bento.tag.name}:{bento.tag.version}" + ("" if arch == host_arch() else f"-{arch}")
    settings = _pip_settings()
    with tempfile.TemporaryDirectory(prefix="build-") as tmp:
        uv_config, file = Path(tmp) / "uv.toml", Path(tmp) / "Dockerfile"
        uv_config.write_text(f"find-links = {json.dumps(settings['find-links'])}\n")
        file.write_text(dockerfile.replace(f"FROM {BASE_IMAGE} ", f"FROM {base} ", 1))  # the base of this architecture
        mounts = [f"{uv_config}:/etc/uv/uv.toml:ro", *(f"{d}:{d}:ro" for d in settings["find-links"])]
        mounts += [f"{c}:/etc/ssl/certs/ca-certificates.crt:ro" for c in settings["cert"][:1]]
        start = time.time()
        _run([podman(), "build", "--file", str(file), "--platform", f"linux/{arch}", "--tag", image,
              *[arg for mount in mounts for arg in ("--volume", mount)], str(root)], f"podman build of {image}", 5400)
    return Image(image, size_mb(image), time.time() - start, base)


@contextmanager
def started(image: str, port: int, env: dict[str, str] | None = None, timeout: float = 180):
    """The image running detached, its service published on 127.0.0.1:`port`; yields (url, seconds from
    `podman run` until /ops/healthz answered). A container that exits first fails at once, with its
    log; it is removed after, whatever happened."""
    from surrogate_ops.serving.server import wait_ready

    options = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
    start = time.time()
    container = _run([podman(), "run", "--detach", "--publish", f"127.0.0.1:{port}:{SERVICE_PORT}", *options,
                      image], f"podman run {image}").strip()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                wait_ready(url, timeout=2)
                break
            except OSError:
                state = subprocess.run([podman(), "inspect", "--format", "{{.State.Status}}", container],
                                       capture_output=True, text=True, check=False).stdout.strip()
                if state == "running" and time.time() - start < timeout:
                    continue
                logs = subprocess.run([podman(), "logs", container], capture_output=True, text=True, check=False)
                why = f"exited ({state})" if state != "running" else f"did not answer /ops/healthz in {timeout:.0f} s"
                raise SurrogateOpsError(f"{image} {why}:\n{(logs.stdout + logs.stderr)[-3000:]}") from None
        yield url, time.time() - start
    finally:
        subprocess.run([podman(), "rm", "--force", "--time", "5", container], capture_output=True, check=False)
