"""The bento stage: a registered surrogate packed with the service into a bento, offline.

`build(uris)` stages the checkout's `bento/` folder (service.py, bentofile.yaml) in a scratch folder
with `models/<mcpu>/` for each version (its model directory, its host build included, without the
torch checkpoint and tuning databases; stamped with its registered version), `wheels/` (the surrogate-ops wheel)
and `params.json` when the fallback's llvm-mca gets parameters, then runs `bentoml build` there.
`bentoml containerize <tag>` makes the image where a container engine is.
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
from surrogate_ops.modeldir import CHECKPOINT, ModelDir

SERVICE_DIR = Path(__file__).resolve().parents[1] / "bento"


def service_dir() -> Path:
    """The checkout's BentoML service folder (serve and bento need it)."""
    if not (SERVICE_DIR / "service.py").is_file():
        raise SurrogateOpsError(f"no BentoML service at {SERVICE_DIR / 'service.py'}: serve and bento need a "
                                "checkout of surrogate-ops (pip install -e .)")
    return SERVICE_DIR


def build(model_uris: list[str], mca_params: dict | None = None) -> tuple[str, list[tuple[str, str]]]:
    """Build the bento for registered versions, one per mcpu; (bento tag, [(model name, version)])."""
    root = service_dir()
    carried = [registry.resolve_version(uri) for uri in model_uris]
    with tempfile.TemporaryDirectory(prefix="bento-") as tmp:
        stage = Path(tmp) / "bento"
        shutil.copytree(root, stage, ignore=shutil.ignore_patterns("models", "wheels", "__pycache__"))
        for name, version in carried:
            source = registry.model_dir(f"models:/{name}/{version}")
            folder = stage / "models" / (source.mcpu or name)
            if folder.exists():
                raise SurrogateOpsError(f"two models for -mcpu={source.mcpu}: a bento carries one per mcpu")
            shutil.copytree(source.path, folder, ignore=shutil.ignore_patterns(CHECKPOINT, "*-tuned.db"))
            ModelDir.open(folder).stamp(f"{name}/{version}")
        if mca_params:
            (stage / "params.json").write_text(json.dumps(mca_params))
        for command in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                         str(stage / "wheels"), str(root.parent)],
                        [sys.executable, "-m", "bentoml", "build", ".", "--output", "tag"]):
            proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=stage)
            if proc.returncode:
                raise SurrogateOpsError(f"{' '.join(command[2:4])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:"), carried
