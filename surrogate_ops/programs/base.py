"""The `Program` interface: a name, a version, declared parameters and a batched `run`."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parameter:
    """A tunable knob of a program: its type and the range a search may explore."""

    name: str
    option: str
    type: str  # "int" or "bool"
    low: int
    high: int
    help: str = ""
    since: int = 0  # first major version of the program that has it
    zero: str = ""  # what 0 means, when it is special ("unbounded": no limit at all)
    only_with: str = ""  # a parameter that must be nonzero for this one to have any effect

    def check(self, value: object) -> int | bool:
        """The value converted to this parameter's type, or ValueError naming the parameter and range."""
        if self.type == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{self.name}: expected true or false, got {value!r}")
                return value.lower() in ("true", "1")
            return bool(value)
        try:
            number = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: expected an integer, got {value!r}") from None
        if float(value) != number:  # type: ignore[arg-type]
            raise ValueError(f"{self.name}: expected an integer, got {value!r}")
        if not self.low <= number <= self.high:
            raise ValueError(f"{self.name}: {number} is outside [{self.low}, {self.high}]")
        return number

    # The search space a surrogate and the search baselines share: every parameter as a unit in [0, 1].
    # Sizes are on a log scale (1, 2, 4 ... apart matter as much as 64, 128 ...); where 0 means
    # "unbounded" it sits at the top, one step past `high`, so the unit grows with capacity.
    def scale(self, value: int | bool) -> float:
        if self.type == "bool":
            return float(bool(value))
        if self.zero == "unbounded":
            return 1.0 if value == 0 else math.log(value) / math.log(self.high + 1)
        low = max(self.low, 1)
        return math.log(value / low) / math.log(self.high / low) if self.high > low else 0.0

    def unscale(self, unit: float) -> int | bool:
        """The valid value nearest to a unit (rounded on the parameter's own scale)."""
        unit = min(max(float(unit), 0.0), 1.0)
        if self.type == "bool":
            return unit >= 0.5
        if self.zero == "unbounded":
            value = round((self.high + 1) ** unit)
            return 0 if value > self.high else max(value, 1)
        low = max(self.low, 1)
        return int(min(max(round(low * (self.high / low) ** unit), self.low), self.high))


def check_setting(parameters: Mapping[str, Parameter], params: Mapping[str, object],
                  program: str) -> dict[str, int | bool]:
    """Values by parameter name from a mapping keyed by parameter names or option names (`dispatch_width`
    or `dispatch`, `--dispatch`), each checked; ValueError naming the culprit."""
    by_option = {p.option: p for p in parameters.values()}
    checked: dict[str, int | bool] = {}
    for key, value in params.items():
        spec = parameters.get(key) or by_option.get(key.lstrip("-"))
        if spec is None:
            raise ValueError(f"unknown {program} parameter {key!r}; known: {', '.join(parameters)}")
        checked[spec.name] = spec.check(value)
    return checked


def canonical(parameters: Mapping[str, Parameter], setting: Mapping[str, int | bool]) -> dict[str, int | bool]:
    """The setting with every parameter that cannot act (its `only_with` is 0) at 0: settings that
    run the same get the same scaled values, so a surrogate never sees a difference the program ignores."""
    return {name: 0 if p.only_with and not setting.get(p.only_with, 1) else value
            for (name, p), value in zip(parameters.items(), (setting[n] for n in parameters), strict=True)}


def scale_settings(parameters: Mapping[str, Parameter], settings: Sequence[Mapping[str, int | bool]]) -> np.ndarray:
    """(settings, parameters) float32: the canonical settings scaled to [0, 1], columns in the order of `parameters`."""
    return np.array([[p.scale(v) for p, v in zip(parameters.values(), canonical(parameters, s).values(), strict=True)]
                     for s in settings], dtype=np.float32).reshape(len(settings), len(parameters))


def unscale_setting(parameters: Mapping[str, Parameter], scaled: Sequence[float]) -> dict[str, int | bool]:
    """The canonical setting nearest to scaled values (each parameter rounded on its own scale)."""
    return canonical(parameters, {name: p.unscale(u) for (name, p), u in zip(parameters.items(), scaled, strict=True)})


def sample_settings(parameters: Mapping[str, Parameter], defaults: Mapping[str, int | bool], count: int,
                    seed: int = 0, keep: float = 0.5, spread: float = 1.0) -> list[dict[str, int | bool]]:
    """`count` random settings: each parameter keeps its default with probability `keep`, else takes a
    value drawn uniformly on its unit scale within `spread` of the default's unit (1: anywhere in
    its range; smaller puts the samples where a search starting from the defaults looks).
    Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    centre = np.array([p.scale(defaults[name]) for name, p in parameters.items()])
    low, high = np.clip(centre - spread, 0, 1), np.clip(centre + spread, 0, 1)
    settings = []
    for _ in range(count):
        draws, scaled = rng.random(len(parameters)), low + (high - low) * rng.random(len(parameters))
        settings.append({name: defaults[name] if draw < keep else p.unscale(u)
                         for (name, p), draw, u in zip(parameters.items(), draws, scaled, strict=True)})
    return settings


@dataclass(frozen=True)
class Result:
    """One block's answer: the program's figures, or the reason there is none."""

    cycles: float | None = None  # total cycles over the run's iterations
    uops: int | None = None
    rthroughput: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


Progress = Callable[[int], None]  # called with the number of blocks just finished


class Program(abc.ABC):
    """A program a surrogate can imitate. `run` takes many inputs at once and never raises for one."""

    name: str
    parameters: dict[str, Parameter]

    @property
    @abc.abstractmethod
    def version(self) -> str: ...

    def expert_defaults(self) -> dict[str, int | bool]:
        """The value each parameter takes when none is given (the program's own, expert-set values)."""
        raise NotImplementedError(f"{self.name} does not report its default parameters")

    @abc.abstractmethod
    def run(self, blocks: Sequence[str], progress: Progress | None = None) -> list[Result]:
        """One Result per input, in order; a bad input gets a Result with `error` set."""
