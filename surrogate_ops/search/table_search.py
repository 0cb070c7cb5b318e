"""Surrogate optimization of llvm-mca's per-instruction scheduling table (DiffTune's space).

One run, for one CPU:
1. The space: the opcodes of the measured training blocks used at least `min_count` times there
   (a rare opcode's entry would be fit to a handful of measurements), with their latency, micro-ops
   and cycles on the resources the stock model lists for them (`programs.tables.TableSpace`).
2. The surrogate: the bundled surrogate for the CPU, wrapped to read each instruction's entry beside
   its tokens (`models.Conditioned`, inject="per_instruction"), fine-tuned on blocks the parametric
   llvm-mca labeled under sampled tables (`collect --sample-params N --per-instruction MODE`).
3. The descent: the table relaxed to real values within its ranges; Adam on the surrogate's MAPE
   against measured throughput over the training blocks, anchored as `optimize` is (stock
   llvm-mca's cycles for a block times the surrogate's ratio between the table's answer and the stock
   table's), so the surrogate's own error on a block cancels. Rounded tables along the way are run
   by the real driver on a fixed sample of training blocks; the best is kept (the stock table if
   none beats it).
4. The baselines: OpenTuner and Optuna over the same values, ranges and rounding, each with the
   surrogate's whole budget of driver block evaluations (its labels, its anchors and its checks), a
   trial at a time on the same sample, their first trial the stock table.
5. Held out: every method's table run by the real driver on the test split (may-alias excluded):
   MAPE and Kendall's tau, and MAPE on the test blocks that use an opcode rare in training.
Everything goes to one MLflow run; the surrogate's table is registered as a version of
`llvm-mca-<mcpu>-table`, with its held-out figures as tags.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from surrogate_ops import models, plots, registry
from surrogate_ops.blocks.batching import buckets, pad
from surrogate_ops.config import PRETRAINED, Device, EngineName
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.metrics import kendall_tau
from surrogate_ops.programs import LlvmMca, McaSetting, parametric, tables
from surrogate_ops.programs.cluster import Cluster
from surrogate_ops.programs.tables import TableSpace
from surrogate_ops.registry import tracking, versions
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.search.baselines import BASELINES, Baseline, Codec
from surrogate_ops.search.optimize import Outcome, llvm_mca_mape
from surrogate_ops.training import loop


@dataclass(frozen=True)
class TableSearchConfig:
    data: str  # measured throughputs: a BHive-format CSV or a collected dataset
    labels: tuple[str, ...]  # datasets collected with --sample-params N --per-instruction MODE
    mcpu: str = "haswell"
    model: str | None = None  # the surrogate to start from [default: the bundled one for mcpu]
    min_count: int = 20  # opcodes used fewer times in the training blocks keep their stock entries
    epochs: int = 12  # surrogate fine-tuning
    batch_size: int = 128
    fit_lr: float = 2e-3
    steps: int = 300  # descent steps
    descent_lr: float = 0.05
    descent_batch: int = 1024  # training blocks per descent step
    checkpoints: int = 12  # rounded tables taken along the descent, `checks` of them checked
    checks: int = 6
    restarts: int = 1  # descents, each on its own minibatch order; `checks` tables of each checked
    search_blocks: int = 2000  # the fixed sample of training blocks every check and trial runs
    baselines: tuple[str, ...] = BASELINES
    seed: int = 0
    test_limit: int | None = None
    label_limit: int | None = None
    threads: int | None = None
    device: Device = "cpu"  # where the surrogate is fine-tuned and descended through (`loop.device`)


@dataclass
class TableSearchResult:
    run_id: str
    outcomes: dict[str, Outcome]
    space: TableSpace
    table_file: dict  # the surrogate's table as a --params file holds it (tables.table_file)
    version: str | None = None
    rare: dict[str, float] = field(default_factory=dict)  # method -> test MAPE on blocks with a rare opcode
    test_blocks: int = 0
    rare_blocks: int = 0


@dataclass
class _Blocks:
    """Measured blocks the surrogate reads: tokens, each instruction's row in the space (-1: not
    tuned) and stock features, stock cycles and measured cycles."""

    text: list[str]
    tokens: list
    space_rows: list[np.ndarray]  # per instruction: its opcode's row in the space, -1 where not tuned
    stock_features: list[np.ndarray]  # per instruction: its stock entry as the surrogate reads it
    stock_cycles: np.ndarray  # stock llvm-mca's, the anchors
    measured: np.ndarray


def driver_mape(program: LlvmMca, table: dict, blocks: list[str], measured: np.ndarray) -> tuple[float, np.ndarray]:
    """The parametric llvm-mca under `table` (one table a driver process): MAPE against `measured`
    (a failed block a 100% miss) and the cycles."""
    return llvm_mca_mape(program, McaSetting(table=table or {}), blocks, measured)


class TableSurrogate:
    """A per-instruction conditioned surrogate over one table space."""

    def __init__(self, predictor: Predictor, space: TableSpace, seed: int = 0):
        self.predictor, self.space = predictor, space
        base = models.network(predictor.model.module())
        torch.manual_seed(seed)
        self.model = models.Conditioned.wrap(base, space.columns, inject="per_instruction")

    def tokens(self, blocks: list[str], annotated: list[tables.Annotated]) -> tuple[list, list[int]]:
        """Token ids of the blocks the surrogate reads whose instructions line up with the driver's."""
        encoded, keep = [], []
        for i, (block, ann) in enumerate(zip(blocks, annotated, strict=True)):
            try:
                ids, _ = self.predictor.encode(block, i)
            except Exception:  # noqa: BLE001 - over-long or unreadable: the surrogate does not read it
                continue
            if ann is not None and len(ids) == len(ann):
                encoded.append(ids)
                keep.append(i)
        return encoded, keep

    def fit(self, frame: pd.DataFrame, config: TableSearchConfig, progress: bool = True) -> loop.History:
        """Fine-tune on labels under sampled tables (`collect --per-instruction`); their val split
        picks the best epoch."""
        target = f"mca_cycles_{self.space.mcpu}"
        annotated = [tables.parse_entries(line) for line in frame["instructions"]]
        encoded, keep = self.tokens(list(frame["block"]), annotated)
        features = [self.space.features(annotated[i], json.loads(frame["table"].iloc[i])) for i in keep]
        targets = frame[target].to_numpy()[keep]
        split = frame["split"].to_numpy()[keep]
        train, val = np.flatnonzero(split != "val"), np.flatnonzero(split == "val")
        if len(train) == 0 or len(val) == 0:
            raise SurrogateOpsError(f"the labels need blocks the surrogate reads in both their train and val splits "
                                    f"(have {len(train)} and {len(val)}): collect more")
        batches = _FeatureBatches([encoded[i] for i in train], [features[i] for i in train], targets[train],
                                  config.batch_size)
        val_batches = _FeatureBatches([encoded[i] for i in val], [features[i] for i in val], targets[val], 512)
        loop_config = loop.LoopConfig(epochs=config.epochs, lr=config.fit_lr, warmup_steps=100, patience=3,
                                      device=config.device)
        self.model, history = loop.fit(self.model, batches, loop_config, np.random.default_rng(config.seed),
                                       validate=val_batches.mape, progress=progress, desc="surrogate (per-instruction)")
        self.model.eval()
        return history


