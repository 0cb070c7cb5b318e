"""TVM meta-schedule tuning of a surrogate build, under a time budget.

Tuned TVM builds are static-shape: the ONNX graph is imported at one (batch, instructions, tokens)
shape, its heaviest kernels (by FLOPs) are tuned with TVM's meta-schedule (XGBoost cost model,
evolutionary search, measured on this CPU) in rounds until the budget is spent, and the tuning
database is applied at build time. At run time the static build takes the batches that fit its
shape (padded up to it) and the dynamic build the rest (`engines.StaticEngine`).

Whether it pays is measured, not assumed: the tuned build, the untuned build at the same static
shape and ONNX Runtime are timed side by side on the same real blocks, and the record keeps all
three with what was tuned (each task's FLOPs, trials and best measured latency).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from surrogate_ops.builds.export import compare, relax_module
from surrogate_ops.config import EngineName
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.runtime import engines
from surrogate_ops.runtime.modeldir import ModelDir


@dataclass(frozen=True)
class Tuning:
    """What a tuning session did and what it bought."""

    shape: list[int]
    budget_minutes: float
    seconds: float
    rounds: int
    trials: int
    tasks: list[dict]
    library: str
    max_rel_diff: float
    blocks_per_s: float
    untuned_blocks_per_s: float
    onnxruntime_blocks_per_s: float

    @property
    def pays(self) -> bool:
        return self.blocks_per_s > max(self.untuned_blocks_per_s, self.onnxruntime_blocks_per_s)

    def summary(self) -> str:
        return (f"tuned {len(self.tasks)} kernels at shape {'x'.join(map(str, self.shape))}: {self.trials} trials "
                f"in {self.rounds} rounds, {self.seconds:.0f} s; {self.blocks_per_s:,.0f} blocks/s tuned vs "
                f"{self.untuned_blocks_per_s:,.0f} untuned vs {self.onnxruntime_blocks_per_s:,.0f} ONNX Runtime "
                f"({'pays' if self.pays else 'does not pay'} on this CPU)")


def _requirements() -> None:
    try:
        import xgboost  # noqa: F401 - meta-schedule's cost model
    except ImportError as exc:
        raise SurrogateOpsError("tuning needs xgboost for meta-schedule's cost model: pip install xgboost-cpu") from exc


def fit_shape(tokens: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Real blocks laid into a static shape: rows repeated to the batch, cut or padded to the rest."""
    batch, instructions, width = shape
    rows = np.resize(np.arange(len(tokens)), batch)
    out = np.zeros(shape, dtype=np.int64)
    part = tokens[rows, :instructions, :width]
    out[:, :part.shape[1], :part.shape[2]] = part
    return out


def tune(model: ModelDir, tvm_target: dict, shape: tuple[int, int, int], minutes: float, out: Path,
         check_tokens: np.ndarray, top_tasks: int = 4, trials_per_round: int = 4, seed: int = 0,
         log=print) -> Tuning:
    """Tune `model`'s ONNX graph for `tvm_target` at `shape` for about `minutes`; write `out` (.so) with
    its tuning database beside it (`out`.with_suffix('.db')) and return the record."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    _requirements()
    start = time.time()
    cores = len(os.sched_getaffinity(0))
    target = tvm.target.Target({**tvm_target, "num-cores": cores})  # meta-schedule's workers and threads
    work_dir = out.with_suffix(".db")
    work_dir.mkdir(parents=True, exist_ok=True)
    mod = relax_module(model.onnx, shape_dict={"tokens": list(shape)})
    with target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.transform.CanonicalizeBindings(),
                                        relax.get_pipeline("zero")])(mod)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    log(f"{len(tasks)} kernels extracted in {time.time() - start:.0f} s")
    flops = {t.task_name: estimate_tir_flops(t.dispatched[0]) for t in tasks}
    chosen = sorted(flops, key=flops.get, reverse=True)[:top_tasks]
    log(f"tuning {', '.join(chosen)} (the {len(chosen)} heaviest of {len(tasks)} kernels) for {minutes:g} min")
    rounds = trials = 0
    budget, last = minutes * 60, 0.0
    while time.time() - start + last <= budget or rounds == 0:
        began = time.time()
        ms.relax_integration.tune_relax(
            mod, params={}, target=target, work_dir=str(work_dir), op_names=chosen,
            max_trials_global=trials_per_round * len(chosen), max_trials_per_task=trials_per_round,
            num_trials_per_iter=trials_per_round, seed=seed + rounds,
            builder=ms.builder.LocalBuilder(f_build=build_candidate, max_workers=cores, timeout_sec=120))
        rounds, trials, last = rounds + 1, trials + trials_per_round * len(chosen), time.time() - began
        log(f"round {rounds}: {trials} trials, {time.time() - start:.0f} s of {budget:.0f} s")
    with target, tvm.transform.PassContext(opt_level=3):
        tuned_mod = relax.transform.MetaScheduleApplyDatabase(str(work_dir))(mod)
    tvm.compile(tuned_mod, target=target).export_library(str(out))
    untuned = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    record = _measure(out, untuned, model, fit_shape(check_tokens, shape))
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    done = []
    for task in tasks:
        if task.task_name not in chosen:
            continue
        best = database.query_tuning_record(task.dispatched[0], target, "main")
        done.append({"kernel": task.task_name, "flops": flops[task.task_name],
                     "best_us": float(np.mean([float(s) for s in best.run_secs]) * 1e6) if best else None})
    tuning = Tuning(shape=list(shape), budget_minutes=minutes, seconds=time.time() - start, rounds=rounds,
                    trials=trials, tasks=done, library=str(out), **record)
    out.with_suffix(".json").write_text(json.dumps(asdict(tuning), indent=1))
    return tuning


def build_candidate(mod, target, _params):
    """meta-schedule's build step without its default's import of every tensor intrinsic (CUDA's
    included), which alone takes longer than the builder's timeout on a small CPU."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _measure(library: Path, untuned, model: ModelDir, tokens: np.ndarray) -> dict:
    """Agreement of the tuned build with ONNX Runtime, and the three speeds, side by side."""
    import tvm
    from tvm import relax

    time_engine = engines.time_engine
    tuned, reference = engines.tvm_library(library), engines.onnx_engine(model)
    main = relax.VirtualMachine(untuned, tvm.cpu())["main"]
    agreement = compare(reference(tokens), tuned(tokens), (EngineName.ONNXRUNTIME, "tvm-tuned"))
    return {"max_rel_diff": agreement.max_rel,
            "blocks_per_s": time_engine(tuned, tokens),
            "untuned_blocks_per_s": time_engine(lambda x: main(tvm.runtime.tensor(x)).numpy(), tokens),
            "onnxruntime_blocks_per_s": time_engine(reference, tokens)}
