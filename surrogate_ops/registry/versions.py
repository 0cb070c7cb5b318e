"""Registered surrogates in the MLflow model registry: log, register, resolve, download.

A trained surrogate is logged as a pyfunc model (see `mlflow_model`) whose one artifact is its
model directory, and registered as a new version of a named model, tagged with its program,
program version, mcpu, architecture, dataset digest and metrics. A new version gets the alias
`challenger`; the first version of a name also becomes `champion` (moving it later is
`promotion`'s). A name the package bundles a surrogate for (`bundled_names`: llvm-mca-haswell,
-skylake, ...) always starts with the bundled one: whatever touches such a name first (a
registration, a resolution, a promotion) registers the bundled surrogate as version 1, champion, so
a user's model enters as version 2, challenger, and serves only once `promote` moves it.

Registrations may run side by side on one registry: MLflow sets aliases one call at a time, so
after each write the aliases are read back and settled to what the rule says (`challenger` on the
newest version, `champion` on the oldest when none is set); whichever writer writes last, it reads
and corrects after writing, so the registry ends as the rule says and each writer reports the
aliases its version really holds. Compiled builds are logged to the version's run under
`builds/<platform>` and fetched with the model for the host's platform. This module speaks to
MLflow only.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from surrogate_ops.config import DEFAULT_MODEL, PRETRAINED
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import pins, tracking
from surrogate_ops.runtime import modeldir
from surrogate_ops.runtime.engines import HOST_PLATFORM
from surrogate_ops.runtime.modeldir import Builds, ModelDir, adopt_bundled_parts

CHAMPION, CHALLENGER = "champion", "challenger"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PYFUNC_CODE = PACKAGE_DIR / "serving" / "pyfunc.py"
REQUIREMENTS = ["numpy", "onnxruntime"]
BUNDLED = PRETRAINED / DEFAULT_MODEL


def bundled_names() -> list[str]:
    """The registered names the package bundles a surrogate for (llvm-mca-haswell first)."""
    return modeldir.bundled_names()


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def log_model(model_dir: ModelDir, example: list[str], name: str | None = None,
              tags: dict | None = None) -> Registered | None:
    """Log the model directory as this run's pyfunc model; with `name`, register it as a new version
    (alias challenger, and champion when it is the first). A bundled name gets its bundled surrogate
    first (see `ensure_bundled`), so this one is never the first."""
    if name is not None:
        ensure_bundled(name)
    return _log_model(model_dir, example, name, tags)


def _log_model(model_dir: ModelDir, example: list[str], name: str | None, tags: dict | None) -> Registered | None:
    with tempfile.TemporaryDirectory() as tmp:
        # the package travels with the model, without the bundled weights and caches
        code = Path(tmp) / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("pretrained", "__pycache__"))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_CODE), artifacts={"model_dir": str(model_dir.path)},
            code_paths=[str(code)], input_example=example, pip_requirements=REQUIREMENTS,
            registered_model_name=name,
        )
    if name is None:
        return None
    version = str(info.registered_model_version)
    set_version_tags(name, version, tags or {})
    settle_aliases(name)
    aliases = tuple(alias for alias in (CHALLENGER, CHAMPION) if alias_version(name, alias) == version)
    if CHAMPION in aliases and versions(name)[0] == int(version):
        set_version_tags(name, version, {"promotion": "first version of the model: champion"})
    return Registered(name, version, mlflow.active_run().info.run_id, aliases)


def versions(name: str) -> list[int]:
    """The version numbers of a registered model, oldest first."""
    return sorted(int(v.version) for v in tracking.client().search_model_versions(f"name='{name}'"))


def settle_aliases(name: str, attempts: int = 20) -> None:
    """`challenger` on the newest version; `champion`, when none is set, on the oldest. Written, then
    read back, until the registry holds that (another writer may have written in between)."""
    for _ in range(attempts):
        numbers = versions(name)
        now = {alias: alias_version(name, alias) for alias in (CHALLENGER, CHAMPION)}
        want = {CHALLENGER: str(numbers[-1]), CHAMPION: now[CHAMPION] or str(numbers[0])}
        stale = {alias: v for alias, v in want.items() if now[alias] != v}
        if not stale:
            return
        for alias, v in stale.items():
            try:
                set_alias(name, alias, v)
            except MlflowException:  # a store without upserts (SQLite) refuses one of two writes at once: read again
                time.sleep(0.05)
    raise SurrogateOpsError(f"the aliases of {name} kept changing under other writers; read them with the MLflow UI")


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(tracking.client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_artifact(name: str, run_id: str, path: str, tags: dict) -> str:
    """A version of registered model `name` whose source is a run's artifact that is not an MLflow
    model (a learned parameter table), with `tags`; its version number."""
    client = tracking.client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    version = client.create_model_version(name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    return str(version.version)


def set_alias(name: str, alias: str, version: str) -> None:
    tracking.client().set_registered_model_alias(name, alias, version)


def describe(name: str, version: str, description: str) -> None:
    """The version's one-line description (what the MLflow UI shows beside it)."""
    tracking.client().update_model_version(name, version, description=description)


def set_version_tags(name: str, version: str, tags: dict) -> None:
    client = tracking.client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(tracking.client().get_model_version(name, version).tags)


def run_of(name: str, version: str) -> str:
    return tracking.client().get_model_version(name, version).run_id


