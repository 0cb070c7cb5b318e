"""llvm-mca's setting: its global knobs and an optional per-instruction table, as one typed value.

A setting is read and checked once (`llvm_mca.read_setting`: a JSON file as `optimize --out` and
`optimize-table` write them, or `learned:CPU`, a learned table that ships, held to the llvm-mca of
each CPU it is for), then passed as itself:
to `LlvmMca(setting=...)`, to the service's fallback, into a bento. Its file form is a JSON object of
knobs by parameter or llvm-mca option name (`dispatch_width` or `dispatch`), a `per_instruction`
table (opcode -> latency, micro-ops, port cycles; see `parametric`) and notes under keys that begin
with "_" (`_mcpu`: the CPU whose resources the table names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.programs import tables

LEARNED = "learned:"  # learned:haswell: the learned per-instruction table that ships for haswell
TABLE_KEY = "per_instruction"  # the table's key in a setting's file


@dataclass(frozen=True)
class McaSetting:
    """Knobs by parameter name (checked ones by canonical name) and a per-instruction table; the stock
    llvm-mca is `McaSetting()`. `mcpu` is the CPU a table was made for (its resources are that CPU's)."""

    knobs: Mapping[str, int | bool] = field(default_factory=dict)
    table: Mapping[str, Mapping] = field(default_factory=dict)
    mcpu: str | None = None

    def __bool__(self) -> bool:
        return bool(self.knobs or self.table)

    @property
    def key(self) -> str:
        """One string per setting, for caches and for gathering requests that run alike."""
        return json.dumps({"knobs": dict(self.knobs), "table": dict(self.table)}, sort_keys=True)

    def to_json(self) -> dict:
        """The file form (what `from_json` and `read` take back)."""
        return {**self.knobs, **({TABLE_KEY: dict(self.table)} if self.table else {}),
                **({"_mcpu": self.mcpu} if self.mcpu and self.table else {})}

    def summary(self) -> dict:
        """What a status page shows: the knobs, a table by its size."""
        return {**self.knobs, **({TABLE_KEY: f"{len(self.table)} opcodes"} if self.table else {})}

    @classmethod
    def from_json(cls, data: object, where: str = "setting") -> McaSetting:
        """A setting from its file form, unchecked (`llvm_mca.read_setting` checks): notes ("_" keys) other than `_mcpu`
        left out."""
        if isinstance(data, McaSetting):
            return data
        if not isinstance(data, Mapping):
            raise SurrogateOpsError(f"{where}: expected a JSON object of llvm-mca option names to values")
        mcpu = data.get("_mcpu")
        knobs = {k: v for k, v in data.items() if not k.startswith("_") and k != TABLE_KEY}
        return cls(knobs, data.get(TABLE_KEY) or {}, mcpu if isinstance(mcpu, str) else None)

    @classmethod
    def load(cls, spec: str) -> McaSetting:
        """A setting file or `learned:CPU`, parsed but not yet held to an llvm-mca."""
        if spec.startswith(LEARNED):
            name = spec[len(LEARNED):]
            return cls(table=tables.learned_file(name)[TABLE_KEY], mcpu=name)
        try:
            data = tables.read_json(spec)
        except SurrogateOpsError as exc:
            raise SurrogateOpsError(f"--params {exc}") from None
        return cls.from_json(data, f"--params {spec}")