def _per_instruction(arrays: list[np.ndarray], instructions: int, fill: float) -> torch.Tensor:
    """Per-instruction arrays of a batch's blocks, padded with `fill` to the token batch's
    instruction count: (batch, instructions, ...)."""
    out = torch.full((len(arrays), instructions, *arrays[0].shape[1:]), fill,
                     dtype=torch.from_numpy(arrays[0][:0]).dtype)
    for k, array in enumerate(arrays):
        out[k, : len(array)] = torch.from_numpy(array)
    return out


class _FeatureBatches:
    """Tokenized blocks with each instruction's features, in length buckets (loop.fit's batches)."""

    def __init__(self, encoded: list, features: list[np.ndarray], targets: np.ndarray, batch_size: int):
        self.encoded, self.features, self.batch_size = encoded, features, batch_size
        self.targets = torch.tensor(targets, dtype=torch.float32)
        self.count = len(buckets(encoded, batch_size))

    def __len__(self) -> int:
        return self.count

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(pad([self.encoded[i] for i in index]))
        return tokens, _per_instruction([self.features[i] for i in index], tokens.shape[1], 0.0)

    def epoch(self, rng: np.random.Generator):
        batches = buckets(self.encoded, self.batch_size, order=rng.permutation(len(self.encoded)))
        rng.shuffle(batches)
        for index in batches:
            yield self.batch(index), self.targets[index]

    def mape(self, model: torch.nn.Module) -> float:
        """The model's MAPE over these blocks, computed on the device the model is on."""
        model.eval()
        on, errors = next(model.parameters()).device, []
        with torch.inference_mode():
            for index in buckets(self.encoded, self.batch_size):
                predicted = model(*(x.to(on) for x in self.batch(index))).cpu()
                errors.append(torch.abs(predicted - self.targets[index]) / self.targets[index])
        model.train()
        return float(torch.cat(errors).mean())