def resolve_version(uri: str) -> tuple[str, str]:
    """(name, version) of a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI."""
    if not uri.startswith("models:/"):
        raise SurrogateOpsError(f"{uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
    rest = uri.removeprefix("models:/")
    client = tracking.client()
    name = rest.split("@")[0].split("/")[0]
    ensure_bundled(name)  # a bundled surrogate answers for its name on a fresh registry
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, version = rest.rsplit("/", 1)
        return name, str(client.get_model_version(name, version).version)
    except (MlflowException, ValueError):
        raise SurrogateOpsError(f"no model version at {uri} in the registry at {mlflow.get_tracking_uri()}") from None


def download(name: str, version: str) -> ModelDir:
    """The model directory of a registered version, downloaded once and then cached, with the version's
    build for this host's platform when it has one. Callers resolve through `registry.open`."""
    cache = pins.cache_root(mlflow.get_registry_uri()) / name / version
    if not ModelDir.holds_one(cache):
        tmp = cache.with_name(f".{version}.{time.time_ns()}")
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        # the model directory is the pyfunc's one artifact: <download>/artifacts/<dir>/surrogate.json
        found = next((p for p in (tmp / "artifacts").glob("*") if ModelDir.holds_one(p)), None)
        if found is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SurrogateOpsError(f"models:/{name}/{version} is not a surrogate-ops model (no surrogate.json)")
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        found.rename(cache)
        shutil.rmtree(tmp, ignore_errors=True)
    model = ModelDir.open(adopt_bundled_parts(cache))
    fetch_build(name, version, HOST_PLATFORM, model.builds)
    return model


def pin(uri: str, version: str) -> None:
    """Remember what a `models:/NAME@ALIAS` resolved to: its next resolution can skip MLflow while the
    store stays as it is (`pins`)."""
    if "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        pins.record(mlflow.get_registry_uri(), name, alias, version)


def attach_build(name: str, version: str, platform: str, files: list[Path], database: Path | None,
                 tags: dict) -> None:
    """Log a build's files (and its tuning database) to the version's run under `builds/<platform>`,
    and tag the version with `tags`."""
    client, run_id = tracking.client(), run_of(name, version)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=f"builds/{platform}")
    if database is not None and database.is_dir():
        client.log_artifacts(run_id, str(database), artifact_path=f"builds/{platform}/tuning-database")
    set_version_tags(name, version, {f"build_{platform}": f"builds/{platform}/{platform}.so", **tags})


def fetch_build(name: str, version: str, platform: str, into: Builds) -> None:
    """The version's build for `platform` (libraries and records, not the tuning database) into
    `into`, when the version has one and `into` does not yet."""
    if into.library(platform).is_file() or f"build_{platform}" not in version_tags(name, version):
        return
    into.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.folder) as tmp:
        mlflow.artifacts.download_artifacts(run_id=run_of(name, version), artifact_path=f"builds/{platform}",
                                            dst_path=tmp)
        for item in Path(tmp).rglob(f"{platform}*"):
            if item.is_file() and item.parent.name != "tuning-database":
                item.replace(into.folder / item.name)


def has_versions(name: str) -> bool:
    """Whether the registry holds any version of `name`."""
    try:
        return bool(tracking.client().search_model_versions(f"name='{name}'", max_results=1))
    except MlflowException:
        return False


def ensure_bundled(name: str) -> Registered | None:
    """For a name the package bundles a surrogate for, that surrogate as its version 1 (champion)
    when the registry has none yet; other names are left alone. What was registered, or None."""
    if name not in bundled_names():
        return None
    return ensure_default(name)


def ensure_default(name: str = DEFAULT_MODEL, bundle: str | None = None) -> Registered | None:
    """Register a bundled pretrained surrogate (`bundle`, default: the one of that name) as version 1
    (champion) of `name` when the registry has no version of it; returns what was registered, or
    None when nothing was needed. Inside a run (a training that registers under the name, a
    promotion, `mlflow run`'s project run) the bundled surrogate's run is a child of it."""
    if has_versions(name):
        return None
    folder = PRETRAINED / (bundle or name)
    if not ModelDir.holds_one(folder):
        raise SurrogateOpsError(f"no bundled model at {folder}; the package bundles {', '.join(bundled_names())}")
    bundled = ModelDir.open(folder)
    meta = bundled.meta
    metrics = {k: float(v) for k, v in meta.get("metrics", {}).items()}
    tags = {"program": meta["program"], "program_version": meta["program_version"], "mcpu": meta["mcpu"],
            "arch": meta["arch"], "target": meta["target"], "dataset_digest": meta.get("dataset_digest", ""),
            "source": "bundled with surrogate-ops", **{k: f"{v:.6g}" for k, v in metrics.items()}}
    with tracking.start_run(run_name=f"bundled-{name}", nested=mlflow.active_run() is not None):
        mlflow.set_tags({"source": "bundled with surrogate-ops", "arch": meta["arch"], "mcpu": meta["mcpu"]})
        mlflow.log_params({"arch": meta["arch"], **{f"size_{k}": v for k, v in meta["config"].items()}})
        if metrics:
            mlflow.log_metrics(metrics)
        example = ["movq (%rdi), %rax\naddq $1, %rax\nmovq %rax, 8(%rdi)"]
        registered = _log_model(bundled, example, name, tags)
    error = f"test MAPE vs llvm-mca {100 * metrics['test_mape_vs_mca']:.2f}%" if "test_mape_vs_mca" in metrics else ""
    describe(name, registered.version, f"bundled with surrogate-ops: {meta['arch']} surrogate of llvm-mca "
             f"-mcpu={meta['mcpu']}{', ' + error if error else ''}; the name's first version, champion")
    return registered
