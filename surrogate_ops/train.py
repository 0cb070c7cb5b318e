"""Training a surrogate of llvm-mca (or of measured throughput), tracked in MLflow.

`train(config) -> TrainResult` reads a dataset from `collect`, builds the vocabulary on the train
split, and fits the chosen architecture with the seed paper's loss, mean absolute percentage error:
AdamW, linear warm-up then cosine decay, early stopping on the validation split, a checkpoint per
epoch (resume with `resume=RUN_ID`), deterministic for a seed and thread count. It writes to the
MLflow run: parameters, per-epoch metrics, the dataset as a run input (with its digest), the
vocabulary, plots, test-split figures, and the model (pyfunc), registered when `register` names it.
"""

from __future__ import annotations

import copy
import json
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from surrogate_ops import datasets, models, plots, registry, tracking
from surrogate_ops.batching import buckets, pad, run_batched
from surrogate_ops.config import work_dir
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.evaluate import evaluate
from surrogate_ops.export import save_model_dir
from surrogate_ops.inference import Predictor
from surrogate_ops.tokenizer import Tokenizer


@dataclass(frozen=True)
class TrainConfig:
    data: str
    arch: str = models.FAST
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
    threads: int | None = None


@dataclass
class TrainResult:
    run_id: str
    model_dir: Path
    metrics: dict[str, float]
    registered: registry.Registered | None
    epochs_run: int
    seconds: float


def target_column(target: str, mcpu: str) -> str:
    if target == "mca":
        return f"mca_cycles_{mcpu}"
    if target == "measured":
        return "measured"
    raise SurrogateOpsError(f"unknown target {target!r}: use mca or measured")


def training_rows(frame: pd.DataFrame, target: str, mcpu: str, max_instructions: int) -> pd.DataFrame:
    """Rows usable for the target: labeled, positive, within the model's length; for measured
    targets only measurements on `mcpu`, BHive may-alias blocks left out."""
    column = target_column(target, mcpu)
    if column not in frame:
        raise SurrogateOpsError(f"the dataset has no {column} column (collect it with --mcpu {mcpu})")
    rows = frame[frame[column].notna() & (frame[column] > 0)]
    if target == "measured":
        rows = rows[(rows["measured_mcpu"] == mcpu) & ~rows["may_alias"].astype(bool)]
    rows = rows[rows["block"].str.count("\n") < max_instructions]
    if rows.empty:
        raise SurrogateOpsError(f"no rows with a {column} target in the dataset")
    return rows


def mape_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (torch.abs(predicted - target) / target).mean()


