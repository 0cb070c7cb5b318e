"""The bento stage: a registered surrogate packed with the service into a bento, offline.

`build(uris)` stages the checkout's `bento/` folder (service.py, bentofile.yaml) in a scratch folder
with `models/<mcpu>/` for each version (its model directory, its host build included, without the
torch checkpoint and tuning databases; stamped with its registered version), `surrogate_ops/` (the
package's source, which the service imports, without the bundled models) and `params.json` when the
fallback's llvm-mca gets parameters. The bentofile's packages are pinned to the versions installed
here, so a container answers as this host does; then `bentoml build` runs there.
`surrogate-ops containerize <tag>` makes the image (`containers`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from surrogate_ops import registry
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs.setting import McaSetting
from surrogate_ops.runtime.modeldir import CHECKPOINT, ModelDir

SERVICE_DIR = Path(__file__).resolve().parents[2] / "bento"


def service_dir() -> Path:
    """The checkout's BentoML service folder (serve and bento need it)."""
    if not (SERVICE_DIR / "service.py").is_file():
        raise SurrogateOpsError(f"no BentoML service at {SERVICE_DIR / 'service.py'}: serve and bento need a "
                                "checkout of surrogate-ops (pip install -e .)")
    return SERVICE_DIR


# What an image of each architecture serves with, in place of the bentofile's ONNX Runtime: an arm64
# image carries each model's arm64 TVM build and TVM's runtime (ONNX Runtime's aarch64 wheel cannot
# be checked here: it crashes on import under QEMU's user-mode emulation).
ENGINE_PACKAGES = {"amd64": ("onnxruntime",), "arm64": ("apache-tvm", "apache-tvm-ffi")}


def build(model_uris: list[str], setting: McaSetting | None = None, arch: str = "amd64",
          ) -> tuple[str, list[tuple[str, str]]]:
    """Build the bento for registered versions, one per mcpu; (bento tag, [(model name, version)]).
    `arch` arm64: each model's arm64 TVM build goes in, and TVM's runtime serves it (`ENGINE_PACKAGES`)."""
    root = service_dir()
    carried = [registry.open(uri, registered=True) for uri in model_uris]
    with tempfile.TemporaryDirectory(prefix="bento-") as tmp:
        stage = Path(tmp) / "bento"
        shutil.copytree(root, stage, ignore=shutil.ignore_patterns("models", "wheels", "__pycache__"))
        for opened in carried:
            source, name, version = opened.model, opened.name, opened.version
            folder = stage / "models" / (source.mcpu or name)
            if folder.exists():
                raise SurrogateOpsError(f"two models for -mcpu={source.mcpu}: a bento carries one per mcpu")
            shutil.copytree(source.path, folder, ignore=shutil.ignore_patterns(CHECKPOINT, "*-tuned.db"))
            ModelDir.open(folder).stamp(f"{name}/{version}")
            if arch == "arm64":
                from surrogate_ops.builds import compile as compiler

                compiler.compile_model(ModelDir.open(folder), "arm64", folder / "builds")
        if setting:
            (stage / "params.json").write_text(json.dumps(setting.to_json()))
        package = Path(__file__).resolve().parents[1]
        shutil.copytree(package, stage / "surrogate_ops", ignore=shutil.ignore_patterns("pretrained", "__pycache__"))
        _pin_packages(stage / "bentofile.yaml", ENGINE_PACKAGES[arch])
        command = [sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"]
        proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=stage)
        if proc.returncode:
            raise SurrogateOpsError(f"bentoml build failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:"), [(o.name, o.version) for o in carried]


def _pin_packages(bentofile: Path, engine: tuple[str, ...]) -> None:
    """Each of the bentofile's Python packages at the version installed here, the engine's in place of
    ONNX Runtime."""
    from importlib import metadata

    import yaml

    spec = yaml.safe_load(bentofile.read_text())
    pinned = []
    names = [r.split("=")[0].split(">")[0].split("<")[0].strip() for r in spec["python"]["packages"]]
    for name in [*engine, *(n for n in names if n != "onnxruntime")]:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SurrogateOpsError(f"the bento's {name} is not installed here: pip install {name}") from None
    spec["python"]["packages"] = pinned
    bentofile.write_text(yaml.safe_dump(spec, sort_keys=False))
