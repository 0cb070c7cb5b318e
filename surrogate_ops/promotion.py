"""Promotion: move a registered model's `champion` alias to its `challenger` when it earns it.

`promote(name)` evaluates challenger and champion on the same held-out blocks and moves `champion`
only when the challenger is no worse in error, recording the decision and both figures (error and
speed) on the challenger's version. A model's first version is champion from the start.
"""

from __future__ import annotations

from dataclasses import dataclass

from surrogate_ops import datasets, registry
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.evaluate import evaluate
from surrogate_ops.inference import Predictor
from surrogate_ops.registry import CHALLENGER, CHAMPION


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

    def tags(self, data: str) -> dict[str, str]:
        """What the challenger's version records of the decision."""
        return {"promotion": "promoted" if self.promoted else "rejected", "promotion_metric": self.metric,
                "promotion_data": data, "promotion_challenger_error": f"{self.challenger_mape:.6g}",
                "promotion_champion_error": f"{self.champion_mape:.6g}", "promotion_champion_version": self.champion,
                "promotion_challenger_blocks_per_s": f"{self.challenger_speed:.0f}",
                "promotion_champion_blocks_per_s": f"{self.champion_speed:.0f}"}


def promote(name: str, data: str | None = None, split: str = "test") -> Decision:
    """Move `champion` to the challenger when it is no worse in error on the same held-out blocks."""
    challenger = registry.alias_version(name, CHALLENGER)
    if challenger is None:
        raise SurrogateOpsError(f"registered model {name!r} has no {CHALLENGER} version to promote")
    champion = registry.alias_version(name, CHAMPION)
    if champion is None or champion == challenger:
        registry.set_alias(name, CHAMPION, challenger)
        _check_alias(name, CHAMPION, challenger)
        registry.set_version_tags(name, challenger, {"promotion": "first version of the model: champion"})
        return Decision(name, challenger, None, True, float("nan"), None, float("nan"), None, "", 0)
    tags = registry.version_tags(name, challenger)
    data = data or tags.get("dataset_path")
    if not data:
        raise SurrogateOpsError("no held-out data: pass --data (the challenger records no dataset)")
    frame = datasets.load(data)
    mcpu, target = tags.get("mcpu", "haswell"), tags.get("target", "mca")
    metric = "mape_vs_mca" if target == "mca" else "mape_vs_measured"
    results = {}
    for version in (challenger, champion):
        predictor = Predictor(registry.model_dir(f"models:/{name}/{version}"))
        results[version] = evaluate(predictor, frame, mcpu, split).metrics
        if metric not in results[version]:
            raise SurrogateOpsError(f"{data} has no {target} figures for -mcpu={mcpu} to compare on")
    new, old = results[challenger], results[champion]
    decision = Decision(name, challenger, champion, new[metric] <= old[metric], new[metric], old[metric],
                        new["blocks_per_s"], old["blocks_per_s"], metric, int(new["blocks"]))
    registry.set_version_tags(name, challenger, decision.tags(data))
    if decision.promoted:
        registry.set_alias(name, CHAMPION, challenger)
        _check_alias(name, CHAMPION, challenger)
    return decision


def _check_alias(name: str, alias: str, version: str) -> None:
    """Read an alias back after moving it: another writer may have moved it meanwhile."""
    now = registry.alias_version(name, alias)
    if now != version:
        raise SurrogateOpsError(f"{name}@{alias} is v{now}, not v{version}: another run moved it while this one "
                                "promoted; run promote again")
