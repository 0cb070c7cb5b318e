"""The training stage: a dataset in, a trained (and registered) surrogate out, tracked in MLflow.

`train(config) -> TrainResult` prepares the data and the network (`prepare`: rows, vocabulary,
fresh weights or a parent's), runs the training loop (`loop.fit`: MAPE loss, AdamW, warm-up and
cosine decay, early stopping on the validation split) with a checkpoint and MLflow metrics after
every epoch (resume with `resume=RUN_ID`; deterministic for a seed and thread count), then writes
the model directory (`export`), scores it on the test split (`evaluate`), plots, and logs it as a
pyfunc model, registered when `register` names it. It writes to the MLflow run: parameters,
per-epoch metrics, the dataset as a run input (with its digest), the vocabulary, plots and
test-split figures.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from surrogate_ops import models, plots
from surrogate_ops.blocks.batching import Flat
from surrogate_ops.blocks.tokenizer import Tokenizer
from surrogate_ops.builds.export import save_model_dir
from surrogate_ops.config import STREAM_ROWS, Device, EngineName, work_dir
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.files import written
from surrogate_ops.metrics import mape
from surrogate_ops.registry import tracking, versions
from surrogate_ops.registry.evaluate import evaluate
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training import distributed, loop, streaming


@dataclass(frozen=True)
class TrainConfig:
    data: str
    arch: str = models.DEFAULT_ARCH
    preset: str = "small"
    sizes: dict = field(default_factory=dict)  # explicit sizes over the preset, e.g. {"dim": 48}
    target: str = "mca"  # "mca": imitate llvm-mca's Total Cycles for mcpu; "measured": ground truth
    mcpu: str = "haswell"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300
    patience: int = 4
    seed: int = 0
    max_minutes: float | None = None
    train_limit: int | None = None  # use at most this many training blocks
    val_limit: int | None = None  # validate (early stopping) on at most this many blocks
    backoff: float = 0.05  # share of training tokens read as their relative (a v2 vocabulary's family or class)
    weights: dict = field(default_factory=dict)  # {source glob: factor}: matching training rows count this many times
    threads: int | None = None
    device: Device = "cpu"  # where the network trains: cpu, cuda, or auto (cuda where there is a GPU)
    precision: str = "fp32"  # fp32, or bf16 autocast (`loop.LoopConfig.precision`)
    stream: bool | None = None  # read the train split from disk as training goes; None: past STREAM_ROWS rows

    def loop_config(self, started: float) -> loop.LoopConfig:
        return loop.LoopConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                               warmup_steps=self.warmup_steps, patience=self.patience,
                               deadline=started + 60 * self.max_minutes if self.max_minutes else None,
                               device=self.device, precision=self.precision)


@dataclass
class TrainResult:
    run_id: str
    model: ModelDir
    metrics: dict[str, float]
    registered: versions.Registered | None
    epochs_run: int
    seconds: float


def target_column(target: str, mcpu: str) -> str:
    if target == "mca":
        return f"mca_cycles_{mcpu}"
    if target == "measured":
        return "measured"
    raise SurrogateOpsError(f"unknown target {target!r}: use mca or measured")


def training_rows(frame: pd.DataFrame, target: str, mcpu: str, max_instructions: int) -> pd.DataFrame:
    """Rows usable for the target (`usable`), a block from several sources once where the label is
    llvm-mca's (the block's own)."""
    rows = usable(frame, target, mcpu, max_instructions)
    if _dedupe(frame, target):
        rows = rows.drop_duplicates("block")
    if rows.empty:
        raise SurrogateOpsError(f"no rows with a {target_column(target, mcpu)} target in the dataset")
    return rows


def usable(frame: pd.DataFrame, target: str, mcpu: str, max_instructions: int) -> pd.DataFrame:
    """Rows usable for the target: labeled, positive, within the model's length; for measured
    targets only measurements on `mcpu`, BHive may-alias blocks left out."""
    column = target_column(target, mcpu)
    if column not in frame:
        raise SurrogateOpsError(f"the dataset has no {column} column (collect it with --mcpu {mcpu})")
    rows = frame[frame[column].notna() & (frame[column] > 0)]
    if target == "measured":
        rows = datasets.measured_rows(rows, mcpu)
    return rows[rows["block"].str.count("\n") < max_instructions]


def _dedupe(frame: pd.DataFrame, target: str) -> bool:
    return target != "measured" and "setting" not in frame


@dataclass
class Prepared:
    """What the loop trains on: the network, its vocabulary and the rows of each split."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    train_rows: pd.DataFrame | streaming.Rows  # in memory, or read from disk as training goes
    val_rows: pd.DataFrame
    column: str
    parameter_names: list[str]
    added: list[str]

    def examples(self, rows: pd.DataFrame, chunk: int = 65536) -> tuple[Flat, np.ndarray, np.ndarray | None]:
        """The blocks of `rows` tokenized as one compact `Flat` (int32 ids and counts; a chunk of
        blocks at a time: a million blocks cost a quarter of a gigabyte, not a tuple per
        instruction that outlives the chunk), their targets and (for a conditioned surrogate) settings."""
        parts = []
        for i in range(0, len(rows), chunk):
            part = Flat.of([self.tokenizer.encode_block(b) for b in rows["block"].iloc[i: i + chunk]])
            parts.append(Flat(*(a.astype(np.int32) for a in (part.tokens, part.per_instruction, part.per_block))))
        scaled = datasets.scaled_parameters(rows, self.parameter_names) if self.parameter_names else None
        return Flat.concat(parts), rows[self.column].to_numpy(), scaled

    def batches(self, rows: pd.DataFrame, config: TrainConfig, on: torch.device, ahead: bool = False):
        """`rows` as training batches: held on a GPU, or padded per batch on the host (`ahead`: a
        streamed window, prepared on a thread of its own while the last one trains)."""
        encoded, targets, scaled = self.examples(rows)
        backoff = self.tokenizer.backoff_ids()
        if on.type == "cuda":
            return loop.DeviceBatches(encoded, targets, scaled, config.batch_size, on, backoff, config.backoff, ahead)
        return BackoffBatches(encoded, targets, scaled, config.batch_size, backoff, config.backoff)

    def training_batches(self, config: TrainConfig, on: torch.device) -> loop.Batches:
        if isinstance(self.train_rows, streaming.Rows):
            return streaming.Stream(self.train_rows, lambda rows, rng: self.batches(
                weighted(rows, config.weights, rng), config, on, ahead=True), config.batch_size)
        return self.batches(self.train_rows, config, on)


