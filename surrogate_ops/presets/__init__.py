"""Named presets kept as data (JSON beside this file): microarchitectures, model sizes, targets."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def load(name: str) -> dict:
    """The preset table `name` (e.g. "microarchitectures"), as a dict; `_doc` keys (the table's
    description) left out."""
    table = json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text())
    return {k: v for k, v in table.items() if not k.startswith("_")}