def _schedule(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _predict(model: torch.nn.Module, encoded: list, units: np.ndarray | None = None, batch_size: int = 512) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return run_batched(lambda *inputs: model(*map(torch.from_numpy, inputs)).numpy(), encoded, batch_size, units)


def _checkpoint_path(run_id: str) -> Path:
    return work_dir() / "checkpoints" / run_id / "last.pt"


def train(config: TrainConfig, register: str | None = None, tracking_uri: str | None = None,
          resume: str | None = None, progress: bool = True, init_from: Path | None = None,
          run_tags: dict | None = None, on_start: Callable[[str], None] | None = None,
          version_tags: dict | None = None, log_model: bool = True) -> TrainResult:
    """Train, evaluate on the test split, log everything to MLflow, and register when asked.

    `init_from` (a model directory) starts from a trained surrogate instead of random weights, its
    vocabulary extended with the new data's unseen tokens (fine-tuning). `version_tags` go on the
    registered version too; `log_model=False` keeps the model directory but logs no MLflow model
    (experiments that train many). Inside an active run, the run is a nested child."""
    started = time.time()
    state = None
    if resume:
        path = _checkpoint_path(resume)
        if not path.is_file():
            raise SurrogateOpsError(f"no checkpoint for run {resume} at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = TrainConfig(**state["config"])
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    frame = datasets.load(config.data)
    if init_from is not None:
        base = models.from_checkpoint(torch.load(init_from / "model.pt", map_location="cpu", weights_only=True))
        tokenizer = Tokenizer.load(init_from / "vocab.json")
    else:
        base = models.build(config.arch, vocab_size=2, preset=config.preset, **config.sizes)  # sizes only
        tokenizer = None
    limit = base.config.max_instructions
    rows = training_rows(frame, config.target, config.mcpu, limit)
    column = target_column(config.target, config.mcpu)
    train_rows = rows[rows["split"] == "train"]
    if config.train_limit is not None and len(train_rows) > config.train_limit:
        train_rows = train_rows.iloc[np.sort(rng.permutation(len(train_rows))[: config.train_limit])]
    val_rows = rows[rows["split"] == "val"]
    if config.val_limit is not None and len(val_rows) > config.val_limit:
        val_rows = val_rows.iloc[: config.val_limit]
    if train_rows.empty or val_rows.empty:
        raise SurrogateOpsError(f"need rows in both train and val splits (have {len(train_rows)} and {len(val_rows)})")

    added: list[str] = []
    if state is not None:
        tokenizer = Tokenizer.from_dict(state["tokenizer"])
        model = models.from_checkpoint(state["model"])
    elif init_from is not None:
        added = tokenizer.extend(train_rows["block"])
        model = _grow_vocabulary(base, len(tokenizer))
    else:
        tokenizer = Tokenizer.build(train_rows["block"], max_tokens=base.config.max_tokens)
        model = models.build(config.arch, vocab_size=len(tokenizer), preset=config.preset, **config.sizes)
        model.head.log_scale.fill_(float(np.log(train_rows[column].median())))
    # a dataset labeled under sampled llvm-mca settings trains a parameter-conditioned surrogate
    parameter_names = datasets.parameter_columns(frame)
    if models.is_conditioned(model) and not parameter_names:
        raise SurrogateOpsError("a parameter-conditioned surrogate trains on data collected with --sample-params")
    if parameter_names and not models.is_conditioned(model):
        model = models.Conditioned.wrap(model, tuple(parameter_names))
    if models.is_conditioned(model) and list(model.config.parameters) != parameter_names:
        raise SurrogateOpsError(f"the model takes the parameters {', '.join(model.config.parameters)}; "
                                f"the dataset has {', '.join(parameter_names)}")
    u_train = datasets.parameter_units(train_rows, parameter_names) if parameter_names else None
    u_val = datasets.parameter_units(val_rows, parameter_names) if parameter_names else None

    enc_train = [tokenizer.encode_block(b) for b in train_rows["block"]]
    enc_val = [tokenizer.encode_block(b) for b in val_rows["block"]]
    y_train = torch.tensor(train_rows[column].to_numpy(), dtype=torch.float32)
    y_val = val_rows[column].to_numpy()

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(buckets(enc_train, config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    # at most a tenth of the run warms up, so short runs on small data still train at full rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(max(1, min(config.warmup_steps, total_steps // 10)), total_steps))
    epoch, best_val, best_state, stale = 0, float("inf"), copy.deepcopy(model.state_dict()), 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, best_val, best_state, stale = state["epoch"], state["best_val"], state["best_state"], state["stale"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    tracking.configure(tracking_uri)
    run_name = f"{config.arch}-{config.preset}-{config.target}-{config.mcpu}"
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=resume, run_name=None if resume else run_name, nested=nested) as run:
        if on_start:
            on_start(run.info.run_id)
        if state is None:
            mlflow.set_tags({"program": "llvm-mca", "mcpu": config.mcpu, "target": config.target,
                             "arch": config.arch, **(run_tags or {})})
            params = {k: v for k, v in dataclasses.asdict(config).items() if k != "sizes"}
            params.update({f"size_{k}": v for k, v in dataclasses.asdict(model.config).items()})
            params.update({"parameters": models.parameter_count(model), "vocab_size": len(tokenizer),
                           "train_blocks": len(train_rows), "val_blocks": len(val_rows),
                           "vocab_added": len(added), "threads": torch.get_num_threads()})
            mlflow.log_params(params)
            dataset = mlflow.data.from_pandas(frame.drop(columns=[c for c in ("hex",) if c in frame]),
                                              source=str(Path(config.data).resolve()), name=Path(config.data).name,
                                              targets=column)
            mlflow.log_input(dataset, context="training")
            mlflow.set_tag("dataset_digest", dataset.digest)
        digest = mlflow.get_run(run.info.run_id).data.tags.get("dataset_digest", "")

        bar = tqdm(total=config.epochs, initial=epoch, desc=f"training {config.arch}", unit="epoch", disable=not progress)
        deadline = started + 60 * config.max_minutes if config.max_minutes else None
        while epoch < config.epochs and stale < config.patience and (deadline is None or time.time() < deadline):
            model.train()
            batches = buckets(enc_train, config.batch_size, order=rng.permutation(len(enc_train)))
            rng.shuffle(batches)
            epoch_start, total, count = time.time(), 0.0, 0
            for index in tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, unit="batch"):
                tokens = torch.from_numpy(pad([enc_train[i] for i in index]))
                extra = () if u_train is None else (torch.from_numpy(u_train[index]),)
                loss = mape_loss(model(tokens, *extra), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(index)
                count += len(index)
                if deadline is not None and time.time() > deadline:
                    break
            val = float(np.mean(np.abs(_predict(model, enc_val, u_val) - y_val) / y_val))
            epoch += 1
            if val < best_val:
                best_val, best_state, stale = val, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
            mlflow.log_metrics({"train_mape": total / max(count, 1), "val_mape": val, "lr": scheduler.get_last_lr()[0],
                                "epoch_seconds": time.time() - epoch_start}, step=epoch)
            bar.set_postfix(train=f"{100 * total / max(count, 1):.1f}%", val=f"{100 * val:.1f}%", best=f"{100 * best_val:.1f}%")
            bar.update(1)
            _save_checkpoint(run.info.run_id, {
                "config": dataclasses.asdict(config), "tokenizer": tokenizer.to_dict(), "model": models.to_checkpoint(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "best_val": best_val, "best_state": best_state, "stale": stale, "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()})
        bar.close()

        model.load_state_dict(best_state)
        seconds = time.time() - started
        out_dir = work_dir() / "models" / run.info.run_id
        meta = {"program": "llvm-mca", "program_version": _program_version(frame), "mcpu": config.mcpu,
                "target": config.target, "dataset_digest": digest, "run_id": run.info.run_id,
                **({"parent": str(init_from)} if init_from is not None else {})}
        if parameter_names:
            # llvm-mca evaluations this surrogate cost: the blocks its sampled dataset labeled (and its
            # conditioned parent's); `optimize` charges them against the budget
            inherited = json.loads((init_from / "surrogate.json").read_text()).get("program_parameters", {}) \
                if init_from is not None else {}
            meta["program_parameters"] = {"names": parameter_names,
                                          "expert_defaults": json.loads(frame.attrs["expert_defaults"]),
                                          "evaluations": int(frame["block"].nunique()) + inherited.get("evaluations", 0)}
        agreement = save_model_dir(model, tokenizer, meta, out_dir, check_blocks=list(val_rows["block"][:64]))
        mlflow.log_metrics({"onnx_max_abs_diff": agreement.max_abs, "onnx_max_rel_diff": agreement.max_rel})
        result = evaluate(Predictor(out_dir, engine="onnxruntime"), frame, config.mcpu, split="test")
        metrics = {f"test_{k}": v for k, v in result.metrics.items()}
        metrics.update({"best_val_mape": best_val, "train_seconds": seconds, "epochs_run": epoch})
        mlflow.log_metrics(metrics)
        meta_path = out_dir / "surrogate.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "metrics": metrics}, indent=1, sort_keys=True))
        tracked = column if column in result.frame else None
        with tempfile.TemporaryDirectory() as tmp:
            for target in [c for c in (f"mca_cycles_{config.mcpu}", "measured") if c in result.frame]:
                if result.frame[target].notna().sum() > 1:
                    name = "mca" if target.startswith("mca") else "measured"
                    plots.predicted_vs_target(result.frame, target, Path(tmp) / f"test_predicted_vs_{name}.png",
                                              f"{config.arch} on the test split")
                    plots.error_by_length(result.frame, target, Path(tmp) / f"test_error_by_length_vs_{name}.png",
                                          f"{config.arch}: error by block length")
            mlflow.log_artifacts(tmp, artifact_path="plots")
        mlflow.log_artifact(str(out_dir / "vocab.json"))
        tags = {"program": "llvm-mca", "program_version": meta["program_version"], "mcpu": config.mcpu,
                "arch": config.arch, "preset": config.preset, "target": config.target, "dataset_digest": digest,
                "dataset_path": str(Path(config.data).resolve()), "tracked_target": tracked or "",
                **{k: f"{v:.6g}" for k, v in metrics.items()}}
        tags.update(version_tags or {})
        registered = None
        if log_model:
            registered = registry.log_model(out_dir, example=list(val_rows["block"][:2]), name=register, tags=tags)
    return TrainResult(run.info.run_id, out_dir, metrics, registered, epoch, seconds)


def _program_version(frame: pd.DataFrame) -> str:
    """The llvm-mca version that labeled the dataset (recorded by `collect`)."""
    return str(frame.attrs.get("program_version", "unknown"))


def _save_checkpoint(run_id: str, state: dict) -> None:
    path = _checkpoint_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _grow_vocabulary(model: torch.nn.Module, vocab_size: int) -> torch.nn.Module:
    """The same model with room for `vocab_size` tokens: learned rows kept, new rows fresh."""
    checkpoint = models.to_checkpoint(model)
    conditioned = models.is_conditioned(model)
    key = "block.token.weight" if conditioned else "token.weight"
    old = checkpoint["state_dict"][key]
    if vocab_size == old.shape[0]:
        return model
    (checkpoint["config"]["base_config"] if conditioned else checkpoint["config"])["vocab_size"] = vocab_size
    grown = models.from_checkpoint({**checkpoint, "state_dict": {**checkpoint["state_dict"],
                                    key: torch.cat([old, torch.randn(vocab_size - old.shape[0], old.shape[1]) * 0.02])}})
    return grown
