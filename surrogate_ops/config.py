"""Where surrogate-ops keeps its state (datasets, the MLflow store, builds), and the default model.

`SURROGATE_OPS_HOME` wins; otherwise a source checkout keeps it in `<checkout>/surrogate-ops-work`
and an installed package in `~/.surrogate-ops`. The location never depends on the current
directory, so commands run from anywhere find the same registry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal


def work_dir() -> Path:
    env = os.environ.get("SURROGATE_OPS_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        checkout = Path(__file__).resolve().parent.parent
        path = checkout / "surrogate-ops-work" if (checkout / "pyproject.toml").is_file() else Path.home() / ".surrogate-ops"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def default_store_uri() -> str:
    """The MLflow store every command shares unless told otherwise: SQLite in the work directory."""
    return f"sqlite:///{work_dir() / 'mlflow.db'}"


def store_uri(tracking_uri: str | None = None) -> str:
    """The store a command uses: `--tracking-uri`, else MLFLOW_TRACKING_URI, else the default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri()


def model_name(mcpu: str) -> str:
    """The registered name of the surrogate of llvm-mca on `mcpu` (one model per CPU)."""
    return f"llvm-mca-{mcpu}"


def champion_uri(name: str) -> str:
    return f"models:/{name}@champion"


def model_uri(mcpu: str) -> str:
    """The champion of `mcpu`'s surrogate: what `predict --mcpu` and the service use by default."""
    return champion_uri(model_name(mcpu))


PRETRAINED = Path(__file__).resolve().parent / "pretrained"  # the bundled surrogates, a folder per registered name
DEFAULT_MCPU = "haswell"
DEFAULT_MODEL = model_name(DEFAULT_MCPU)  # the registered name of the bundled Haswell surrogate
DEFAULT_MODEL_URI = model_uri(DEFAULT_MCPU)  # what single-model commands use by default
Device = Literal["cpu", "cuda", "auto"]  # where training runs (`loop.device`); auto: cuda where torch sees a GPU
DEVICES: tuple[Device, ...] = ("cpu", "cuda", "auto")  # here, not in `loop`, so the CLI lists them without torch


if __name__ == "__main__":  # `python -m surrogate_ops.config`: the work directory (MLproject runs its commands there)
    print(work_dir())