class Descent:
    """The surrogate's objective over measured blocks as a function of the whole table, relaxed."""

    def __init__(self, surrogate: TableSurrogate, blocks: _Blocks, batch: int, device: Device = "cpu"):
        self.on = on = loop.device(device)
        self.model, self.space, self.blocks = surrogate.model.to(on), surrogate.space, blocks
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batches = buckets(blocks.tokens, batch)
        self.padded = [tuple(x.to(on) for x in self._pad(index)) for index in self.batches]  # held where it runs
        self.low = torch.tensor(self.space.low, dtype=torch.float32, device=on)
        self.high = torch.tensor(self.space.high, dtype=torch.float32, device=on)
        self.tunable = torch.tensor(self.space.tunable, device=on)
        defaults = torch.tensor(self.space.defaults, dtype=torch.float32, device=on)
        with torch.no_grad():  # the surrogate's answer under the stock table anchors every block
            self.at_defaults = [self._predict(b, defaults) for b in range(len(self.batches))]

    def _pad(self, index):
        tokens = torch.from_numpy(pad([self.blocks.tokens[i] for i in index]))
        n = tokens.shape[1]
        rows = _per_instruction([self.blocks.space_rows[i] for i in index], n, -1)
        stock = _per_instruction([self.blocks.stock_features[i] for i in index], n, 0.0)
        return (tokens, rows, stock, torch.tensor(self.blocks.stock_cycles[index], dtype=torch.float32),
                torch.tensor(self.blocks.measured[index], dtype=torch.float32))

    def _predict(self, b: int, values: torch.Tensor) -> torch.Tensor:
        tokens, rows, stock, _, _ = self.padded[b]
        tuned = tables.scale(values)[rows.clamp(min=0)]  # (batch, instructions, columns)
        features = torch.where((rows >= 0).unsqueeze(-1), tuned, stock)
        return self.model(tokens, features)

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """The relaxed table: each tunable value within its range, the rest at their stock values."""
        relaxed = self.low + (self.high - self.low) * torch.sigmoid(logits)
        return torch.where(self.tunable, relaxed, self.low)

    def loss(self, values: torch.Tensor, b: int) -> torch.Tensor:
        _, _, _, cycles, measured = self.padded[b]
        predicted = cycles * self._predict(b, values) / self.at_defaults[b]
        return (torch.abs(predicted - measured) / measured).mean()

    def run(self, config: TableSearchConfig, progress: bool = True, restart: int = 0) -> tuple[list[np.ndarray], list]:
        """Adam from the stock table; the distinct rounded tables at `checkpoints` points along the
        way, in order, and the trace of (step, minibatch objective). `restart` k draws its minibatches
        from seed + k."""
        span = (self.high - self.low).clamp(min=1)
        start = ((torch.tensor(self.space.defaults, dtype=torch.float32, device=self.on) - self.low) / span
                 ).clamp(0.02, 0.98)
        logits = torch.logit(start).requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=config.descent_lr)
        generator = np.random.default_rng(config.seed + restart)
        trace, found, seen = [], [], set()
        marks = {int(round(config.steps * (k + 1) / config.checkpoints)) - 1 for k in range(config.checkpoints)}
        for step in tqdm(range(config.steps), desc=f"descending{f' ({restart + 1})' if restart else ''}", unit="step",
                         disable=not progress):
            b = int(generator.integers(len(self.batches)))
            loss = self.loss(self.values(logits), b)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trace.append((step, float(loss.detach())))
            if step in marks:
                rounded = np.rint(self.values(logits).detach().cpu().numpy()).astype(np.int64)
                key = rounded.tobytes()
                if key not in seen and (rounded != self.space.defaults).any():
                    seen.add(key)
                    found.append(rounded)
        return found, trace