def _blocks(rows: pd.DataFrame | streaming.Rows):
    return rows.blocks() if isinstance(rows, streaming.Rows) else rows["block"]


def _median(rows: pd.DataFrame | streaming.Rows, column: str) -> float:
    return float(np.median(rows.targets) if isinstance(rows, streaming.Rows) else rows[column].median())


def prepare(config: TrainConfig, frame: pd.DataFrame, parent: ModelDir | None, state: dict | None,
            rng: np.random.Generator, stream: bool = False) -> Prepared:
    """The rows of each split and the network: resumed from a checkpoint, grown from `parent`
    (its vocabulary extended with the new data's tokens), or fresh; wrapped as a
    parameter-conditioned surrogate when the dataset was labeled under sampled settings. With
    `stream`, `frame` holds the evaluation splits only and the train split stays on disk."""
    # a confident parent's error head is left behind: fit a new one after training moved the network
    base = models.network(parent.module()) if parent is not None else models.build(
        config.arch, vocab_size=2, preset=config.preset, **config.sizes)  # sizes only
    if stream and datasets.parameter_columns(frame):
        raise SurrogateOpsError("a dataset labeled under sampled settings trains in memory (leave out --stream)")
    train_rows, val_rows = _split_rows(config, frame, base.config.max_instructions, rng, stream)
    added: list[str] = []
    if state is not None:
        tokenizer, model = Tokenizer.from_dict(state["tokenizer"]), models.from_checkpoint(state["model"])
    elif parent is not None:
        old = parent.tokenizer()
        tokenizer = old.upgraded()  # a v1 parent gains backoff: same ids, its tokens' relatives after them
        added = [t for t in tokenizer.vocab if t not in old.vocab] + tokenizer.extend(_blocks(train_rows))
        model = _grow_vocabulary(base, len(tokenizer), tokenizer.backoff_ids())
    else:
        tokenizer = Tokenizer.build(_blocks(train_rows), **models.tokenizer_options(base.config))
        model = models.build(config.arch, vocab_size=len(tokenizer), preset=config.preset, **config.sizes)
        model.head.log_scale.fill_(float(np.log(_median(train_rows, target_column(config.target, config.mcpu)))))
    if datasets.table_sampled(frame):
        raise SurrogateOpsError("this dataset was labeled under sampled per-instruction tables: its surrogate is "
                                "trained by `surrogate-ops optimize-table --labels DATASET`")
    parameter_names = datasets.parameter_columns(frame)
    if models.is_conditioned(model) and not parameter_names:
        raise SurrogateOpsError("a parameter-conditioned surrogate trains on data collected with --sample-params")
    if parameter_names and not models.is_conditioned(model):
        model = models.Conditioned.wrap(model, tuple(parameter_names))
    if models.is_conditioned(model) and list(model.config.parameters) != parameter_names:
        raise SurrogateOpsError(f"the model takes the parameters {', '.join(model.config.parameters)}; "
                                f"the dataset has {', '.join(parameter_names)}")
    return Prepared(model, tokenizer, train_rows, val_rows, target_column(config.target, config.mcpu),
                    parameter_names, added)


