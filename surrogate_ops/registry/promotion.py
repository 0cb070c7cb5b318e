"""Promotion: move a registered model's `champion` alias to its `challenger` when it earns it.

`promote(name)` scores challenger and champion on the same held-out blocks (those both answered
themselves, `evaluate.compare`) and moves `champion` only when the challenger is no worse in error
and serves everything the champion serves: the same mcpu and target, an error head (`max_error`,
`estimated_error`) where the champion has one, the llvm-mca parameters the champion takes. A
rejected challenger stays challenger; `force` moves it anyway, `check` only decides.

The decision goes to MLflow three ways: an MLflow run of its own (both figures as metrics, the
dataset digest as a parameter, plots/comparison.png), a one-line description on the challenger's
version, and the challenger's `promotion*` tags. A bundled name starts with its bundled surrogate
(`versions.ensure_bundled`); another name's first version is champion from the start.

Exit codes of `surrogate-ops promote`: 0 promoted (or already champion), 1 rejected (with `check`:
would be rejected), 2 an error (no challenger, unreadable data).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from surrogate_ops import registry
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import tracking, versions
from surrogate_ops.registry.evaluate import compare, dataset_input, load_data
from surrogate_ops.registry.versions import CHALLENGER, CHAMPION
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir

EXIT_PROMOTED, EXIT_REJECTED = 0, 1


@dataclass(frozen=True)
class Decision:
    name: str
    challenger: str
    champion: str | None
    promoted: bool  # with `check`: would be promoted
    challenger_mape: float
    champion_mape: float | None
    challenger_speed: float
    champion_speed: float | None
    metric: str
    blocks: int
    lacking: tuple[str, ...] = ()  # what the challenger lacks of what the champion serves
    forced: bool = False
    check: bool = False
    answered: dict[str, float] = field(default_factory=dict)  # role -> share of the split it answered itself
    run_id: str | None = None

    @property
    def no_worse(self) -> bool:
        return self.champion_mape is not None and self.challenger_mape <= self.champion_mape

    def verdict(self) -> str:
        if self.check:
            return f"check only, no alias moved: {'would be promoted' if self.promoted else 'would not be promoted'}"
        if self.forced and (self.lacking or not self.no_worse):
            return "promoted to champion by --force"
        return "promoted to champion" if self.promoted else f"not promoted; champion stays v{self.champion}"

    def figures(self) -> str:
        share = {role: f", answered {100 * s:.1f}%" for role, s in self.answered.items()}
        return (f"{self.metric} {100 * self.challenger_mape:.2f}% ({self.challenger_speed:,.0f} blocks/s"
                f"{share.get(CHALLENGER, '')}) vs champion v{self.champion} {100 * self.champion_mape:.2f}% "
                f"({self.champion_speed:,.0f} blocks/s{share.get(CHAMPION, '')}) on the same {self.blocks:,} "
                "held-out blocks")

    def reasons(self) -> str:
        """Why a challenger is (or, with --force, was) not fit to be champion; empty when it is."""
        out = [f"it lacks {', '.join(self.lacking)}"] if self.lacking else []
        if not self.no_worse:
            out.append(f"its {self.metric} is worse")
        return "; ".join(out)

    def __str__(self) -> str:
        if self.champion is None:
            return f"{self.name} v{self.challenger} is the first version: champion"
        why = self.reasons()
        tail = f" ({why}{'' if self.forced or self.check or not self.lacking else '; --force promotes it anyway'})" \
            if why else ""
        return f"{self.name}: challenger v{self.challenger} {self.figures()}: {self.verdict()}{tail}"

    def description(self, data: str, digest: str) -> str:
        """The challenger version's one-line record of the decision."""
        why = self.reasons()
        return (f"{self.verdict()}{' (' + why + ')' if why else ''}: {self.figures()} of {Path(data).name} "
                f"(dataset digest {digest}; promote run {self.run_id})")

    def tags(self, data: str) -> dict[str, str]:
        """What the challenger's version records of the decision."""
        return {"promotion": "promoted" if self.promoted else "rejected", "promotion_metric": self.metric,
                "promotion_data": data, "promotion_challenger_error": f"{self.challenger_mape:.6g}",
                "promotion_champion_error": f"{self.champion_mape:.6g}", "promotion_champion_version": self.champion,
                "promotion_challenger_blocks_per_s": f"{self.challenger_speed:.0f}",
                "promotion_champion_blocks_per_s": f"{self.champion_speed:.0f}",
                "promotion_lacking": "; ".join(self.lacking), "promotion_forced": str(self.forced).lower(),
                "promotion_run_id": self.run_id or ""}


def lacking(champion: ModelDir, challenger: ModelDir) -> tuple[str, ...]:
    """What the champion serves that the challenger would not: requests that work today and would
    fail (or change meaning) once the challenger answers them."""
    out = []
    if champion.mcpu != challenger.mcpu:
        out.append(f"the champion's mcpu ({challenger.mcpu} where the champion is {champion.mcpu})")
    target, new_target = champion.meta.get("target", "mca"), challenger.meta.get("target", "mca")
    if target != new_target:
        out.append(f"the champion's target ({new_target} where the champion answers {target})")
    if champion.arch == "confident" and challenger.arch != "confident":
        out.append("an error head (the champion estimates its error: max_error requests would get 422, "
                   "answers would lose estimated_error; fit one with `surrogate-ops confidence`)")
    names = set(champion.program_parameters.get("names", [])) - set(challenger.program_parameters.get("names", []))
    if names:
        out.append(f"llvm-mca parameters the champion takes ({', '.join(sorted(names))})")
    return tuple(out)


