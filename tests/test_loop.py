"""The training loop's device (`LoopConfig.device`): on the CPU it trains exactly as before, a GPU
that is not there is a one-line SurrogateOpsError, and the model always comes back on the CPU."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from support.cli import CLI

from surrogate_ops import models
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.training import loop

NO_GPU = not torch.cuda.is_available()


def _tiny_fit(**device) -> tuple[list[dict], dict[str, torch.Tensor], torch.nn.Module]:
    """Three epochs of a tiny network on 32 random blocks, seeded: history, weights, the model."""
    rng = np.random.default_rng(7)
    encoded = [[tuple(rng.integers(1, 30, size=int(rng.integers(1, 4)))) for _ in range(int(rng.integers(1, 5)))]
               for _ in range(32)]
    targets = rng.uniform(100, 400, size=len(encoded))
    torch.manual_seed(0)
    model = models.build("dep", vocab_size=30, preset="tiny")
    model, history = loop.fit(model, loop.BlockBatches(encoded, targets, None, 8),
                              loop.LoopConfig(epochs=3, warmup_steps=2, **device), np.random.default_rng(0),
                              validate=lambda m: float(np.mean(np.abs(loop.predict(m, encoded[:8]) / targets[:8] - 1))))
    return history.epochs, {k: v.clone() for k, v in model.state_dict().items()}, model


def _losses(epochs: list[dict]) -> list[tuple[float, float, float]]:
    return [(e["train_mape"], e["val_mape"], e["lr"]) for e in epochs]


def test_cpu_device_trains_exactly_as_the_default():
    before, weights, _ = _tiny_fit()
    for device in ("cpu", *(("auto",) if NO_GPU else ())):  # auto is the CPU where torch sees no GPU
        again, same, model = _tiny_fit(device=device)
        assert _losses(again) == _losses(before), device
        assert all(torch.equal(same[k], weights[k]) for k in weights), device
        assert next(model.parameters()).device.type == "cpu"
    assert len(before) == 3 and all(np.isfinite(e["train_mape"]) for e in before)


@pytest.mark.skipif(not NO_GPU, reason="torch sees a GPU here")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(SurrogateOpsError, match=r"device cuda: .*--device cpu"):
        _tiny_fit(device="cuda")
    with pytest.raises(SurrogateOpsError, match="unknown device"):
        loop.device("gpu")


@pytest.mark.skipif(not NO_GPU, reason="torch sees a GPU here")
@pytest.mark.system
@pytest.mark.parametrize("command", [
    ["train", "--data", "none.parquet"],
    ["finetune", "--from", "models:/none@champion", "--data", "none.csv"],
    ["confidence", "--model", "models:/none@champion", "--data", "none.parquet"],
    ["optimize", "--model", "models:/none@champion", "--data", "none.csv", "--budget", "10"],
    ["optimize-table", "--data", "none.csv", "--labels", "labels.parquet"],
], ids=lambda c: c[0])
def test_every_command_that_runs_a_network_refuses_cuda_before_reading_data(tmp_path, command):
    """One line on stderr, exit status 2, before the (missing) data or model is opened."""
    (tmp_path / "labels.parquet").write_bytes(b"")  # optimize-table's --labels must exist to be parsed
    done = subprocess.run([*CLI, *command, "--device", "cuda", "--quiet"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "SURROGATE_OPS_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: device cuda: ") and "Traceback" not in done.stderr


@pytest.mark.skipif(NO_GPU, reason="no GPU here")
def test_cuda_trains_and_hands_the_model_back_on_the_cpu():
    epochs, _, model = _tiny_fit(device="cuda")
    assert len(epochs) == 3 and all(np.isfinite(e["train_mape"]) for e in epochs)
    assert next(model.parameters()).device.type == "cpu"


def _blocks(count: int, seed: int = 3) -> list:
    rng = np.random.default_rng(seed)
    return [[tuple(int(t) for t in rng.integers(1, 30, size=int(rng.integers(1, 5)))) for _ in range(int(rng.integers(1, 6)))]
            for _ in range(count)]


def test_device_batches_hold_every_block_once_per_epoch_padded_as_the_host_pads_it():
    """`DeviceBatches` (what a GPU trains from): each epoch yields every block once, its rows as
    `pad` makes them (up to its length's width), its own target; the same generator state gives the
    same epoch (a resumed run continues the same sequence); share 1 reads every token as its relative."""
    from surrogate_ops.blocks.batching import pad

    encoded = _blocks(70)
    targets = np.arange(100.0, 170.0)
    batches = loop.DeviceBatches(encoded, targets, None, 8, torch.device("cpu"))
    seen = []
    for (tokens,), target in batches.epoch(np.random.default_rng(1)):
        assert tokens.shape[0] == len(target) <= 8 and tokens.device.type == "cpu"
        for row, value in zip(tokens.numpy(), target.numpy()):
            i = int(value) - 100
            alone = pad([encoded[i]])[0]
            assert row.shape[0] == alone.shape[0]  # one length per batch: no padded instructions
            np.testing.assert_array_equal(row[:, : alone.shape[1]], alone)
            assert not row[:, alone.shape[1]:].any()
            seen.append(i)
    assert sorted(seen) == list(range(70)) and len(batches) == sum(1 for _ in batches.epoch(np.random.default_rng(1)))

    def order(seed: int) -> list[float]:
        return [float(t[0]) for _, t in batches.epoch(np.random.default_rng(seed))]

    assert order(5) == order(5) and order(5) != order(6)
    relatives = [0] + [1 + (i % 3) for i in range(1, 30)]  # every token's relative is 1, 2 or 3
    swapped = loop.DeviceBatches(encoded, targets, None, 8, torch.device("cpu"), relatives, share=1.0)
    for (tokens,), _ in swapped.epoch(np.random.default_rng(2)):
        assert set(np.unique(tokens.numpy())) <= {0, 1, 2, 3}


@pytest.mark.skipif(NO_GPU, reason="no GPU here")
def test_device_batches_uploaded_on_a_thread_hold_on_the_gpu_what_they_hold_on_the_cpu():
    """A streamed window is built on its own thread and copied from pinned memory on a stream of its
    own: on the GPU its epoch yields every block once, in batches of the sizes and order the CPU's
    holder yields (the draws within a length come from the device's own generator)."""
    from concurrent.futures import ThreadPoolExecutor

    encoded, targets = _blocks(300), np.arange(100.0, 400.0)
    relatives = [0] + [1 + (i % 3) for i in range(1, 30)]
    with ThreadPoolExecutor(1) as ahead:
        on_gpu = ahead.submit(loop.DeviceBatches, encoded, targets, None, 16, loop.device("cuda"), relatives,
                              ahead=True).result()
    on_cpu = loop.DeviceBatches(encoded, targets, None, 16, torch.device("cpu"), relatives)
    gpu = [(t.cpu(), y.cpu()) for (t,), y in on_gpu.epoch(np.random.default_rng(4))]
    cpu = [(t, y) for (t,), y in on_cpu.epoch(np.random.default_rng(4))]
    assert [len(y) for _, y in gpu] == [len(y) for _, y in cpu] and len(gpu) == len(on_cpu)
    assert sorted(float(v) for _, y in gpu for v in y) == list(targets)


def test_mape_loss_skips_missing_targets_without_poisoning_the_gradient():
    predicted = torch.tensor([110.0, 50.0, 300.0], requires_grad=True)
    target = torch.tensor([100.0, float("nan"), 200.0])
    loss = loop.mape_loss(predicted, target)
    assert loss.item() == pytest.approx((0.1 + 0.5) / 2)
    loss.backward()
    assert torch.isfinite(predicted.grad).all() and predicted.grad[1] == 0


def test_fit_trains_from_device_batches():
    encoded = _blocks(48)
    targets = np.random.default_rng(0).uniform(100, 400, size=48)
    torch.manual_seed(0)
    model = models.build("dep", vocab_size=30, preset="tiny")
    _, history = loop.fit(model, loop.DeviceBatches(encoded, targets, None, 8, torch.device("cpu")),
                          loop.LoopConfig(epochs=4, warmup_steps=2, lr=5e-3), np.random.default_rng(0))
    losses = [e["train_mape"] for e in history.epochs]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