def _split_rows(config: TrainConfig, frame: pd.DataFrame, max_instructions: int, rng: np.random.Generator,
                stream: bool = False) -> tuple[pd.DataFrame | streaming.Rows, pd.DataFrame]:
    rows = training_rows(frame, config.target, config.mcpu, max_instructions)
    val_rows = rows[rows["split"] == "val"]
    if config.val_limit is not None and len(val_rows) > config.val_limit:
        val_rows = val_rows.iloc[: config.val_limit]
    if stream:  # the train split on disk; weights apply to each window as it is read
        columns = [c for c in pq.read_schema(config.data).names if c != "hex"]
        train_rows = streaming.Rows(config.data, columns,
                                    lambda group: usable(group, config.target, config.mcpu, max_instructions),
                                    target_column(config.target, config.mcpu), _dedupe(frame, config.target),
                                    config.train_limit, rng)
        if val_rows.empty:
            raise SurrogateOpsError("need rows in the val split")
        check_weights(config.weights, train_rows.sources)
        return train_rows, val_rows
    train_rows = rows[rows["split"] == "train"]
    if config.train_limit is not None and len(train_rows) > config.train_limit:
        train_rows = train_rows.iloc[np.sort(rng.permutation(len(train_rows))[: config.train_limit])]
    if config.weights:  # the distinct sources of a large training set take a while to find
        check_weights(config.weights, train_rows["source"].astype(str).unique() if "source" in train_rows else [""])
    train_rows = weighted(train_rows, config.weights, rng)
    if train_rows.empty or val_rows.empty:
        raise SurrogateOpsError(f"need rows in both train and val splits (have {len(train_rows)} and {len(val_rows)})")
    return train_rows, val_rows


def check_weights(weights: dict[str, float], sources: Iterable[str]) -> None:
    """Every factor positive, every glob deciding some of the training rows' `sources` (the first
    glob a source matches decides its factor: a glob whose sources earlier ones took decides none)."""
    undecided = set(sources)
    for glob, factor in weights.items():
        if not factor > 0:
            raise SurrogateOpsError(f"weight {glob}={factor}: a factor must be positive")
        hit = {s for s in undecided if fnmatch.fnmatchcase(s, glob)}
        if not hit:
            raise SurrogateOpsError(f"weight {glob}={factor}: no training row's source matches {glob!r}"
                                    + (" that an earlier --weight has not taken" if len(weights) > 1 else ""))
        undecided -= hit


