"""Per-instruction scheduling tables as a search space: what DiffTune tuned, as numbers.

The parametric driver (`parametric`) takes a table of entries by opcode name. Searching over
tables needs them as arrays: a `TableSpace` holds, for a set of opcodes, every value an entry has
(columns `FIXED` then one per processor resource of the CPU) at its stock value, which of them a
search may move (the latency where the opcode has one, the micro-ops, and the cycles on each
resource the stock model lists for it) and the range each may take.

Each instruction of a block is described by the same columns (`Annotated`): its stock entry as the
driver resolved it, which a conditioned surrogate reads beside the instruction's tokens; a table
overrides the rows of the opcodes it names. Opcodes whose stock class depends on their operands
(`variant`: zero idioms and the like) are never tuned: one entry would change all their forms.

Sampling draws entries, for `collect --sample-params N --per-instruction MODE`, in one of two ways:
- `wide` (DiffTune's way): every value drawn uniformly over its whole range, whatever the default;
- `centred`: half the entries keep the stock values; the others move each value by a factor of
  up to 2 either way from the default (an off-by-one step where the default is 0 or 1).
An entry depends only on the seed, the table's index and the opcode, so a table is drawn lazily,
one opcode at a time, and a resumed collection draws the same ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surrogate_ops.errors import SurrogateOpsError

FIXED = ("latency", "uops")
SAMPLING = ("centred", "wide")
PACKAGED = Path(__file__).parent.parent / "presets" / "learned_tables"  # learned:<name> tables that ship
FEATURE_SCALE = 6.0  # values enter a surrogate as log2(1 + v) / FEATURE_SCALE: 63 cycles is 1.0


@dataclass(frozen=True)
class Instruction:
    """One instruction's stock entry, as the driver resolved it in its block."""

    opcode: str
    values: Mapping[str, int]  # latency (when it defines a register), uops, cycles by resource name
    variant: bool = False
    # groups are left out where the stock entry lists them only to cover the resources inside them
    # (the driver's "*"): they follow those resources, so a table never names them


Annotated = list[Instruction]  # a block's instructions, in order


def parse_entries(line: str) -> Annotated:
    """A block's instructions from the driver's DEFAULTS answer line ("; "-separated entries)."""
    instructions = []
    for text in line.split("; "):
        opcode, *words = text.split()
        values = {name: int(n) for name, n in zip(words[::2], words[1::2], strict=True) if not name.endswith("*")}
        variant = bool(values.pop("variant", 0))
        instructions.append(Instruction(opcode, values, variant))
    return instructions


def format_entries(block: Annotated) -> str:
    """A block's instructions as `parse_entries` reads them."""
    return "; ".join(" ".join([ins.opcode, *(["variant", "1"] if ins.variant else []),
                               *(f"{k} {v}" for k, v in ins.values.items())]) for ins in block)


def check_mode(mode: str) -> str:
    if mode not in SAMPLING:
        raise SurrogateOpsError(f"per-instruction sampling is one of {', '.join(SAMPLING)}, not {mode!r}")
    return mode


def entry_of(instruction: Instruction) -> dict:
    """The stock values of an instruction as a table entry (`parametric`'s format)."""
    values = dict(instruction.values)
    entry = {field: values.pop(field) for field in FIXED if field in values}
    return {**entry, "ports": values}


def _bounds(column: str, default: int) -> tuple[int, int]:
    """The range a value may take: latency, micro-ops, or (any other column) cycles on a resource."""
    if column == "latency":
        return 0, max(10, 2 * default)
    if column == "uops":
        return min(1, default), max(4, 2 * default)
    return min(1, default), max(3, 2 * default)  # cycles on a resource the stock entry lists


def sample_entry(entry: Mapping, mode: str, rng: np.random.Generator) -> dict:
    """A random entry for an opcode whose stock entry is `entry` (see the module's note)."""
    check_mode(mode)
    if mode == "centred" and rng.random() < 0.5:
        return {**entry, "ports": dict(entry.get("ports", {}))}

    def draw(field: str, default: int) -> int:
        low, high = _bounds(field, default)
        if mode == "wide":
            return int(rng.integers(low, high + 1))
        if default <= 1:
            return int(np.clip(default + rng.integers(-1, 2), low, high))
        return int(np.clip(round(default * 2.0 ** rng.uniform(-1, 1)), low, high))

    sampled = {f: draw(f, entry[f]) for f in FIXED if f in entry}
    return {**sampled, "ports": {r: draw(r, c) for r, c in entry.get("ports", {}).items()}}


