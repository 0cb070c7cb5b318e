"""Registered surrogates in the MLflow model registry, and the champion/challenger workflow.

A trained surrogate is logged as a pyfunc model (see `mlflow_model`) and registered as a new
version of a named model, tagged with its program, program version, mcpu, architecture, dataset
digest and metrics. A new version gets the alias `challenger`; the first version of a name also
becomes `champion`. `promote()` evaluates challenger and champion on the same held-out blocks and
moves `champion` only when the challenger is no worse in error, recording the decision and both
figures on the challenger's version.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from surrogate_ops.config import work_dir
from surrogate_ops.errors import SurrogateOpsError

CHAMPION, CHALLENGER = "champion", "challenger"
PACKAGE_DIR = Path(__file__).resolve().parent
PYFUNC_CODE = PACKAGE_DIR / "mlflow_model.py"
REQUIREMENTS = ["numpy", "onnxruntime"]


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def log_model(model_dir: Path, example: list[str], name: str | None = None, tags: dict | None = None) -> Registered | None:
    """Log the model directory as this run's pyfunc model; with `name`, register it as a new version
    (alias challenger, and champion when it is the first)."""
    with tempfile.TemporaryDirectory() as tmp:
        # the package travels with the model, without the bundled weights and caches
        code = Path(tmp) / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("pretrained", "__pycache__"))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"model_dir": str(model_dir)},
            code_paths=[str(code)], input_example=example, pip_requirements=REQUIREMENTS,
            registered_model_name=name,
        )
    if name is None:
        return None
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    aliases = [CHALLENGER]
    client.set_registered_model_alias(name, CHALLENGER, version)
    if _alias_version(client, name, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promotion", "first version of the model: champion")
        aliases.append(CHAMPION)
    return Registered(name, version, mlflow.active_run().info.run_id, tuple(aliases))


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def resolve_version(uri: str) -> tuple[str, str]:
    """(name, version) of a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI."""
    if not uri.startswith("models:/"):
        raise SurrogateOpsError(f"{uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
    rest = uri.removeprefix("models:/")
    client = MlflowClient()
    if rest.split("@")[0].split("/")[0] == DEFAULT_NAME:
        ensure_default()  # the bundled surrogate answers for the default name on a fresh registry
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, version = rest.rsplit("/", 1)
        return name, str(client.get_model_version(name, version).version)
    except (MlflowException, ValueError):
        raise SurrogateOpsError(f"no model version at {uri} in the registry at {mlflow.get_tracking_uri()}") from None


def model_dir(uri: str) -> Path:
    """A local surrogate model directory for a registry URI (downloaded once, then cached, with the
    version's TVM build for this host when it has one) or a directory path."""
    path = Path(uri)
    if (path / "surrogate.json").is_file():
        return path
    name, version = resolve_version(uri)
    store = hashlib.sha1(mlflow.get_registry_uri().encode()).hexdigest()[:10]  # one cache per registry
    cache = work_dir() / "cache" / "models" / store / name / version
    if not (cache / "surrogate.json").is_file():
        tmp = cache.with_name(f".{version}.{time.time_ns()}")
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        # the model directory is the pyfunc's one artifact: <download>/artifacts/<dir>/surrogate.json
        found = next(iter((tmp / "artifacts").glob("*/surrogate.json")), None)
        if found is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SurrogateOpsError(f"models:/{name}/{version} is not a surrogate-ops model (no surrogate.json)")
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        found.parent.rename(cache)
        shutil.rmtree(tmp, ignore_errors=True)
    _fetch_host_build(name, version, cache)
    return cache


def _fetch_host_build(name: str, version: str, cache: Path) -> None:
    from surrogate_ops.compile import HOST_TARGET

    if (cache / "builds" / f"{HOST_TARGET}.so").is_file():
        return
    if f"build_{HOST_TARGET}" not in version_tags(name, version):
        return
    (cache / "builds").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        mlflow.artifacts.download_artifacts(run_id=run_of(name, version), artifact_path=f"builds/{HOST_TARGET}",
                                            dst_path=tmp)
        for item in Path(tmp).rglob(f"{HOST_TARGET}*"):
            if item.is_file() and item.parent.name != "tuning-database":
                item.replace(cache / "builds" / item.name)


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(name, version).tags)


@dataclass(frozen=True)
class Decision:
    name: str
    challenger: str
    champion: str | None
    promoted: bool
    challenger_mape: float
    champion_mape: float | None
    challenger_speed: float
    champion_speed: float | None
    metric: str
    blocks: int

    def __str__(self) -> str:
        if self.champion is None:
            return f"{self.name} v{self.challenger} is the first version: champion"
        verdict = "promoted to champion" if self.promoted else f"not promoted; champion stays v{self.champion}"
        return (f"{self.name}: challenger v{self.challenger} {self.metric} {100 * self.challenger_mape:.2f}% "
                f"({self.challenger_speed:,.0f} blocks/s) vs champion v{self.champion} {100 * self.champion_mape:.2f}% "
                f"({self.champion_speed:,.0f} blocks/s) on {self.blocks:,} held-out blocks: {verdict}")


