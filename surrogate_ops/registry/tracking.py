"""The MLflow tracking store and registry location, configured once per process.

Default: SQLite (`mlflow.db`) with artifacts in `mlruns/`, both in the work directory (see
`config.work_dir`), so every command finds the same registry wherever it runs. `MLFLOW_TRACKING_URI`
or `--tracking-uri` points at an MLflow tracking server instead.

The CLI configures the store once, from `--tracking-uri`; library code that opens runs or reads
the registry goes through `start_run` and `client`, which configure it from the environment when
nothing has yet.

Inside `mlflow run` (an MLproject entry point), MLFLOW_RUN_ID names the project's run, and the
command's runs are that run: every top-level `start_run` resumes it (MLflow itself hands it out only
once per process). The project run already holds the entry point's parameters as they were given
(`data=surrogate-ops-work/x.parquet`, `sizes=100,300`) and MLflow refuses to change a parameter, so
commands log theirs through `log_params`: a value the run holds already, differently written (the
path resolved, the list parsed), goes beside it as `<key>_resolved`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from surrogate_ops.config import store_uri, work_dir

EXPERIMENT = "surrogate-ops"  # the MLflow experiment every run goes to
DATASET = "dataset"  # the artifact folder of a dataset `collect` logs inside `mlflow run`
RESOLVED = "_resolved"  # suffix of a parameter logged beside the entry point's own value of it
_configured: str | None = None
_PROJECT_RUN = os.environ.get("MLFLOW_RUN_ID")  # read now: mlflow.start_run unsets it when it first uses it


def _quiet() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.models.model",
                 "mlflow.pyfunc", "mlflow.store.model_registry", "mlflow.utils.requirements_utils",
                 "mlflow.models.signature", "mlflow.tracking._model_registry.client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def local_store(uri: str) -> None:
    """Create a SQLite store that does not exist yet with its artifacts beside it (`mlruns/` next to
    the database). Left to MLflow, its Default experiment would keep them in `./mlruns` of whatever
    directory first opened the store: `mlflow run .` in a fresh clone wrote into the checkout."""
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri[len("sqlite:///"):])
    if database.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    _quiet()  # its table migrations' log lines
    database.parent.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(uri, (database.parent / "mlruns").as_uri())


def configure(tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the given store (or MLFLOW_TRACKING_URI, or the work directory's) and select
    the experiment, creating it with its artifacts in the work directory when the store is local."""
    global _configured
    _quiet()
    uri = store_uri(tracking_uri)
    local_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _configured = uri
    if project_run():
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


def project_run() -> str | None:
    """The run of the `mlflow run` this process runs under, if any."""
    return _PROJECT_RUN or os.environ.get("MLFLOW_RUN_ID")


def start_run(**kwargs):
    """`mlflow.start_run` on the configured store; inside `mlflow run`, a top-level run is the
    project's run (resumed again if an earlier run of this process ended it)."""
    current()
    if project_run() and kwargs.get("run_id") is None and mlflow.active_run() is None:
        kwargs["run_id"] = project_run()
    os.environ.pop("MLFLOW_RUN_ID", None)  # or MLflow would give a nested run the project's run again
    return mlflow.start_run(**kwargs)


def log_params(params: dict) -> None:
    """Log parameters on the active run. A key the run holds already with the same value (5 and 5.0
    alike) is left as it is; with another value (inside `mlflow run`: the entry point's parameter as
    given) it is logged as `<key>_resolved` instead, so
    the entry point's value stays what `mlflow run` was given (and a pipeline can match it)."""
    held = client().get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({(key + RESOLVED if key in held else key): value for key, value in params.items()
                       if key not in held or not _same(held[key], value)})


def log_dataset(path, rows: int) -> str:
    """Log a collected dataset to the project run (artifact `dataset/<file>`, metric `blocks`), so a
    pipeline's next step takes it by URI; the run's ID."""
    run_id = project_run()
    client().log_artifact(run_id, str(path), artifact_path=DATASET)
    client().log_metric(run_id, "blocks", rows)
    return run_id


def _same(held: str, value) -> bool:
    """Whether MLflow would take `value` for the parameter value `held` (the same text; 5 and 5.0 alike)."""
    if held == str(value):
        return True
    try:
        return float(held) == float(str(value))
    except ValueError:
        return False


def ui_hint(uri: str) -> str:
    """How to look at the store in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)"
    return f"open {uri} in a browser"