def _seed(*parts: object) -> int:
    return int(hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def sample_block_table(instructions: Annotated, mode: str, seed: int, index: int) -> dict[str, dict]:
    """Table `index` of a sampled family, restricted to the tunable opcodes of one block."""
    table: dict[str, dict] = {}
    for ins in instructions:
        if not ins.variant and ins.opcode not in table:
            table[ins.opcode] = sample_entry(entry_of(ins), mode, np.random.default_rng(_seed(seed, index, ins.opcode)))
    return table


@dataclass
class TableSpace:
    """Opcodes and their values as arrays (opcodes, columns): `defaults`, `tunable`, `low`, `high`."""

    mcpu: str
    resources: tuple[str, ...]
    opcodes: tuple[str, ...]
    defaults: np.ndarray  # int (opcodes, columns)
    tunable: np.ndarray  # bool
    low: np.ndarray
    high: np.ndarray

    @property
    def columns(self) -> tuple[str, ...]:
        return FIXED + self.resources

    @classmethod
    def of(cls, blocks: Iterable[Annotated], mcpu: str, min_count: int = 1,
           resources: Sequence[str] | None = None) -> TableSpace:
        """The space of the non-variant opcodes used at least `min_count` times in `blocks`, over
        `resources` (by default every resource those blocks use)."""
        counts: dict[str, int] = {}
        stock: dict[str, Instruction] = {}
        seen: set[str] = set()
        for block in blocks:
            for ins in block:
                seen.update(k for k in ins.values if k not in FIXED)
                if not ins.variant:
                    counts[ins.opcode] = counts.get(ins.opcode, 0) + 1
                    stock.setdefault(ins.opcode, ins)
        resources = tuple(resources) if resources is not None else tuple(sorted(seen))
        opcodes = tuple(sorted(o for o, n in counts.items() if n >= min_count))
        columns = FIXED + resources
        defaults = np.zeros((len(opcodes), len(columns)), dtype=np.int64)
        tunable = np.zeros_like(defaults, dtype=bool)
        for i, opcode in enumerate(opcodes):
            for j, column in enumerate(columns):
                if column in stock[opcode].values:
                    defaults[i, j], tunable[i, j] = stock[opcode].values[column], True
        low, high = np.zeros_like(defaults), np.zeros_like(defaults)
        for (i, j), default in np.ndenumerate(defaults):
            low[i, j], high[i, j] = _bounds(columns[j], int(default)) if tunable[i, j] else (default, default)
        return cls(mcpu, resources, opcodes, defaults, tunable, low, high)

    @property
    def size(self) -> int:
        """The number of values a search moves."""
        return int(self.tunable.sum())

    def row(self, opcode: str) -> int:
        """The opcode's row, -1 for one the space does not tune."""
        return self._rows.get(opcode, -1)

    @functools.cached_property
    def _rows(self) -> dict[str, int]:
        return {o: i for i, o in enumerate(self.opcodes)}

    def table(self, values: np.ndarray, changed_only: bool = True) -> dict[str, dict]:
        """Values (opcodes, columns) as a per-instruction table: the entries that differ from the
        stock ones (all, with `changed_only=False`), every tunable value of an entry written out."""
        values = np.clip(np.rint(values), self.low, self.high).astype(np.int64)
        table = {}
        for i, opcode in enumerate(self.opcodes):
            if changed_only and (values[i] == self.defaults[i]).all():
                continue
            entry = {c: int(values[i, j]) for j, c in enumerate(FIXED) if self.tunable[i, j]}
            entry["ports"] = {c: int(values[i, j]) for j, c in enumerate(self.columns) if j >= len(FIXED) and self.tunable[i, j]}
            table[opcode] = entry
        return table

    def stock(self, opcodes: Iterable[str]) -> dict[str, dict]:
        """The stock entries of `opcodes`, as `table` writes entries (for diffs)."""
        wanted = set(opcodes)
        return {o: e for o, e in self.table(self.defaults, changed_only=False).items() if o in wanted}

    def values(self, table: Mapping[str, Mapping]) -> np.ndarray:
        """A table's values (opcodes, columns): the stock ones where it has no entry."""
        values = self.defaults.copy()
        for opcode, entry in table.items():
            if opcode not in self._rows:
                continue
            i = self._rows[opcode]
            for j, column in enumerate(self.columns):
                source = entry if j < len(FIXED) else entry.get("ports", {})
                if column in source:
                    values[i, j] = source[column]
        return values

    def features(self, block: Annotated, table: Mapping[str, Mapping] | None = None) -> np.ndarray:
        """(instructions, columns) float32: each instruction's entry under `table` (stock where it
        has none), scaled as a surrogate reads it."""
        rows = np.zeros((len(block), len(self.columns)), dtype=np.float32)
        index = {c: j for j, c in enumerate(self.columns)}
        for k, ins in enumerate(block):
            values = dict(ins.values)
            entry = (table or {}).get(ins.opcode) if not ins.variant else None
            if entry:
                values.update({f: entry[f] for f in FIXED if f in entry})
                values.update(entry.get("ports", {}))
            for column, value in values.items():
                if column in index:
                    rows[k, index[column]] = value
        return scale(rows)

    def to_dict(self) -> dict:
        return {"mcpu": self.mcpu, "resources": list(self.resources), "opcodes": list(self.opcodes),
                **{k: getattr(self, k).tolist() for k in ("defaults", "tunable", "low", "high")}}

    @classmethod
    def from_dict(cls, data: Mapping) -> TableSpace:
        arrays = {k: np.array(data[k], dtype=bool if k == "tunable" else np.int64).reshape(len(data["opcodes"]), -1)
                  for k in ("defaults", "tunable", "low", "high")}
        return cls(data["mcpu"], tuple(data["resources"]), tuple(data["opcodes"]), **arrays)


def scale(values):
    """Values (cycles, micro-ops) as a surrogate reads them; numpy or torch."""
    if isinstance(values, np.ndarray):
        return (np.log2(1 + values) / FEATURE_SCALE).astype(np.float32)
    import torch

    return torch.log2(1 + values) / FEATURE_SCALE


def diff_entries(stock: Mapping[str, Mapping], learned: Mapping[str, Mapping]) -> list[dict]:
    """Every value a table changes, from the stock entries of its opcodes: opcode, column
    (latency, uops or a resource), stock, learned."""
    changes = []
    for opcode, entry in learned.items():
        before = {**{k: v for k, v in stock.get(opcode, {}).items() if k != "ports"}, **stock.get(opcode, {}).get("ports", {})}
        after = {**{k: v for k, v in entry.items() if k != "ports"}, **entry.get("ports", {})}
        changes += [{"opcode": opcode, "column": column, "stock": before.get(column), "learned": value}
                    for column, value in after.items() if before.get(column) != value]
    return changes


def dumps(table: Mapping) -> str:
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def learned_file(name: str) -> dict:
    """A learned table file that ships with the package, notes included (`table_file`)."""
    path = PACKAGED / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.json"))) or "none"
        raise SurrogateOpsError(f"no learned table {name!r} ships with surrogate-ops (shipped: {shipped})")
    return json.loads(path.read_text())


def learned(name: str) -> dict:
    """A learned table that ships with the package (`--params learned:haswell`), as `--params`
    takes it: {"per_instruction": {...}}."""
    return {"per_instruction": learned_file(name)["per_instruction"]}


def table_file(table: Mapping[str, Mapping], stock: Mapping[str, Mapping], mcpu: str, **notes: object) -> dict:
    """A learned table as a `--params` file holds it, with what a reader wants beside it under
    keys that `--params` skips ("_"): the CPU, the stock entries of the opcodes it changes (for
    `table-diff`) and any notes (figures, the run)."""
    return {"per_instruction": dict(table), "_mcpu": mcpu, "_stock": {o: stock[o] for o in table if o in stock},
            **{f"_{k}": v for k, v in notes.items()}}
