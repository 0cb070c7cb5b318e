"""The MLflow tracking store and registry location, configured once per process.

Default: SQLite (`mlflow.db`) with artifacts in `mlruns/`, both in the work directory (see
`config.work_dir`), so every command finds the same registry wherever it runs. `MLFLOW_TRACKING_URI`
or `--tracking-uri` points at an MLflow tracking server instead.

The CLI configures the store once, from `--tracking-uri`; library code that opens runs or reads
the registry goes through `start_run` and `client`, which configure it from the environment when
nothing has yet.
"""

from __future__ import annotations

import logging
import os
import warnings

import mlflow
from mlflow import MlflowClient

from surrogate_ops.config import store_uri, work_dir

EXPERIMENT = "surrogate-ops"  # the MLflow experiment every run goes to
_configured: str | None = None


def _quiet() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.models.model",
                 "mlflow.pyfunc", "mlflow.store.model_registry", "mlflow.utils.requirements_utils",
                 "mlflow.models.signature", "mlflow.tracking._model_registry.client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def configure(tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the given store (or MLFLOW_TRACKING_URI, or the work directory's) and select
    the experiment, creating it with its artifacts in the work directory when the store is local."""
    global _configured
    _quiet()
    uri = store_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _configured = uri
    if os.environ.get("MLFLOW_RUN_ID"):
        return uri  # inside `mlflow run`: the project's run (and its experiment) receives everything
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (work_dir() / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def current() -> str:
    """The configured store's URI (configured from the environment if nothing has been)."""
    return _configured if _configured is not None and mlflow.get_tracking_uri() == _configured else configure()


def client() -> MlflowClient:
    current()
    return MlflowClient()


def start_run(**kwargs):
    """`mlflow.start_run` on the configured store."""
    current()
    return mlflow.start_run(**kwargs)


def ui_hint(uri: str) -> str:
    """How to look at the store in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
    return f"open {uri} in a browser"
