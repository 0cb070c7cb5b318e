"""Training streamed from disk (`train --stream`, training/streaming.py): the train split read a few
Parquet row groups at a time gives every usable training row once per epoch (a block from several
sources once, source weights applied), the same batches for the same seed, and a registered model
that answers, with the evaluation splits alone loaded."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from surrogate_ops import models, registry
from surrogate_ops.blocks.tokenizer import Tokenizer
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.training import streaming
from surrogate_ops.training.train import BackoffBatches, TrainConfig, streams, train, training_rows, usable

GROUP = 40  # rows per row group of the test's dataset: many groups, several windows


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    """Generated blocks labeled by llvm-mca, every block of the first 60 a second time under another
    source, written again in row groups of GROUP rows (as a user's large Parquet file would be)."""
    tmp = tmp_path_factory.mktemp("stream")
    collected = tmp / "collected.parquet"
    datasets.collect(collected, generated=datasets.Generated(360, seed=31), progress=False)
    table = pq.read_table(collected)
    copies = table.slice(0, 60).to_pandas().assign(source="asm:copies.s")
    table = pa.concat_tables([table, pa.Table.from_pandas(copies, schema=table.schema, preserve_index=False)])
    out = tmp / "grouped.parquet"
    pq.write_table(table, out, row_group_size=GROUP)
    assert pq.ParquetFile(out).num_row_groups > 8
    return out


def in_memory_train_rows(path: Path):
    frame = datasets.load(path)
    rows = training_rows(frame, "mca", "haswell", 64)
    return rows[rows["split"] == "train"]


def rows_of(path: Path, limit: int | None = None) -> streaming.Rows:
    columns = [c for c in pq.read_schema(path).names if c != "hex"]
    return streaming.Rows(path, columns, lambda rows: usable(rows, "mca", "haswell", 64), "mca_cycles_haswell",
                          dedupe=True, limit=limit, rng=np.random.default_rng(0))


def epoch_targets(path: Path, seed: int, weights: dict | None = None) -> list[np.ndarray]:
    from surrogate_ops.training.train import weighted

    rows = rows_of(path)
    tokenizer = Tokenizer.build(rows.blocks())

    def prepare(frame, rng):
        frame = weighted(frame, weights or {}, rng)
        encoded = [tokenizer.encode_block(b) for b in frame["block"]]
        return BackoffBatches(encoded, frame["mca_cycles_haswell"].to_numpy(), None, 16, tokenizer.backoff_ids(), 0.0)

    stream = streaming.Stream(rows, prepare, batch_size=16, window=2)
    return [target.numpy() for _, target in stream.epoch(np.random.default_rng(seed))]


def test_an_epoch_reads_every_training_row_once(grouped):
    expected = np.sort(in_memory_train_rows(grouped)["mca_cycles_haswell"].to_numpy())
    rows = rows_of(grouped)
    assert len(rows) == len(expected)
    assert len(rows.kept) == pq.ParquetFile(grouped).num_row_groups
    batches = epoch_targets(grouped, seed=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), expected.astype(np.float32))
    again = epoch_targets(grouped, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # a function of the seed
    other = epoch_targets(grouped, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))  # each epoch its own order
    doubled = np.concatenate(epoch_targets(grouped, seed=1, weights={"generated:*": 2}))
    np.testing.assert_array_equal(np.sort(doubled), np.sort(np.repeat(expected.astype(np.float32), 2)))


def test_the_evaluation_splits_load_alone(grouped):
    whole = datasets.load(grouped)
    held = datasets.load(grouped, splits=("val", "test"), leave_out=("hex",))
    expected = whole[whole["split"].isin(["val", "test"])].drop(columns=["hex"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(held, expected)
    assert held.attrs == whole.attrs and held.attrs["program_version"]


def test_a_limit_takes_that_many_training_rows(grouped):
    rows = rows_of(grouped, limit=50)
    assert len(rows) == 50 == sum(len(k) for k in rows.kept)


@pytest.mark.system
def test_streamed_training_registers_a_model_that_answers(fresh_home, grouped):
    config = TrainConfig(data=str(grouped), arch="hier", preset="tiny", epochs=2, threads=1, stream=True)
    result = train(config, register="streamed", progress=False)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["streamed"] == "True"
    assert int(run.data.params["train_blocks"]) == len(in_memory_train_rows(grouped))
    assert run.data.tags["dataset_digest"] == datasets.file_digest(grouped)
    assert "test_mape_vs_mca" in run.data.metrics and result.epochs_run == 2
    model = registry.open("models:/streamed@champion").model
    [cycles] = Predictor(model).cycles(["movq (%rdi), %rax\naddq $1, %rax\nmovq %rax, 8(%rdi)"])
    assert np.isfinite(cycles) and cycles > 0
    assert models.parameter_count(model.module()) > 1000
    with pytest.raises(SurrogateOpsError, match="no training row's source matches"):
        train(TrainConfig(data=str(grouped), arch="hier", preset="tiny", epochs=1, stream=True,
                          weights={"bhive:*": 2}), progress=False)


def test_large_datasets_stream_by_themselves(grouped, monkeypatch):
    from surrogate_ops.training import train as training

    config = TrainConfig(data=str(grouped))
    assert not streams(config)  # 420 rows: in memory
    monkeypatch.setattr(training, "STREAM_ROWS", 100)
    assert streams(config)
    assert not streams(TrainConfig(data=str(grouped), stream=False))