def promote(name: str, data: str | None = None, split: str = "test", force: bool = False,
            check: bool = False, progress: bool = True) -> Decision:
    """Move `champion` to the challenger when it serves what the champion serves and is no worse in
    error on the same held-out blocks (`force`: whatever it scores; `check`: decide, move nothing,
    record nothing on the version). Logged as an MLflow run of its own (the project's under
    `mlflow run`)."""
    with tracking.start_run(run_name=f"promote {name}") as run:
        versions.ensure_bundled(name)  # inside the run: a bundled name registered now is its child
        challenger = versions.alias_version(name, CHALLENGER)
        if challenger is None:
            raise SurrogateOpsError(f"registered model {name!r} has no {CHALLENGER} version to promote")
        champion = versions.alias_version(name, CHAMPION)
        # parameter names apart from the MLproject entry point's, which `mlflow run` logs on this run as given
        mlflow.set_tags({"surrogate_ops.step": "promote", "force": str(force).lower(), "check": str(check).lower()})
        tracking.log_params({"model_name": name, "challenger_version": challenger, "champion_version": champion or ""})
        if champion is None or champion == challenger:
            decision = Decision(name, challenger, None, True, math.nan, None, math.nan, None, "", 0, check=check,
                                run_id=run.info.run_id)
            if not check:
                versions.set_alias(name, CHAMPION, challenger)
                _check_alias(name, CHAMPION, challenger)
                versions.set_version_tags(name, challenger, {"promotion": "first version of the model: champion"})
            mlflow.log_metric("promoted", 1)
            return decision
        decision, data, digest = _decide(name, challenger, champion, data, split, force, check, progress,
                                         run.info.run_id)
        if not check:
            versions.set_version_tags(name, challenger, decision.tags(data))
            versions.describe(name, challenger, decision.description(data, digest))
            if decision.promoted:
                versions.set_alias(name, CHAMPION, challenger)
                _check_alias(name, CHAMPION, challenger)
    return decision


def _decide(name: str, challenger: str, champion: str, data: str | None, split: str, force: bool, check: bool,
            progress: bool, run_id: str) -> tuple[Decision, str, str]:
    """Score both versions on the same blocks, log the figures and the plot to the active run."""
    tags = versions.version_tags(name, challenger)
    data = data or tags.get("dataset_path")
    if not data:
        raise SurrogateOpsError("no held-out data: pass --data (the challenger records no dataset)")
    models = {CHALLENGER: registry.open(f"models:/{name}/{challenger}").model,
              CHAMPION: registry.open(f"models:/{name}/{champion}").model}
    mcpu = models[CHALLENGER].mcpu or tags.get("mcpu", "haswell")
    target = models[CHALLENGER].meta.get("target", tags.get("target", "mca"))
    frame = load_data(data, mcpu, progress)
    result = compare({role: Predictor(model) for role, model in models.items()}, frame, mcpu, target, split)
    missing = lacking(models[CHAMPION], models[CHALLENGER])
    new, old = result.figures[CHALLENGER], result.figures[CHAMPION]
    no_worse = new["mape"] <= old["mape"]
    decision = Decision(name, challenger, champion, (no_worse and not missing) or force, new["mape"], old["mape"],
                        new["blocks_per_s"], old["blocks_per_s"], f"mape_vs_{target}", result.blocks, missing, force,
                        check, {role: result.figures[role]["answered_share"] for role in models}, run_id)
    dataset = dataset_input(frame, data)
    mlflow.log_input(dataset, context="promotion")
    tracking.log_params({"data_path": str(Path(data).resolve()), "split": split, "labels_mcpu": mcpu,
                       "metric": decision.metric, "dataset_digest": dataset.digest})
    mlflow.log_metrics({**result.metrics(), "promoted": int(decision.promoted), "no_worse": int(no_worse),
                        "lacking": len(missing)})
    mlflow.set_tag("decision", decision.verdict())
    with tempfile.TemporaryDirectory() as tmp:
        labels = {CHALLENGER: f"challenger v{challenger}", CHAMPION: f"champion v{champion}"}
        result.plot(Path(tmp) / "comparison.png", f"{name}: {split} split of {Path(data).name}", labels)
        mlflow.log_artifacts(tmp, artifact_path="plots")
    return decision, str(data), dataset.digest


def _check_alias(name: str, alias: str, version: str) -> None:
    """Read an alias back after moving it: another writer may have moved it meanwhile."""
    now = versions.alias_version(name, alias)
    if now != version:
        raise SurrogateOpsError(f"{name}@{alias} is v{now}, not v{version}: another run moved it while this one "
                                "promoted; run promote again")
