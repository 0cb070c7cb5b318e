"""The MLproject `pipeline` entry point: collect -> train -> evaluate -> promote -> compile.

Each step is an MLflow Projects run of its own entry point (`mlflow.projects.run`), children of the
pipeline's run, chained as MLflow's multistep example chains them: by run IDs and artifacts. The
collect run logs its dataset (artifact `dataset/<file>`); train, evaluate take it from there; the
version train registered (`models:/NAME/VERSION`) goes to evaluate and compile. A step whose entry
point already finished with the same parameters at the same commit is reused, not run again;
promote acts on the registry as it is now, so it runs again whenever train did.

    mlflow run . -e pipeline --env-manager local -P limit=1000
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
from mlflow.utils import mlflow_tags

from surrogate_ops.config import work_dir
from surrogate_ops.registry import tracking


@dataclass(frozen=True)
class PipelineConfig:
    limit: int = 3000  # blocks to collect
    mcpu: str = "haswell"
    preset: str = "tiny"
    epochs: int = 3
    max_minutes: float = 1.0
    train_limit: int = 0  # 0: every training block
    register: str = "llvm-mca-haswell"
    platform: str = "x86"


@dataclass(frozen=True)
class PipelineResult:
    runs: dict[str, str]  # step -> its run's ID
    reused: tuple[str, ...]  # the steps an earlier run answered
    dataset_uri: str
    model_uri: str


def pipeline(config: PipelineConfig, project: str = ".") -> PipelineResult:
    """Run (or reuse) every step; record each step's run and the URIs passed along as tags of the
    pipeline's own run."""
    commit = _own_commit()
    runs: dict[str, str] = {}
    reused: list[str] = []

    def step(entry_point: str, parameters: dict, reuse: bool = True) -> mlflow.entities.Run:
        parameters = {k: str(v) for k, v in parameters.items()}
        run = _already_ran(entry_point, parameters, commit) if reuse else None
        if run is not None:
            reused.append(entry_point)
            click.echo(f"== {entry_point}: reusing finished run {run.info.run_id}", err=True)
        else:
            click.echo(f"== {entry_point}: {parameters}", err=True)
            submitted = mlflow.projects.run(project, entry_point, parameters=parameters, env_manager="local",
                                            synchronous=True)
            run = tracking.client().get_run(submitted.run_id)
        runs[entry_point] = run.info.run_id
        mlflow.set_tag(f"step_{entry_point}", run.info.run_id)
        return run

    collected = step("collect", {"limit": config.limit, "mcpu": config.mcpu,
                                 "out": f"datasets/pipeline-{config.mcpu}-{config.limit}.parquet"})
    dataset_uri, data = _dataset(collected)
    trained = step("train", {"data": data, "preset": config.preset, "mcpu": config.mcpu, "epochs": config.epochs,
                             "max_minutes": config.max_minutes, "train_limit": config.train_limit,
                             "register": config.register})
    model_uri = _registered(trained.info.run_id)
    step("evaluate", {"model": model_uri, "data": data})
    step("promote", {"name": config.register}, reuse="train" in reused)
    step("compile", {"model": model_uri, "platform": config.platform, "out": "builds"})
    mlflow.set_tags({"dataset_uri": dataset_uri, "model_uri": model_uri})
    return PipelineResult(runs, tuple(reused), dataset_uri, model_uri)


def _own_commit() -> str | None:
    run_id = tracking.project_run()
    return tracking.client().get_run(run_id).data.tags.get(mlflow_tags.MLFLOW_GIT_COMMIT) if run_id else None


def _already_ran(entry_point: str, parameters: dict[str, str], commit: str | None) -> mlflow.entities.Run | None:
    """The newest finished run of `entry_point` in this experiment with these parameters (as the
    entry point logged them) at this commit, as MLflow's multistep example finds it."""
    experiment = mlflow.active_run().info.experiment_id
    found = tracking.client().search_runs(
        [experiment], filter_string=f"tags.`{mlflow_tags.MLFLOW_PROJECT_ENTRY_POINT}` = '{entry_point}' "
                                    "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    for run in found:
        if all(run.data.params.get(k) == v for k, v in parameters.items()) and \
                run.data.tags.get(mlflow_tags.MLFLOW_GIT_COMMIT) == commit:
            return run
    return None


def _dataset(collected: mlflow.entities.Run) -> tuple[str, str]:
    """The collect run's dataset artifact: its URI, and a local copy under the work directory (what
    train and evaluate read; a local artifact store's file is used in place)."""
    client = tracking.client()
    files = [f.path for f in client.list_artifacts(collected.info.run_id, tracking.DATASET)]
    if len(files) != 1:
        raise click.ClickException(f"collect run {collected.info.run_id} logged {len(files)} datasets, not one")
    uri = f"{collected.info.artifact_uri}/{files[0]}"
    target = work_dir() / "datasets" / "runs" / collected.info.run_id
    local = target / Path(files[0]).name
    if not local.is_file():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
    return uri, str(local)


def _registered(run_id: str) -> str:
    """The models:/NAME/VERSION a train run registered."""
    versions = tracking.client().search_model_versions(f"run_id='{run_id}'")
    if not versions:
        raise click.ClickException(f"train run {run_id} registered no model version")
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{newest.name}/{newest.version}"


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=PipelineConfig.limit, show_default=True)
@click.option("--mcpu", default=PipelineConfig.mcpu, show_default=True)
@click.option("--preset", default=PipelineConfig.preset, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=PipelineConfig.epochs, show_default=True)
@click.option("--max-minutes", type=float, default=PipelineConfig.max_minutes, show_default=True)
@click.option("--train-limit", type=click.IntRange(min=0), default=PipelineConfig.train_limit, show_default=True)
@click.option("--register", default=PipelineConfig.register, show_default=True)
@click.option("--platform", default=PipelineConfig.platform, show_default=True)
def main(**options) -> None:
    """The pipeline, in the run `mlflow run . -e pipeline` opened for it."""
    with tracking.start_run():
        result = pipeline(PipelineConfig(**options))
    click.echo(f"pipeline: dataset {result.dataset_uri}, model {result.model_uri}; runs "
               + ", ".join(f"{k} {v}" + (" (reused)" if k in result.reused else "") for k, v in result.runs.items()))


if __name__ == "__main__":
    main()