def _spread(found: list, count: int) -> list:
    """`count` of the tables taken along the descent, evenly from first to last. Not the surrogate's
    favourites: its objective keeps falling after the real error turns (it is least sure far from
    the tables it learned from), so the early tables are often the better ones."""
    if len(found) <= count:
        return found
    return [found[round(k * (len(found) - 1) / (count - 1))] for k in range(count)] if count > 1 else found[:1]


def table_codec(space: TableSpace) -> Codec:
    """The baselines' view of the space: one unit per tunable value, linear over its range."""
    where = np.argwhere(space.tunable)
    low, high = space.low[space.tunable], space.high[space.tunable]
    names = [f"{space.opcodes[i]}.{space.columns[j]}" for i, j in where]
    first = ((space.defaults[space.tunable] - low) / np.maximum(high - low, 1)).tolist()

    def unscale(unit: list[float]) -> dict:
        values = space.defaults.copy()
        values[space.tunable] = np.rint(low + np.clip(unit, 0, 1) * (high - low)).astype(np.int64)
        return space.table(values)

    return Codec(names, first, unscale)


def _measured(program: LlvmMca, surrogate: TableSurrogate, frame: pd.DataFrame, space: TableSpace,
              annotated: list) -> _Blocks:
    encoded, keep = surrogate.tokens(list(frame["block"]), annotated)
    space_rows, features = [], []
    for i in keep:
        space_rows.append(np.array([-1 if ins.variant else space.row(ins.opcode)
                                    for ins in annotated[i]], dtype=np.int64))
        features.append(space.features(annotated[i]))
    kept = frame.iloc[keep]
    return _Blocks(list(kept["block"]), encoded, space_rows, features, kept["stock_cycles"].to_numpy(),
                   kept["measured"].to_numpy())


def search(config: TableSearchConfig, progress: bool = True, register: bool = True,
           cluster: Cluster | None = None) -> TableSearchResult:
    """Find a table through the surrogate and with each baseline on the same budget, evaluate all on
    the held-out split, log to one MLflow run and register the surrogate's table (see the module).
    The driver's runs go to `cluster` where given."""
    if config.threads:
        torch.set_num_threads(config.threads)
    loop.device(config.device)  # a missing GPU fails before any llvm-mca run
    unknown = set(config.baselines) - set(BASELINES)
    if unknown:
        raise SurrogateOpsError(f"unknown baseline {', '.join(sorted(unknown))}; choose from {', '.join(BASELINES)}")
    program = LlvmMca(config.mcpu, cluster=cluster)
    model_dir = registry.open(config.model or PRETRAINED / f"llvm-mca-{config.mcpu}").model
    predictor = Predictor(model_dir, engine=EngineName.TORCH)
    train_rows, test_rows = _rows(config)
    train_ann = parametric.annotate(program.path, list(train_rows["block"]), config.mcpu)
    space = TableSpace.of([a for a in train_ann if a is not None], config.mcpu, config.min_count)
    if not space.size:
        raise SurrogateOpsError(f"no opcode is used {config.min_count} times in the {len(train_rows):,} measured "
                                "training blocks: lower --min-count")
    labels = _labels(config)
    started = time.time()
    surrogate = TableSurrogate(predictor, space, config.seed)
    history = surrogate.fit(labels, config, progress)

    train_rows = train_rows.assign(stock_cycles=driver_mape(program, {}, list(train_rows["block"]),
                                                            train_rows["measured"].to_numpy())[1])
    anchored = np.isfinite(train_rows["stock_cycles"].to_numpy())
    blocks = _measured(program, surrogate, train_rows[anchored], space,
                       [a for a, k in zip(train_ann, anchored, strict=True) if k])
    rng = np.random.default_rng(config.seed)
    sample = train_rows.iloc[np.sort(rng.permutation(len(train_rows))[: config.search_blocks])]

    def check(table: dict) -> float:  # the real driver's MAPE on the sampled training blocks
        return driver_mape(program, table, list(sample["block"]), sample["measured"].to_numpy())[0]

    outcomes = {"defaults": Outcome("defaults", {}, 0, check({}))}
    # charged: its labels, the anchors (stock llvm-mca on every training block) and its checks
    best = _descend(config, surrogate, space, blocks, check, outcomes["defaults"].objective,
                    len(labels) + len(train_rows), len(sample), progress)
    best.seconds = time.time() - started
    outcomes["surrogate"] = best
    trials = best.evaluations // len(sample)
    _baselines(config, space, check, trials, len(sample), outcomes, progress)
    rare, rare_mask = _held_out(program, test_rows, space, config, outcomes, progress)
    learned = outcomes["surrogate"].setting
    table_file = tables.table_file(learned, space.stock(learned), config.mcpu, **{
        f"{prefix}held_out": {"test_mape": outcomes[m].test_mape, "test_tau": outcomes[m].test_tau,
                              "rare_opcode_test_mape": rare[m]}
        for prefix, m in (("", "surrogate"), ("defaults_", "defaults"))})
    run_id, version = _log(config, space, outcomes, rare, history, len(train_rows), len(test_rows), trials,
                           table_file, register)
    return TableSearchResult(run_id, outcomes, space, {**table_file, "_run_id": run_id}, version, rare,
                             len(test_rows), int(rare_mask.sum()))