def weighted(rows: pd.DataFrame, weights: dict[str, float], rng: np.random.Generator) -> pd.DataFrame:
    """`rows` with those whose source matches a glob of `weights` repeated: factor 3 three times, 1.5
    once and half of them again, 0.5 half of them (the first glob a source matches decides; the
    weights `check_weights`ed against all the training rows first)."""
    if not weights:
        return rows
    sources = rows["source"].astype(str) if "source" in rows else pd.Series("", index=rows.index)
    factors = pd.Series(1.0, index=rows.index)
    decided = pd.Series(False, index=rows.index)
    for glob, factor in weights.items():
        hit = sources.map(lambda s, g=glob: fnmatch.fnmatchcase(s, g)) & ~decided
        factors[hit], decided = float(factor), decided | hit
    whole = np.floor(factors.to_numpy()).astype(int)
    whole += rng.random(len(rows)) < factors.to_numpy() - whole
    return rows.iloc[np.repeat(np.arange(len(rows)), whole)]


def train(config: TrainConfig, register: str | None = None, resume: str | None = None, progress: bool = True,
          init_from: ModelDir | None = None, run_tags: dict | None = None,
          on_start: Callable[[str], None] | None = None, version_tags: dict | None = None,
          log_model: bool = True) -> TrainResult | None:
    """Train, evaluate on the test split, log everything to MLflow, and register when asked.
    Under torchrun (several processes, `training.distributed`) every process trains its share and
    rank 0 alone does the rest; the others return None.

    `init_from` (a model directory) starts from a trained surrogate instead of random weights, its
    vocabulary extended with the new data's unseen tokens (fine-tuning). `version_tags` go on the
    registered version too; `log_model=False` keeps the model directory but logs no MLflow model
    (studies that train many). Inside an active run, the run is a nested child."""
    started = time.time()
    group = distributed.Group.join(loop.device(config.device))  # a missing GPU fails here, before the data is read
    if resume is None and group.active:  # a restarted group (torchrun, Ray Train) continues its run
        remembered = distributed.remembered_run(distributed.job_id()) if group.leader else None
        resume = group.share(remembered if remembered and _checkpoint_path(remembered).is_file() else None)
    state = _load_checkpoint(resume) if resume else None
    if state is not None:
        config = TrainConfig(**state["config"])
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    stream = streams(config)
    if stream:
        streaming.map_large_allocations()
    # streamed: the val split alone in memory while training (test is read to score), the train split
    # read from disk as training goes
    frame = datasets.load(config.data, splits=("val",), leave_out=("hex",)) if stream else datasets.load(config.data)
    prepared = prepare(config, frame, init_from, state, rng, stream)
    on = loop.device(config.device)
    batches = prepared.training_batches(config, on)
    val_encoded, val_targets, val_units = prepared.examples(prepared.val_rows)

    def fit(on_epoch=None):
        return loop.fit(prepared.model, distributed.Shard(batches, group) if group.active else batches,
                        config.loop_config(started), rng,
                        validate=lambda m: mape(loop.predict(m, val_encoded, val_units), val_targets),
                        resume=state["loop"] if state is not None else None, progress=progress and group.leader,
                        desc=f"training {config.arch}", on_epoch=on_epoch, group=group)

    if not group.leader:  # rank 0 keeps the run, the checkpoints and the model
        fit()
        group.leave()
        return None
    nested = mlflow.active_run() is not None
    with tracking.start_run(run_id=resume, run_name=None if resume else _run_name(config), nested=nested) as run:
        run_id = run.info.run_id
        distributed.remember_run(distributed.job_id(), run_id)
        if on_start:
            on_start(run_id)
        if state is None:
            _log_start(config, prepared, frame, run_tags, group, stream)
        model, history = fit(_epoch_logger(run_id, config, prepared.tokenizer, prepared.model))
        if stream:  # the test split, read now that training's memory is free
            del batches, val_encoded
            frame = datasets.load(config.data, splits=("test",), leave_out=("hex",))
        metrics = {"best_val_mape": history.best_val, "train_seconds": time.time() - started,
                   "epochs_run": history.epochs_run}
        digest = mlflow.get_run(run_id).data.tags.get("dataset_digest", "")
        model_dir = _save(model, prepared, config, frame, digest, init_from, run_id)
        model_dir, metrics = score(model_dir, frame, config.mcpu, config.arch, metrics)
        registered = None
        if log_model:
            tags = {"program": "llvm-mca", "program_version": model_dir.meta["program_version"], "mcpu": config.mcpu,
                    "arch": config.arch, "preset": config.preset, "target": config.target, "dataset_digest": digest,
                    "dataset_path": str(Path(config.data).resolve()),
                    "tracked_target": prepared.column if prepared.column in frame else "",
                    **{k: f"{v:.6g}" for k, v in metrics.items()}, **(version_tags or {})}
            registered = versions.log_model(model_dir, example=list(prepared.val_rows["block"][:2]), name=register,
                                            tags=tags)
    group.leave()
    return TrainResult(run_id, model_dir, metrics, registered, history.epochs_run, metrics["train_seconds"])


