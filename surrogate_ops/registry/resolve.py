"""Which surrogate to use: the one resolver that the CLI, the service, the pyfunc and Python callers share.

`open(model, mcpu)` takes a model directory, a registry URI (`models:/NAME@ALIAS`,
`models:/NAME/VERSION`) or nothing (the champion of `mcpu`'s surrogate) and returns the model
directory with the registered name and version it came from. A default, or an alias whose last
resolution is still good (`pins`), is answered without importing MLflow, so `predict` starts fast;
everything else asks the registry (`versions`), which downloads the version once and caches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from surrogate_ops import config
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import pins
from surrogate_ops.runtime.modeldir import ModelDir, bundled_names


@dataclass(frozen=True)
class Opened:
    """A resolved surrogate: its model directory and, where it came from the registry, its name and version."""

    model: ModelDir
    uri: str  # what was asked for, or the default it stood for
    name: str | None = None
    version: str | None = None

    @property
    def stamp(self) -> str:
        """NAME/VERSION of a registered model; else the version a copied directory records, else its path."""
        return f"{self.name}/{self.version}" if self.version else self.model.version_stamp or self.uri


def open(model: str | Path | None = None, mcpu: str | None = None, tracking_uri: str | None = None, *,  # noqa: A001
         target: str = "mca", registered: bool = False, pinned: bool = False) -> Opened:
    """The surrogate `model` names (a directory or a registry URI), or with none the champion of `mcpu`'s
    surrogate of `target` (llvm-mca-<mcpu>, or llvm-mca-<mcpu>-measured; haswell's when `mcpu` is None).

    `registered`: refuse a directory (compile, finetune: they log to the version's run). `pinned`: a
    `models:/NAME@ALIAS` whose last resolution still holds is answered from the local cache without
    MLflow (`predict`, `coverage`: a quick start). `tracking_uri` points MLflow at a store first; without
    it the store already configured is asked (the environment's where none is). A CPU with no
    surrogate at all is a one-line error that says what to do."""
    uri = str(model) if model else config.model_uri(mcpu or config.DEFAULT_MCPU, target)
    if not uri.startswith("models:/"):  # a directory, or a bundled surrogate's bare name (`ModelDir.open`)
        if registered:
            raise SurrogateOpsError(f"{uri} is not a registered model: this needs models:/NAME@ALIAS or "
                                    f"models:/NAME/VERSION")
        return Opened(ModelDir.open(uri), uri)
    if pinned and not registered and (local := pins.resolve(uri, tracking_uri)) is not None:
        return Opened(ModelDir.open(local), uri)
    from surrogate_ops.registry import tracking, versions  # MLflow: only when the answer is not known locally

    if tracking_uri:
        tracking.configure(tracking_uri)
    else:
        tracking.current()
    name = config.model_name(mcpu or config.DEFAULT_MCPU, target)
    if model is None and name not in versions.bundled_names() and not versions.has_versions(name):
        if target == "measured":
            raise SurrogateOpsError(
                f"no surrogate of measured throughput for -mcpu={mcpu} in the registry: fine-tune one on "
                f"measurements (surrogate-ops measure; surrogate-ops finetune --from {config.model_uri(mcpu)} "
                f"--data MEASURED.csv --mcpu {mcpu} --register {name})")
        raise SurrogateOpsError(
            f"no surrogate for -mcpu={mcpu}: surrogate-ops bundles {', '.join(versions.bundled_names())}; "
            f"answer with --program llvm-mca, or train one and register it as {name}")
    name, version = versions.resolve_version(uri)
    opened = Opened(versions.download(name, version), uri, name, version)
    versions.pin(uri, version)
    return opened


def served(models: Sequence[str] | str | None, carried: Path | None = None) -> list[str]:
    """The models a service serves, one per CPU: those given (a list, or a comma-separated string), else the
    model directories a bento carries in `carried`, else the champion of every bundled CPU's surrogate."""
    given = [u.strip() for u in (models.split(",") if isinstance(models, str) else models or ()) if u.strip()]
    if given:
        return given
    if carried is not None and carried.is_dir():
        found = sorted(str(p) for p in carried.glob("*") if ModelDir.holds_one(p))
        if found:
            return found
    return [config.champion_uri(name) for name in bundled_names()]