def _rows(config: TableSearchConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measured training and held-out blocks, refused when there are too few."""
    frame = datasets.measured_blocks(config.data, config.mcpu)
    train_rows, test_rows = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    if config.test_limit is not None:
        test_rows = test_rows.iloc[: config.test_limit]
    if len(train_rows) < config.search_blocks or len(test_rows) < 2:
        raise SurrogateOpsError(f"{config.data}: need at least {config.search_blocks} measured training blocks "
                                f"and some test blocks (have {len(train_rows)} and {len(test_rows)})")
    return train_rows, test_rows


def _descend(config: TableSearchConfig, surrogate: TableSurrogate, space: TableSpace, blocks,
             check: Callable[[dict], float], stock: float, charged: int, sample: int, progress: bool) -> Outcome:
    """Descents through the surrogate from several restarts (the minibatch order decides where a short
    descent ends), the rounded tables along each path checked with the real driver; the best of them,
    or the stock table when none beats it, charged `charged` plus `sample` evaluations a check."""
    descent = Descent(surrogate, blocks, config.descent_batch, config.device)
    checked, trace, seen = [], [], set()
    for restart in range(config.restarts):
        found, steps = descent.run(config, progress, restart)
        trace += [(restart * config.steps + step, value) for step, value in steps]
        for values in _spread(found, config.checks):
            if values.tobytes() not in seen:
                seen.add(values.tobytes())
                checked.append(values)
    best = Outcome("surrogate", {}, charged + len(checked) * sample, stock, trace=trace)
    for values in checked:
        table = space.table(values)
        value = check(table)
        if value < best.objective:
            best.setting, best.objective = table, value
    return best


def _baselines(config: TableSearchConfig, space: TableSpace, check: Callable[[dict], float], trials: int,
               sample: int, outcomes: dict[str, Outcome], progress: bool) -> None:
    """Each baseline's table on the surrogate's budget in driver runs, into `outcomes`."""
    codec = table_codec(space)
    for name in config.baselines:
        started = time.time()
        table, objective, btrace = Baseline(name, codec, {}, config.seed).run(check, trials, progress)
        outcomes[name] = Outcome(name, table, len(btrace) * sample, objective, seconds=time.time() - started,
                                 trace=[(t * sample, v) for t, v in btrace])


def _held_out(program: LlvmMca, test_rows: pd.DataFrame, space: TableSpace, config: TableSearchConfig,
              outcomes: dict[str, Outcome], progress: bool) -> tuple[dict[str, float], np.ndarray]:
    """Every outcome's MAPE and tau on the held-out blocks (set on it), and each one's MAPE on the
    held-out blocks with a rarely trained opcode, with the mask of those blocks."""
    test_blocks, test_measured = list(test_rows["block"]), test_rows["measured"].to_numpy()
    rare_mask = _rare(program, test_blocks, space, config)
    rare = {}
    for outcome in tqdm(outcomes.values(), desc="held-out llvm-mca", unit="table", disable=not progress):
        outcome.test_mape, cycles = driver_mape(program, outcome.setting, test_blocks, test_measured)
        ok = np.isfinite(cycles)
        outcome.test_tau = kendall_tau(cycles[ok], test_measured[ok]) if ok.sum() > 1 else float("nan")
        r = rare_mask & ok
        rare[outcome.method] = float(np.mean(np.abs(cycles[r] - test_measured[r]) / test_measured[r])) if r.any() else float("nan")
    return rare, rare_mask


def _labels(config: TableSearchConfig) -> pd.DataFrame:
    frames = []
    for path in config.labels:
        frame = datasets.load(path)
        if not datasets.table_sampled(frame):
            raise SurrogateOpsError(f"{path} was not labeled under per-instruction tables: collect it with "
                                    "--sample-params N --per-instruction centred")
        if f"mca_cycles_{config.mcpu}" not in frame:
            raise SurrogateOpsError(f"{path} has no llvm-mca -mcpu={config.mcpu} labels")
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    return frame.iloc[: config.label_limit] if config.label_limit else frame


def _rare(program: LlvmMca, blocks: list[str], space: TableSpace, config: TableSearchConfig) -> np.ndarray:
    """Test blocks with a (non-variant) opcode the space leaves out: rare or absent in training."""
    annotated = parametric.annotate(program.path, blocks, config.mcpu)
    known = set(space.opcodes)
    return np.array([a is not None and any(not i.variant and i.opcode not in known for i in a) for a in annotated])


def _log(config: TableSearchConfig, space: TableSpace, outcomes: dict[str, Outcome], rare: dict[str, float],
         history: loop.History, train_blocks: int, test_blocks: int, trials: int, table_file: dict,
         register: bool) -> tuple[str, str | None]:
    """One MLflow run: figures per method, table.json (the surrogate's), tables.json (every
    method's), space.json, diff.csv and the plots; the surrogate's table registered."""
    name = f"llvm-mca-{config.mcpu}-table"
    with tracking.start_run(run_name=f"optimize-table-{config.mcpu}") as run:
        mlflow.set_tags({"program": "llvm-mca", "mcpu": config.mcpu, "mode": "optimize-table"})
        tracking.log_params({**{k: v for k, v in asdict(config).items() if k not in ("labels", "baselines")},
                           "labels": ",".join(config.labels), "baselines": ",".join(config.baselines),
                           "baseline_trials": trials, "train_blocks": train_blocks, "test_blocks": test_blocks,
                           "opcodes": len(space.opcodes), "tuned_values": space.size})
        mlflow.log_metrics({"surrogate_val_mape": history.best_val})
        for o in outcomes.values():
            mlflow.log_metrics({f"{o.method}_test_mape": o.test_mape, f"{o.method}_test_tau": o.test_tau,
                                f"{o.method}_evaluations": o.evaluations, f"{o.method}_rare_test_mape": rare[o.method],
                                **({f"{o.method}_objective": o.objective} if o.objective is not None else {})})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            learned = table_file["per_instruction"]
            (tmp / "table.json").write_text(json.dumps({**table_file, "_run_id": run.info.run_id}, indent=1) + "\n")
            (tmp / "tables.json").write_text(json.dumps({o.method: o.setting for o in outcomes.values()}) + "\n")
            (tmp / "space.json").write_text(json.dumps(space.to_dict()) + "\n")
            changes = pd.DataFrame(tables.diff_entries(table_file["_stock"], learned),
                                   columns=["opcode", "column", "stock", "learned"])
            changes.to_csv(tmp / "diff.csv", index=False)
            plots.optimization(outcomes, tmp / "optimization.png", f"llvm-mca -mcpu={config.mcpu}: per-instruction tables")
            plots.table_diff(changes, tmp / "diff.png", f"llvm-mca -mcpu={config.mcpu}: learned vs stock")
            mlflow.log_artifacts(str(tmp))
        run_id = run.info.run_id
    version = None
    if register:
        version = versions.register_artifact(name, run_id, "table.json", {
            "test_mape": f"{outcomes['surrogate'].test_mape:.4f}", "test_tau": f"{outcomes['surrogate'].test_tau:.4f}",
            "defaults_test_mape": f"{outcomes['defaults'].test_mape:.4f}", "changed_opcodes": str(len(learned))})
    return run_id, version