def streams(config: TrainConfig) -> bool:
    """Whether the train split is read from disk as training goes (`training.streaming`): as asked,
    or for a Parquet dataset of more than STREAM_ROWS rows."""
    if config.stream is not None:
        return config.stream
    path = Path(config.data)
    return path.suffix == ".parquet" and path.is_file() and streaming.row_count(path) > STREAM_ROWS


class BackoffBatches(loop.BlockBatches):
    """Training batches in which each token is read as its relative (`Tokenizer.backoff_ids`) with
    probability `share`, so that a family or register class the service backs off to has learned
    what its members cost."""

    def __init__(self, encoded, targets, scaled, batch_size: int, backoff: list[int], share: float):
        super().__init__(encoded, targets, scaled, batch_size)
        self.backoff = torch.tensor(backoff, dtype=torch.long)
        self.share = share if bool((self.backoff != torch.arange(len(backoff))).any()) else 0.0

    def epoch(self, rng: np.random.Generator):
        for (tokens, *extra), target in super().epoch(rng):
            if self.share:
                swap = torch.from_numpy(rng.random(tokens.shape) < self.share)
                tokens = torch.where(swap, self.backoff[tokens], tokens)
            yield (tokens, *extra), target


def _run_name(config: TrainConfig) -> str:
    return f"{config.arch}-{config.preset}-{config.target}-{config.mcpu}"


def _log_start(config: TrainConfig, prepared: Prepared, frame: pd.DataFrame, run_tags: dict | None,
               group: distributed.Group, stream: bool = False) -> None:
    """A new run's tags, parameters and dataset input (with its digest)."""
    model = prepared.model
    mlflow.set_tags({"program": "llvm-mca", "mcpu": config.mcpu, "target": config.target, "arch": config.arch,
                     **(run_tags or {})})
    params = {k: v for k, v in dataclasses.asdict(config).items() if k != "sizes"}
    params.update({f"size_{k}": v for k, v in dataclasses.asdict(model.config).items()})
    params.update({"parameters": models.parameter_count(model), "vocab_size": len(prepared.tokenizer),
                   "train_blocks": len(prepared.train_rows), "val_blocks": len(prepared.val_rows),
                   "vocab_added": len(prepared.added), "threads": torch.get_num_threads(), "processes": group.world})
    params["streamed"] = stream
    tracking.log_params(params)
    source, name = str(Path(config.data).resolve()), Path(config.data).name
    if stream:  # the rows are not in memory: the dataset named by its file, its digest read from the footer
        dataset = MetaDataset(resolve_dataset_source(source), name=name, digest=datasets.file_digest(config.data))
    else:
        dataset = mlflow.data.from_pandas(frame.drop(columns=[c for c in ("hex",) if c in frame]), source=source,
                                          name=name, targets=prepared.column)
    mlflow.log_input(dataset, context="training")
    mlflow.set_tag("dataset_digest", dataset.digest)


def _epoch_logger(run_id: str, config: TrainConfig, tokenizer: Tokenizer, model: torch.nn.Module):
    """After each epoch: its metrics to MLflow, and a checkpoint that `resume` continues from."""

    def log(record: dict, state: dict) -> None:
        mlflow.log_metrics(record, step=len(state["history"]))
        _save_checkpoint(run_id, {"config": dataclasses.asdict(config), "tokenizer": tokenizer.to_dict(),
                                  "model": models.to_checkpoint(model), "loop": state})

    return log


