"""The surrogate-free baselines of `optimize` and `optimize-table`: OpenTuner and Optuna's TPE over the same
unit space as the surrogate's descent, a trial at a time, on the same budget of llvm-mca runs.

A `Codec` says how a search's unit vectors read as settings (`Codec.knobs` for llvm-mca's global
knobs; `table_search.table_codec` for a per-instruction table); a `Baseline` spends the trials.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs.base import Parameter, scale_settings, unscale_setting

BASELINES = ("opentuner", "optuna")


def setting_key(setting: dict) -> str:
    """A setting as a dictionary key: settings checked, proposed or cached once each."""
    return json.dumps(setting, sort_keys=True)


@dataclass
class Codec:
    """How a search's unit vectors read as settings: their names, the defaults as one, and the
    rounding of one to a valid setting. `Codec.knobs` for llvm-mca's global knobs; the
    per-instruction table has its own (`table_search`)."""

    names: list[str]
    first: list[float]
    unscale: Callable[[list[float]], dict]

    @classmethod
    def knobs(cls, space: dict[str, Parameter], defaults: dict) -> Codec:
        return cls(list(space), scale_settings(space, [defaults])[0].tolist(), lambda u: unscale_setting(space, u))


class Baseline:
    """A surrogate-free search: ask for a scaled setting, run llvm-mca on the sample, until the budget is spent."""

    def __init__(self, name: str, codec: Codec, defaults: dict, seed: int):
        self.name, self.codec, self.defaults, self.seed = name, codec, defaults, seed

    def run(self, evaluate: Callable[[dict], float], trials: int, progress: bool = True) -> tuple[dict, float, list]:
        """(best setting, its objective, trace of (trial, best so far)); `evaluate` runs llvm-mca and
        is called at most `trials` times (a setting seen before costs nothing and is answered from
        the cache, so a baseline that re-proposes is not charged twice)."""
        seen: dict[str, float] = {}
        trace: list = []
        best: tuple[dict, float] = (self.defaults, float("inf"))
        bar = tqdm(total=trials, desc=self.name, unit="trial", disable=not progress)

        def score(scaled: list[float]) -> float:
            nonlocal best
            setting = self.codec.unscale(scaled)
            key = setting_key(setting)
            if key not in seen:
                seen[key] = evaluate(setting)
                bar.update(1)
                if seen[key] < best[1]:
                    best = (setting, seen[key])
                trace.append((len(seen), best[1]))
            return seen[key]

        asked = 0
        for scaled in self._search(score):
            asked += 1
            if len(seen) >= trials or asked > 50 * trials:
                break
            score(scaled)
        bar.close()
        return best[0], best[1], trace

    def _search(self, score: Callable[[list[float]], float]):
        """Yields unit vectors to score; the search learns from `score`'s answers."""
        names, first = self.codec.names, self.codec.first
        if self.name == "optuna":
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=self.seed))
            study.enqueue_trial(dict(zip(names, first, strict=True)))
            while True:
                trial = study.ask()
                scaled = [trial.suggest_float(n, 0.0, 1.0) for n in names]
                yield scaled
                study.tell(trial, score(scaled))
        elif self.name == "opentuner":
            yield from self._opentuner(names, first, score)
        else:
            raise SurrogateOpsError(f"unknown baseline {self.name!r}; choose from {', '.join(BASELINES)}")

    def _opentuner(self, names: list[str], first: list[float], score: Callable[[list[float]], float]):
        import opentuner
        import opentuner.tuningrunmain
        from opentuner import ConfigurationManipulator, FloatParameter
        from opentuner.api import TuningRunManager
        from opentuner.measurement.interface import DefaultMeasurementInterface
        from opentuner.resultsdb.models import Result

        # TuningRunMain would configure the root logger, with an opentuner.log file in the working directory
        opentuner.tuningrunmain.init_logging = lambda: None
        logging.getLogger("opentuner").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="opentuner")  # SQLAlchemy 2 warns about its session use
        with tempfile.TemporaryDirectory() as tmp:
            args = argparse.ArgumentParser(parents=opentuner.argparsers()).parse_args([])
            args.database, args.seed = f"sqlite:///{tmp}/opentuner.db", self.seed
            manipulator = ConfigurationManipulator()
            for name in names:
                manipulator.add_parameter(FloatParameter(name, 0.0, 1.0))

            class Interface(DefaultMeasurementInterface):
                def seed_configurations(self):  # start from the expert defaults, as the other methods do
                    return [dict(zip(names, first, strict=True))]

            np.random.seed(self.seed)  # OpenTuner's techniques draw from the global generators
            random.seed(self.seed)
            interface = Interface(args=args, manipulator=manipulator, project_name="surrogate-ops",
                                  program_name="llvm-mca", program_version="1")
            api = TuningRunManager(interface, args)
            try:
                while True:
                    desired = api.get_next_desired_result()
                    if desired is None:
                        continue
                    scaled = [desired.configuration.data[n] for n in names]
                    yield scaled
                    api.report_result(desired, Result(time=score(scaled)))
            finally:
                api.finish()
