"""The error head: fit on real llvm-mca residuals, exported to ONNX, leaving the surrogate's answer as
it was, and ranking its errors; `predict --max-error` routes exactly the blocks estimated above it."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from support.cli import CLI, COMMAND_TIMEOUT, rows
from support.stores import in_home

from surrogate_ops import config, models, registry
from surrogate_ops.blocks.generate import generate
from surrogate_ops.builds.export import save_model_dir
from surrogate_ops.programs import LlvmMca
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training import confidence

BUNDLE = config.PRETRAINED / "llvm-mca-haswell"


def labeled(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Generated blocks (mixed, dense and short loops: where the surrogate's error varies) with llvm-mca's cycles."""
    blocks = generate(count, seed=seed) + generate(count, seed=seed, density="dense", max_instructions=12) \
        + generate(count, seed=seed, density="loops")
    return blocks, np.array([r.cycles for r in LlvmMca("haswell").run(blocks)])


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> ModelDir:
    """The bundled Haswell surrogate without an error head."""
    bundle = ModelDir.open(BUNDLE)
    network = models.network(bundle.module())
    meta = {k: v for k, v in bundle.meta.items() if k not in ("arch", "config", "parameters", "error_head")}
    directory, _ = save_model_dir(network, bundle.tokenizer(), meta, tmp_path_factory.mktemp("plain"), generate(8, seed=1))
    return directory


@pytest.fixture(scope="module")
def confident(plain, tmp_path_factory) -> ModelDir:
    blocks, truth = labeled(500, seed=31)
    model, report = confidence.fit_error_head(plain, blocks, truth, epochs=40, progress=False)
    assert report.blocks == len(blocks) // 5
    return confidence.save(model, plain, report, tmp_path_factory.mktemp("confident"), blocks[:64])


def test_the_head_leaves_the_answer_and_ranks_errors_it_never_saw(plain, confident):
    assert confident.arch == "confident" and "error_head_spearman" in confident.meta["error_head"]
    blocks, truth = labeled(300, seed=32)  # a seed neither fit nor the head saw
    with_head = Predictor(confident)
    cycles, estimate = with_head.estimate(blocks)
    assert np.allclose(cycles, Predictor(plain).cycles(blocks), rtol=1e-5)  # ONNX Runtime, both
    assert np.all(estimate > 0) and np.all(np.isfinite(estimate))
    errors = np.abs(cycles - truth) / truth
    assert stats.spearmanr(estimate, errors).statistic > 0.3
    assert confidence.routed_cut(errors, estimate, 0.2) > 1.5 * 0.2  # far better than routing at random
    torch_cycles, torch_estimate = Predictor(confident, engine="torch").estimate(blocks)
    assert np.allclose(torch_estimate, estimate, rtol=1e-3) and np.allclose(torch_cycles, cycles, rtol=1e-3)
    with pytest.raises(Exception, match="does not estimate its error"):
        Predictor(plain).estimate(blocks)
    from surrogate_ops.serving.policy import Rejected
    from surrogate_ops.serving.server import Server

    with pytest.raises(Rejected, match="gives no error estimates") as refused:
        Server(Predictor(plain)).predict(blocks[:3], "haswell", max_error=0.05)
    assert refused.value.status == 422


def test_routed_cut_counts_the_error_removed():
    errors = np.array([0.5, 0.1, 0.1, 0.3])
    assert confidence.routed_cut(errors, errors, 0.25) == pytest.approx(0.5)
    assert confidence.routed_cut(errors, -errors, 0.5) == pytest.approx(0.2)
    assert confidence.routed_cut(np.zeros(4), errors, 0.5) == 0.0


@pytest.mark.slow
@pytest.mark.system
def test_the_command_fits_registers_and_predict_routes_above_max_error(tmp_path, plain):
    blocks, truth = labeled(150, seed=33)
    data = tmp_path / "residuals.parquet"
    pd.DataFrame({"block": blocks, "mca_cycles_haswell": truth, "split": "val"}).to_parquet(data)
    env = {**os.environ, "SURROGATE_OPS_HOME": str(tmp_path / "home")}
    proc = subprocess.run([*CLI, "confidence", "--model", str(plain), "--data", str(data), "--epochs", "20",
                           "--register", "conf-test", "--quiet"], capture_output=True, text=True, env=env,
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "error head on 90 held-out blocks" in proc.stdout and "registered models:/conf-test/1" in proc.stdout

    probe = tmp_path / "probe.s"
    probe.write_text("\n\n".join(generate(40, seed=34, density="loops")) + "\n")

    def predict(*args: str) -> list[dict]:
        run = subprocess.run([*CLI, "predict", "--model", "models:/conf-test/1", "--input", str(probe), *args],
                             capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stderr
        return rows(run.stdout)

    first = predict()
    estimates = np.array([float(r["estimated_error"]) for r in first])
    assert {r["source"] for r in first} == {"surrogate"}
    threshold = float(np.median(estimates))
    routed = predict("--max-error", str(threshold))
    assert [r["source"] for r in routed] == ["llvm-mca" if e > threshold else "surrogate" for e in estimates]
    mca = LlvmMca("haswell").run([b for b, e in zip(generate(40, seed=34, density="loops"), estimates) if e > threshold])
    assert [float(r["cycles"]) for r in routed if r["source"] == "llvm-mca"] == [m.cycles for m in mca]
    assert all("over max_error" in r["reason"] for r in routed if r["source"] == "llvm-mca")

    refused = subprocess.run([*CLI, "predict", "--model", str(plain), "--input", str(probe), "--max-error", "0.05"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and "gives no error estimates" in refused.stderr
    with in_home(tmp_path / "home"):

        assert registry.open("models:/conf-test/1").model.arch == "confident"


def test_training_from_a_confident_surrogate_starts_from_its_network(confident):
    """Fine-tuning moves the network under the head, so it trains the network alone (a new head is fit after)."""
    from surrogate_ops.training import train

    assert confident.shape()["arch"] == "dep"
    blocks = generate(40, seed=35, density="loops")
    frame = pd.DataFrame({"block": blocks, "mca_cycles_haswell": 100.0, "split": ["train", "val"] * 20})
    shape = confident.shape()
    prepared = train.prepare(train.TrainConfig(data="-", arch=shape["arch"], preset=shape["preset"], sizes=shape["sizes"]),
                             frame, confident, None, np.random.default_rng(0))
    assert type(prepared.model).__name__ == "Dep"
    assert all(np.array_equal(prepared.model.state_dict()[k], v) for k, v in confident.module().block.state_dict().items())
