"""The `Program` interface: a name, a version, declared parameters and a batched `run`."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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

    @abc.abstractmethod
    def run(self, blocks: Sequence[str], progress: Progress | None = None) -> list[Result]:
        """One Result per input, in order; a bad input gets a Result with `error` set."""
