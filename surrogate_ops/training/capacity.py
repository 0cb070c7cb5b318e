"""`study capacity`: accuracy against speed over network sizes, trained on the same data.

Surrogate compilation trades fidelity for speed, and the network is most of a block's cost once
the front end is compiled. Each size (an architecture, a preset of `presets/model_sizes.json`, and
explicit sizes over it, e.g. `dep:tiny:dim=16:layers=1`) is trained with the training stage's
`train` on the same dataset, seed and budget, scored on the same test split against llvm-mca (MAPE,
Kendall's tau), and timed on the split's blocks with ONNX Runtime on every core: the network alone
from tokens and the whole path from text, warm, the median of `repeats`, all sizes in turns. A size
is on the Pareto front when no other is both at least as fast and at least as accurate. The table
(`capacity.csv`, `capacity.md`) and the plot (`capacity.png`, MAPE against blocks/s) go to `out`
and to the study's MLflow run, each size a nested run of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from surrogate_ops import models, plots, presets
from surrogate_ops.config import DEFAULT_MCPU, EngineName
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import tracking
from surrogate_ops.registry.evaluate import select
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training.train import TrainConfig, train

DEFAULT_SIZES = "dep:tiny:dim=16:layers=1,dep:tiny:layers=1,dep:tiny,dep:small"


@dataclass(frozen=True)
class Size:
    """One network of the sweep: an architecture at a preset, with explicit sizes over it."""

    arch: str
    preset: str
    sizes: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ":".join([self.arch, self.preset, *(f"{k}={v}" for k, v in self.sizes.items())])

    @classmethod
    def parse(cls, text: str) -> Size:
        """`arch:preset[:name=value...]`, e.g. `dep:tiny:dim=16:layers=1`; SurrogateOpsError naming the culprit."""
        parts = text.strip().split(":")
        if len(parts) < 2 or not all(parts[:2]):
            raise SurrogateOpsError(f"size {text!r}: write it as arch:preset[:name=value...], e.g. dep:tiny:dim=16")
        arch, preset, *rest = parts
        table = presets.load("model_sizes")
        if arch not in table:
            raise SurrogateOpsError(f"size {text!r}: unknown architecture {arch!r}; choose from "
                                    f"{', '.join(k for k in table if not k.startswith('_'))}")
        if preset not in table[arch]:
            raise SurrogateOpsError(f"size {text!r}: unknown preset {preset!r} for {arch}; choose from {', '.join(table[arch])}")
        try:
            sizes = models.size_options(rest)
        except SurrogateOpsError as exc:
            raise SurrogateOpsError(f"size {text!r}: {exc}") from None
        models.build(arch, 8, preset, **sizes)  # an unknown size option fails here, before any training
        return cls(arch, preset, sizes)


def parse_sizes(text: str) -> list[Size]:
    sizes = [Size.parse(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise SurrogateOpsError("no size to study")
    return sizes


def speed(model: ModelDir, blocks: list[str], repeats: int) -> tuple[float, float]:
    """(network blocks/s from tokens, whole-path blocks/s from text), warm, median of `repeats`."""
    predictor = Predictor(model, engine=EngineName.ONNXRUNTIME)
    encoded, _, _, _ = predictor.encode_many(blocks)
    predictor.answer_encoded(encoded)  # warm: the session, the line cache
    predictor.cycles(blocks)
    network, whole = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.answer_encoded(encoded)
        network.append(time.perf_counter() - started)
        started = time.perf_counter()
        predictor.cycles(blocks)
        whole.append(time.perf_counter() - started)
    predictor.close()
    return len(encoded) / float(np.median(network)), len(blocks) / float(np.median(whole))


def pareto(table: pd.DataFrame) -> pd.Series:
    """True where no other size is at least as fast and as accurate, and better in one."""
    fast, error = table["network_blocks_per_s"].to_numpy(), table["test_mape_vs_mca"].to_numpy()
    return pd.Series([not any((fast >= fast[i]) & (error <= error[i]) & ((fast > fast[i]) | (error < error[i])))
                      for i in range(len(table))], index=table.index)


def study(data: str | Path, out: Path, sizes: list[Size], mcpu: str = DEFAULT_MCPU, epochs: int = 10,
          train_limit: int | None = None, seed: int = 0, repeats: int = 3, progress: bool = True) -> pd.DataFrame:
    """Train and time every size on `data`; the table (also written to `out` and MLflow)."""
    frame = datasets.load(data)
    blocks = list(select(frame, "test")["block"])
    if not blocks:
        raise SurrogateOpsError(f"{data}: no test-split blocks to score and time the sizes on")
    out.mkdir(parents=True, exist_ok=True)
    rows, trained = [], []
    with tracking.start_run(run_name="capacity") as run:
        tracking.log_params({"data": str(data), "mcpu": mcpu, "epochs": epochs, "train_limit": train_limit,
                             "seed": seed, "sizes": ",".join(s.label for s in sizes)})
        for size in sizes:
            config = TrainConfig(data=str(data), arch=size.arch, preset=size.preset, sizes=size.sizes, mcpu=mcpu,
                                 epochs=epochs, train_limit=train_limit, seed=seed)
            result = train(config, progress=progress, log_model=False, run_tags={"study": "capacity"})
            trained.append((size, result))
        timings = {size.label: ([], []) for size in sizes}
        for _ in range(repeats):  # in turns: a busy moment costs every size alike
            for size, result in trained:
                network, whole = speed(result.model, blocks, 1)
                timings[size.label][0].append(network)
                timings[size.label][1].append(whole)
        for size, result in trained:
            network, whole = (float(np.median(t)) for t in timings[size.label])
            rows.append({"size": size.label, "parameters": result.model.meta.get("parameters"),
                         "test_mape_vs_mca": result.metrics.get("test_mape_vs_mca"),
                         "test_tau_vs_mca": result.metrics.get("test_tau_vs_mca"),
                         "network_blocks_per_s": network, "blocks_per_s": whole,
                         "epochs_run": result.epochs_run, "train_seconds": result.seconds, "run_id": result.run_id})
            for key, value in (("network_blocks_per_s", network), ("blocks_per_s", whole)):
                tracking.client().log_metric(result.run_id, key, value)
        table = pd.DataFrame(rows)
        table["pareto"] = pareto(table)
        table.to_csv(out / "capacity.csv", index=False)
        (out / "capacity.md").write_text(markdown(table, len(blocks), mcpu))
        plots.capacity(table, out / "capacity.png", f"network size: accuracy vs speed ({mcpu}, {len(blocks):,} test blocks)")
        mlflow.log_artifacts(str(out), artifact_path="capacity")
        mlflow.set_tag("capacity_run", run.info.run_id)
    return table


def markdown(table: pd.DataFrame, blocks: int, mcpu: str) -> str:
    lines = [f"Network sizes on the same data, scored and timed on {blocks:,} test-split blocks ({mcpu}); "
             "blocks/s: ONNX Runtime, every core, warm, median.", "",
             "| size | parameters | MAPE vs llvm-mca | tau | network blocks/s | blocks/s from text | Pareto |",
             "|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| `{row.size}` | {row.parameters:,} | {row.test_mape_vs_mca:.2%} | {row.test_tau_vs_mca:.3f} | "
                     f"{row.network_blocks_per_s:,.0f} | {row.blocks_per_s:,.0f} | {'yes' if row.pareto else ''} |")
    return "\n".join(lines) + "\n"