def promote(name: str, data: str | None = None, split: str = "test") -> Decision:
    """Move `champion` to the challenger when it is no worse in error on the same held-out blocks."""
    from surrogate_ops import datasets
    from surrogate_ops.evaluate import evaluate
    from surrogate_ops.inference import Predictor

    client = MlflowClient()
    challenger = _alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise SurrogateOpsError(f"registered model {name!r} has no {CHALLENGER} version to promote")
    champion = _alias_version(client, name, CHAMPION)
    if champion is None or champion == challenger:
        client.set_registered_model_alias(name, CHAMPION, challenger)
        client.set_model_version_tag(name, challenger, "promotion", "first version of the model: champion")
        return Decision(name, challenger, None, True, float("nan"), None, float("nan"), None, "", 0)
    tags = version_tags(name, challenger)
    data = data or tags.get("dataset_path")
    if not data:
        raise SurrogateOpsError("no held-out data: pass --data (the challenger records no dataset)")
    frame = datasets.load(data)
    mcpu, target = tags.get("mcpu", "haswell"), tags.get("target", "mca")
    metric = "mape_vs_mca" if target == "mca" else "mape_vs_measured"
    results = {}
    for version in (challenger, champion):
        predictor = Predictor(model_dir(f"models:/{name}/{version}"))
        results[version] = evaluate(predictor, frame, mcpu, split).metrics
        if metric not in results[version]:
            raise SurrogateOpsError(f"{data} has no {target} figures for -mcpu={mcpu} to compare on")
    new, old = results[challenger], results[champion]
    promoted = new[metric] <= old[metric]
    decision = Decision(name, challenger, champion, promoted, new[metric], old[metric], new["blocks_per_s"],
                        old["blocks_per_s"], metric, int(new["blocks"]))
    for key, value in {"promotion": "promoted" if promoted else "rejected", "promotion_metric": metric,
                       "promotion_data": data, "promotion_challenger_error": f"{new[metric]:.6g}",
                       "promotion_champion_error": f"{old[metric]:.6g}", "promotion_champion_version": champion,
                       "promotion_challenger_blocks_per_s": f"{new['blocks_per_s']:.0f}",
                       "promotion_champion_blocks_per_s": f"{old['blocks_per_s']:.0f}"}.items():
        client.set_model_version_tag(name, challenger, key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger)
    return decision


DEFAULT_NAME = "llvm-mca-haswell"
BUNDLED = PACKAGE_DIR / "pretrained" / DEFAULT_NAME


def ensure_default(name: str = DEFAULT_NAME) -> Registered | None:
    """Register the bundled pretrained surrogate as version 1 (champion) of `name` when the registry
    has no version of it; returns what was registered, or None when nothing was needed."""
    import json

    client = MlflowClient()
    try:
        if client.search_model_versions(f"name='{name}'", max_results=1):
            return None
    except MlflowException:
        pass
    if not (BUNDLED / "surrogate.json").is_file():
        raise SurrogateOpsError(f"the bundled model is missing from {BUNDLED}; reinstall surrogate-ops")
    meta = json.loads((BUNDLED / "surrogate.json").read_text())
    metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    tags = {"program": meta["program"], "program_version": meta["program_version"], "mcpu": meta["mcpu"],
            "arch": meta["arch"], "target": meta["target"], "dataset_digest": meta.get("dataset_digest", ""),
            "source": "bundled with surrogate-ops", **{k: f"{v:.6g}" for k, v in metrics.items()}}
    with mlflow.start_run(run_name=f"bundled-{name}"):
        mlflow.set_tags({"source": "bundled with surrogate-ops", "arch": meta["arch"], "mcpu": meta["mcpu"]})
        mlflow.log_params({"arch": meta["arch"], **{f"size_{k}": v for k, v in meta["config"].items()}})
        if metrics:
            mlflow.log_metrics(metrics)
        example = ["movq (%rdi), %rax\naddq $1, %rax\nmovq %rax, 8(%rdi)"]
        return log_model(BUNDLED, example=example, name=name, tags=tags)


def run_of(name: str, version: str) -> str:
    return MlflowClient().get_model_version(name, version).run_id


def attach_build(name: str, version: str, out_dir: Path, build) -> None:
    """Log a TVM build (library and figures) to the version's run and tag the version with it."""
    client = MlflowClient()
    run_id = run_of(name, version)
    from surrogate_ops.compile import build_files

    for path in build_files(out_dir, build.target):
        client.log_artifact(run_id, str(path), artifact_path=f"builds/{build.target}")
    if (out_dir / f"{build.target}-tuned.db").is_dir():
        client.log_artifacts(run_id, str(out_dir / f"{build.target}-tuned.db"),
                             artifact_path=f"builds/{build.target}/tuning-database")
    tags = {f"build_{build.target}": f"builds/{build.target}/{build.target}.so",
            f"build_{build.target}_target": str(build.target_spec), f"build_{build.target}_tvm": build.tvm_version,
            f"build_{build.target}_tuned": build.tuned}
    if build.max_rel_diff is not None:
        tags.update({f"build_{build.target}_max_rel_diff": f"{build.max_rel_diff:.3g}",
                     f"build_{build.target}_blocks_per_s": f"{build.blocks_per_s:.0f}",
                     f"build_{build.target}_onnxruntime_blocks_per_s": f"{build.onnxruntime_blocks_per_s:.0f}"})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
