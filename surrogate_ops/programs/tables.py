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

A table's values are bounded (`MAX_VALUE`, `MAX_ENTRY_CYCLES`, see there) and its names are LLVM's
identifiers (`NAME`); `parametric.check_table` holds a table to them, and every range here stays
inside them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from surrogate_ops.errors import SurrogateOpsError

if TYPE_CHECKING:
    import pandas as pd

FIXED = ("latency", "uops")
SAMPLING = ("centred", "wide")
PACKAGED = Path(__file__).parent.parent / "presets" / "learned_tables"  # learned:<name> tables that ship
FEATURE_SCALE = 6.0  # values enter a surrogate as log2(1 + v) / FEATURE_SCALE: 63 cycles is 1.0

# The bounds of a table's values; the driver (native/parametric_mca.cpp) refuses the same. LLVM 14's
# MCSchedule.h keeps them in 16-bit fields: MCWriteProcResEntry::Cycles is uint16_t,
# MCWriteLatencyEntry::Cycles int16_t, MCSchedClassDesc::NumMicroOps 14 bits whose two top values
# mean "variant" and "invalid". The driver raises a group's cycles to what the resources inside it
# take, a sum: wrapped at 16 bits it falls short of what llvm-mca subtracts from the group, and the
# simulation never ends (17,000 cycles on each of four ports did, and took the blocks after it
# along). MAX_VALUE is about ten times the largest stock value of the x86 models (a divide's
# latency, about 100: room for any search) and far below every field; MAX_ENTRY_CYCLES over an
# entry's resources keeps any group's sum (plus the few stock cycles the entry leaves alone) far
# below 65,535. Simulated time grows with the values, so they also bound a block's time: at most
# about MAX_VALUE times its stock cycles, seconds rather than never.
MAX_VALUE = 1000  # latency, micro-ops, cycles on one resource
MAX_ENTRY_CYCLES = 10_000  # an entry's cycles over all the resources it names
MAX_ENTRIES = 4096  # opcodes in a table (BHive's Haswell blocks use about 750; the driver's room is 16-bit)
MAX_RESOURCES = 64  # resources in one entry (an x86 model has a few dozen)
MAX_DEPTH = 16  # nesting in a --params file: a table is 4 deep, its notes a little more
MAX_FILE_BYTES = 64 << 20
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # opcode and resource names (LLVM's are identifiers)


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
        return 0, min(MAX_VALUE, max(10, 2 * default))
    if column == "uops":
        return min(1, default), min(MAX_VALUE, max(4, 2 * default))
    return min(1, default), min(MAX_VALUE, max(3, 2 * default))  # cycles on a resource the stock entry lists


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


def read_json(path: Path | str) -> object:
    """A JSON file as Python values, or a one-line SurrogateOpsError naming the file: unreadable, not
    JSON, a key given twice, nested deeper than MAX_DEPTH or larger than MAX_FILE_BYTES (Python's
    parser would overflow its stack on deep nesting rather than say so)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise SurrogateOpsError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise SurrogateOpsError(f"{path}: {exc}") from None
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)):  # strings left out
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            raise SurrogateOpsError(f"{path}: nested more than {MAX_DEPTH} levels deep")

    def unique(pairs: list[tuple[str, object]]) -> dict:
        found = dict(pairs)
        if len(found) < len(pairs):  # JSON keeps the last of a key given twice: refused, not guessed
            seen: set[str] = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise SurrogateOpsError(f"{path}: key {twice!r} is given twice")
        return found

    try:
        return json.loads(text, object_pairs_hook=unique)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SurrogateOpsError(f"{path}: not JSON: {exc}") from None


def learned_file(name: str) -> dict:
    """A learned table file that ships with the package, notes included (`table_file`)."""
    path = PACKAGED / f"{name}.json"
    if not NAME.fullmatch(name) or not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PACKAGED.glob("*.json"))) or "none"
        raise SurrogateOpsError(f"no learned table {name!r} ships with surrogate-ops (shipped: {shipped})")
    return read_json(path)


def table_file(table: Mapping[str, Mapping], stock: Mapping[str, Mapping], mcpu: str, **notes: object) -> dict:
    """A learned table as a `--params` file holds it, with what a reader wants beside it under
    keys that `--params` skips ("_"): the CPU, the stock entries of the opcodes it changes (for
    `table-diff`) and any notes (figures, the run)."""
    return {"per_instruction": dict(table), "_mcpu": mcpu, "_stock": {o: stock[o] for o in table if o in stock},
            **{f"_{k}": v for k, v in notes.items()}}


def table_changes(spec: str) -> tuple[pd.DataFrame, dict]:
    """What a learned table (`learned:CPU`, or a file as `optimize-table` writes it) changes from the stock
    one: a row per opcode and value (opcode, column, stock, learned, change), and the file itself."""
    import pandas as pd

    if spec.startswith("learned:"):
        data = learned_file(spec.removeprefix("learned:"))
    else:
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SurrogateOpsError(f"{spec}: {exc}") from None
    if "_stock" not in data or "per_instruction" not in data:
        raise SurrogateOpsError(f"{spec}: not a learned table file (it needs per_instruction and the stock entries "
                                "under _stock, as optimize-table writes them)")
    changes = pd.DataFrame(diff_entries(data["_stock"], data["per_instruction"]),
                           columns=["opcode", "column", "stock", "learned"])
    if not changes.empty:
        changes["change"] = changes["learned"] - changes["stock"].fillna(0)
    return changes, data
