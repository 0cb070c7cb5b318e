"""The MLflow tracking store and registry location.

Default: SQLite (`mlflow.db`) with artifacts in `mlruns/`, both in the work directory (see
`config.work_dir`), so every command finds the same registry wherever it runs. `MLFLOW_TRACKING_URI`
or `--tracking-uri` points at an MLflow tracking server instead.
"""

from __future__ import annotations

import logging
import os
import warnings

import mlflow

from surrogate_ops.config import work_dir

EXPERIMENT = "surrogate-ops"


def _quiet() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.models.model",
                 "mlflow.pyfunc", "mlflow.store.model_registry", "mlflow.utils.requirements_utils",
                 "mlflow.models.signature", "mlflow.tracking._model_registry.client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def default_uri() -> str:
    return f"sqlite:///{work_dir() / 'mlflow.db'}"


def configure(tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the given store (or MLFLOW_TRACKING_URI, or the work directory's) and select
    the experiment, creating it with its artifacts in the work directory when the store is local."""
    _quiet()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if os.environ.get("MLFLOW_RUN_ID"):
        return uri  # inside `mlflow run`: the project's run (and its experiment) receives everything
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (work_dir() / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def ui_hint(uri: str) -> str:
    """How to look at the store in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
    return f"open {uri} in a browser"