def _save(model: torch.nn.Module, prepared: Prepared, config: TrainConfig, frame: pd.DataFrame, digest: str,
          parent: ModelDir | None, run_id: str) -> ModelDir:
    """The model directory (ONNX checked against torch on validation blocks; agreement logged)."""
    meta = {"program": "llvm-mca", "program_version": str(frame.attrs.get("program_version", "unknown")),
            "mcpu": config.mcpu, "target": config.target, "dataset_digest": digest, "run_id": run_id,
            **({"parent": str(parent)} if parent is not None else {})}
    if prepared.parameter_names:
        # llvm-mca evaluations this surrogate cost: the blocks its sampled dataset labeled (and its
        # conditioned parent's); `optimize` charges them against the budget
        inherited = parent.program_parameters.get("evaluations", 0) if parent is not None else 0
        meta["program_parameters"] = {"names": prepared.parameter_names,
                                      "expert_defaults": json.loads(frame.attrs["expert_defaults"]),
                                      "evaluations": int(frame["block"].nunique()) + inherited}
    model_dir, agreement = save_model_dir(model, prepared.tokenizer, meta, work_dir() / "models" / run_id,
                                          check_blocks=list(prepared.val_rows["block"][:64]))
    mlflow.log_metrics({"onnx_max_abs_diff": agreement.max_abs, "onnx_max_rel_diff": agreement.max_rel})
    return model_dir


def score(model_dir: ModelDir, frame: pd.DataFrame, mcpu: str, title: str, metrics: dict) -> tuple[ModelDir, dict]:
    """Test-split figures (logged to the active run and written into the model's metadata), plots
    titled `title`, and the vocabulary."""
    result = evaluate(Predictor(model_dir, engine=EngineName.ONNXRUNTIME), frame, mcpu, split="test")
    metrics = {**{f"test_{k}": v for k, v in result.metrics.items()}, **metrics}
    mlflow.log_metrics(metrics)
    model_dir = model_dir.with_meta(metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for target in [c for c in (f"mca_cycles_{mcpu}", "measured") if c in result.frame]:
            if result.frame[target].notna().sum() > 1:
                name = "mca" if target.startswith("mca") else "measured"
                plots.predicted_vs_target(result.frame, target, Path(tmp) / f"test_predicted_vs_{name}.png",
                                          f"{title} on the test split")
                plots.error_by_length(result.frame, target, Path(tmp) / f"test_error_by_length_vs_{name}.png",
                                      f"{title}: error by block length")
        mlflow.log_artifacts(tmp, artifact_path="plots")
    mlflow.log_artifact(str(model_dir.vocab))
    return model_dir, metrics


def _checkpoint_path(run_id: str) -> Path:
    return work_dir() / "checkpoints" / run_id / "last.pt"


def _load_checkpoint(run_id: str) -> dict:
    path = _checkpoint_path(run_id)
    if not path.is_file():
        raise SurrogateOpsError(f"no checkpoint for run {run_id} at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def _save_checkpoint(run_id: str, state: dict) -> None:
    with written(_checkpoint_path(run_id)) as tmp:
        torch.save(state, tmp)


def _grow_vocabulary(model: torch.nn.Module, vocab_size: int, backoff: list[int] | None = None) -> torch.nn.Module:
    """The same model with room for `vocab_size` tokens: learned rows kept, new rows fresh; a new
    relative (`backoff`: per id, its relative's id) starts as the mean of the learned tokens that back off to it."""
    checkpoint = models.to_checkpoint(model)
    conditioned = models.is_conditioned(model)
    key = "block.token.weight" if conditioned else "token.weight"
    old = checkpoint["state_dict"][key]
    if vocab_size == old.shape[0]:
        return model
    (checkpoint["config"]["base_config"] if conditioned else checkpoint["config"])["vocab_size"] = vocab_size
    grown = torch.cat([old, torch.randn(vocab_size - old.shape[0], old.shape[1]) * 0.02])
    members: dict[int, list[int]] = {}
    for i, r in enumerate(backoff or []):
        if i < old.shape[0] <= r:
            members.setdefault(r, []).append(i)
    for r, rows in members.items():
        grown[r] = old[rows].mean(0)
    return models.from_checkpoint({**checkpoint, "state_dict": {**checkpoint["state_dict"], key: grown}})
