"""Surrogate optimization: tune llvm-mca's parameters by gradient descent through a surrogate.

The seed paper's third pattern (DiffTune). A parameter-conditioned surrogate (trained on blocks
labeled under random settings, `collect --sample-params`) stands in for llvm-mca; the setting is
relaxed to values scaled to [0, 1] (`Parameter.scale`) and descended on against measured throughput
(MAPE) with Adam, from the expert defaults and from random starts; the paths are rounded to valid
values and ranked by the surrogate. Then the real llvm-mca runs every method's setting (expert
defaults, the surrogate's, each baseline's) on held-out measured blocks.

Every llvm-mca run of the search takes the same fixed sample of measured training blocks
(`search_blocks`). The surrogate uses it twice: llvm-mca's answers there under the defaults anchor
it (it predicts how a setting changes them, so its own error on a block cancels), and its `checks`
best candidates are run there, the best one kept (the defaults if none beats them; `checks=0`
trusts the surrogate's first choice, as DiffTune does). The checks are spread over `rounds`
descents; between two, the surrogate is fine-tuned on llvm-mca's answers so far, which are
exactly the blocks and the region of settings the search is in.

The budget counts llvm-mca block evaluations: the surrogate is charged its training data (recorded
at training time), its anchors and its checks; each surrogate-free tuner (OpenTuner, the seed's
baseline, and Optuna's TPE) spends the same budget a trial at a time over the same unit space with
the same rounding, its first trial the expert defaults. The held-out evaluation is charged to no
one: it is the same for every method.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from surrogate_ops import plots, registry
from surrogate_ops.blocks.batching import buckets, pad
from surrogate_ops.config import Device, EngineName
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.metrics import kendall_tau
from surrogate_ops.programs import LlvmMca, McaSetting
from surrogate_ops.programs.base import Parameter, scale_settings, unscale_setting
from surrogate_ops.programs.cluster import Cluster
from surrogate_ops.registry import tracking
from surrogate_ops.runtime.inference import Predictor
from surrogate_ops.search.baselines import BASELINES, Baseline, Codec, setting_key
from surrogate_ops.training import loop


@dataclass(frozen=True)
class OptimizeConfig:
    model: str  # a parameter-conditioned surrogate: URI or model directory
    data: str  # measured throughputs: BHive-format CSV or a collected dataset
    budget: int  # llvm-mca block evaluations per method
    mcpu: str | None = None  # from the model when left out
    baselines: tuple[str, ...] = BASELINES
    steps: int = 100  # Adam steps per descent (all starts at once)
    lr: float = 0.1
    restarts: int = 8  # random starts beside the expert defaults
    batches_per_step: int = 1  # length-bucketed batches of blocks per descent step (a fresh draw each step)
    anchored: bool = True  # descend on the change from llvm-mca's own default answers (see Surrogate)
    checks: int = 4  # the surrogate's best candidates checked with llvm-mca on the sample (0: trust it)
    rounds: int = 3  # checks spread over this many descents, the surrogate fine-tuned on the answers between
    fit_steps: int = 60  # fine-tuning steps between rounds
    search_blocks: int = 1000  # training blocks every llvm-mca run of the search takes (a baseline's trial)
    test_limit: int | None = None  # held-out blocks to evaluate on (all when None)
    seed: int = 0
    device: Device = "cpu"  # where the surrogate descends and is refit (`loop.device`)


@dataclass
class Outcome:
    """One method's setting and what it cost and scored."""

    method: str
    setting: dict
    evaluations: int  # llvm-mca block evaluations spent finding it
    objective: float | None = None  # training-block MAPE as the method saw it
    test_mape: float | None = None
    test_tau: float | None = None
    seconds: float = 0.0
    trace: list = field(default_factory=list)  # (evaluations or step, best objective so far)


@dataclass
class OptimizeResult:
    run_id: str
    outcomes: dict[str, Outcome]
    test_blocks: int
    train_blocks: int


def options(program: LlvmMca, setting: dict) -> dict:
    """A setting as llvm-mca option names to values (what `--params` files hold)."""
    return {program.parameters[name].option: value for name, value in setting.items()}


def llvm_mca_mape(program: LlvmMca, setting: McaSetting | dict, blocks: list[str],
                  measured: np.ndarray) -> tuple[float, np.ndarray]:
    """The real llvm-mca under `setting` (a search's knobs are a dict): MAPE against `measured`, and its
    cycles (NaN where it failed)."""
    setting = setting if isinstance(setting, McaSetting) else McaSetting(setting)
    cycles = np.array([r.cycles if r.ok else np.nan for r in program.with_setting(setting).run(blocks)])
    ok = np.isfinite(cycles)
    if not ok.any():
        return float("inf"), cycles
    # a block llvm-mca cannot simulate under this setting counts as a 100% miss
    return float((np.abs(cycles[ok] - measured[ok]) / measured[ok]).sum() + (~ok).sum()) / len(blocks), cycles


class Surrogate:
    """A conditioned surrogate's objective over fixed blocks, R settings at a time.

    With `anchors` (the real llvm-mca's cycles for these blocks under the expert defaults) the
    surrogate predicts only the change a setting makes, `anchor * f(setting) / f(defaults)`: its
    own error on a block cancels, and at the defaults the objective is llvm-mca's true error. A
    model whose block encoding ignores the setting (`inject="pooled"`) encodes the blocks once."""

    def __init__(self, predictor: Predictor, blocks: list[str], measured: np.ndarray,
                 anchors: np.ndarray | None = None, defaults: np.ndarray | None = None, batch: int = 256,
                 device: Device = "cpu"):
        self.on = on = loop.device(device)
        self.model = predictor.model.module().to(on)
        for p in self.model.parameters():
            p.requires_grad_(False)
        encoded = [predictor.encode(b, i)[0] for i, b in enumerate(blocks)]
        self.batches = [(torch.from_numpy(index).to(on), torch.from_numpy(pad([encoded[i] for i in index])).to(on))
                        for index in buckets(encoded, batch)]  # held where the network runs
        self.pooled = (torch.empty(len(blocks), self.model.config.base_config["dim"], device=on)
                       if self.model.blind else None)
        self.measured = torch.tensor(measured, dtype=torch.float32, device=on)
        self.scale = torch.ones(len(blocks), device=on)
        self.anchors, self.defaults = anchors, defaults
        self._anchor()

    def _anchor(self) -> None:
        if self.model.blind:
            with torch.inference_mode():
                for index, tokens in self.batches:
                    self.pooled[index] = self.model.encode(tokens)
        if self.anchors is not None:
            with torch.no_grad():
                index, predicted = self.cycles(torch.from_numpy(self.defaults)[None], range(len(self.batches)))
            at_defaults = torch.empty(len(self.measured), device=self.on)
            at_defaults[index] = predicted[0]
            self.scale = torch.tensor(self.anchors, dtype=torch.float32, device=self.on) / at_defaults

    def fit(self, labels: list[tuple[np.ndarray, np.ndarray]], steps: int, lr: float = 3e-4, seed: int = 0) -> float:
        """Fine-tune on llvm-mca's real answers for these blocks (a setting scaled, cycles per block)
        with the training loop: the search's own evaluations teach the surrogate where the search
        is. Returns the mean training error."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        config = loop.LoopConfig(epochs=1, lr=lr, weight_decay=0.0, warmup_steps=0, decay=False, clip=None, patience=1,
                                 device=self.on.type)
        _, history = loop.fit(self.model, _LabelBatches(self.batches, labels, steps, seed), config,
                              np.random.default_rng(seed))
        self.model.to(self.on)  # `fit` hands the model back on the CPU
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._anchor()
        return history.epochs[-1]["train_mape"]

    def cycles(self, scaled: torch.Tensor, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks of `batches` (indices into self.batches) and their predicted cycles under each
        of R settings, (R, those blocks)."""
        r, scaled = scaled.shape[0], scaled.to(self.on)
        indices, outputs = [], []
        for b in batches:
            index, tokens = self.batches[b]
            params = scaled.repeat_interleave(len(index), dim=0)
            if self.pooled is not None:
                predicted = self.model.from_encoding(self.pooled[index].repeat(r, 1), params)
            else:
                predicted = self.model(tokens.repeat(r, 1, 1), params)
            indices.append(index)
            outputs.append(predicted.reshape(r, len(index)))
        return torch.cat(indices), torch.cat(outputs, dim=1)

    def objective(self, scaled: torch.Tensor, batches=None) -> torch.Tensor:
        """Surrogate MAPE for each of R settings: scaled (R, parameters) -> (R,), differentiable; over
        the block batches `batches` (indices into self.batches), else all."""
        index, predicted = self.cycles(scaled, range(len(self.batches)) if batches is None else batches)
        measured = self.measured[index]
        return (torch.abs(predicted * self.scale[index] - measured) / measured).mean(dim=1)


class _LabelBatches:
    """`steps` random block batches, each under every labeled setting at once: the refit's data."""

    def __init__(self, batches: list, labels: list[tuple[np.ndarray, np.ndarray]], steps: int, seed: int):
        self.batches, self.steps, self.seed = batches, steps, seed
        self.scaled = torch.from_numpy(np.stack([u for u, _ in labels]).astype(np.float32))
        self.cycles = torch.from_numpy(np.stack([c for _, c in labels]).astype(np.float32))  # (labels, blocks)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, rng: np.random.Generator):
        generator = torch.Generator().manual_seed(self.seed)
        r = len(self.scaled)
        for _ in range(self.steps):
            index, tokens = self.batches[int(torch.randint(len(self.batches), (1,), generator=generator))]
            inputs = (tokens.repeat(r, 1, 1), self.scaled.repeat_interleave(len(index), dim=0))
            yield inputs, self.cycles[:, index.cpu()].reshape(-1)  # the batches may be held on a GPU


def descend(surrogate: Surrogate, space: dict[str, Parameter], defaults: dict, config: OptimizeConfig,
            progress: bool = True) -> tuple[list[tuple[dict, float]], list]:
    """Adam on the relaxed setting from the defaults and `restarts` random starts, a fresh minibatch
    of blocks each step; every start's path rounded to valid values along the way. Returns those
    rounded settings ranked by the surrogate's objective over all the blocks (best first), the
    defaults excluded, and the trace of (step, best minibatch objective)."""
    generator = torch.Generator().manual_seed(config.seed)  # on the host: the same starts on any device
    start = torch.from_numpy(scale_settings(space, [defaults])).clamp(0.02, 0.98)
    starts = torch.cat([start, torch.rand(config.restarts, len(space), generator=generator) * 0.96 + 0.02])
    logits = torch.logit(starts).to(surrogate.on).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=config.lr)
    trace, candidates = [], {}
    for step in tqdm(range(config.steps), desc="descending", unit="step", disable=not progress):
        batches = torch.randperm(len(surrogate.batches), generator=generator)[: config.batches_per_step].tolist()
        loss = surrogate.objective(torch.sigmoid(logits), batches)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        trace.append((step, float(loss.detach().min())))
        if step % 25 == 24 or step == config.steps - 1:  # the rounded settings along the way
            for row in torch.sigmoid(logits).detach().cpu().numpy():
                setting = unscale_setting(space, row)
                candidates[setting_key(setting)] = setting
    candidates.pop(setting_key(defaults), None)
    settings = list(candidates.values())
    with torch.no_grad():
        scores = torch.cat([surrogate.objective(torch.from_numpy(scale_settings(space, settings[i:i + 32])))
                            for i in range(0, len(settings), 32)]).cpu().numpy() if settings else np.zeros(0)
    order = np.argsort(scores)
    return [(settings[i], float(scores[i])) for i in order], trace


@dataclass
class Problem:
    """What every method searches with: the surrogate, llvm-mca, the space, the expert defaults,
    and the measured blocks (the search's fixed sample of training blocks, and the held-out ones)."""

    predictor: Predictor
    program: LlvmMca
    space: dict[str, Parameter]
    defaults: dict
    cost: int  # llvm-mca evaluations charged to the surrogate: its training data, anchors and checks
    train_rows: pd.DataFrame
    test_rows: pd.DataFrame
    blocks: list[str]  # the sample every llvm-mca run of the search takes
    measured: np.ndarray
    trials: int  # a baseline's llvm-mca runs within the budget


def problem(config: OptimizeConfig, cluster: Cluster | None = None) -> Problem:
    """The surrogate, the space and the blocks, each checked against the budget before any work;
    llvm-mca runs on `cluster` where one is given."""
    predictor = Predictor(registry.open(config.model).model, engine=EngineName.TORCH)
    if not predictor.parameter_names:
        raise SurrogateOpsError(f"{config.model} is not parameter-conditioned: train one on data collected with "
                                "`surrogate-ops collect --sample-params N`")
    program = LlvmMca(config.mcpu or predictor.meta["mcpu"], cluster=cluster)
    expert = program.expert_defaults()
    space = {name: program.parameters[name] for name in predictor.parameter_names}
    charged = int(predictor.model.program_parameters.get("evaluations", 0))
    if charged > config.budget:
        raise SurrogateOpsError(f"the surrogate's training data cost {charged:,} llvm-mca evaluations, over the "
                                f"budget of {config.budget:,}")
    unknown = set(config.baselines) - set(BASELINES)
    if unknown:
        raise SurrogateOpsError(f"unknown baseline {', '.join(sorted(unknown))}; choose from {', '.join(BASELINES)}")
    frame = datasets.measured_blocks(config.data, program.mcpu)
    fits = frame["block"].str.count("\n") < predictor.max_instructions
    train_rows = frame[(frame["split"] == "train") & fits]  # the surrogate reads blocks within its length
    test_rows = frame[frame["split"] == "test"]
    if config.test_limit is not None:
        test_rows = test_rows.iloc[: config.test_limit]
    if len(train_rows) < 2 or len(test_rows) < 2:
        raise SurrogateOpsError(f"{config.data}: need measured blocks in both train and test splits "
                                f"(have {len(train_rows)} and {len(test_rows)})")
    rng = np.random.default_rng(config.seed)
    sample = train_rows.iloc[np.sort(rng.permutation(len(train_rows))[: config.search_blocks])]
    trials = config.budget // len(sample)
    if config.baselines and trials < 2:
        raise SurrogateOpsError(f"a budget of {config.budget:,} buys each baseline {trials} trial(s) of {len(sample)} "
                                "blocks; raise --budget or lower --search-blocks")
    cost = charged + (len(sample) if config.anchored else 0) + config.checks * len(sample)
    if cost > config.budget:
        raise SurrogateOpsError(f"the surrogate needs {cost:,} llvm-mca evaluations ({charged:,} for its training data, "
                                f"{len(sample):,} per anchor and checked candidate), over the budget of {config.budget:,}")
    return Problem(predictor, program, space, {name: expert[name] for name in space}, cost, train_rows, test_rows,
                   list(sample["block"]), sample["measured"].to_numpy(), trials)


def optimize(config: OptimizeConfig, out: str | Path | None = None, progress: bool = True,
             cluster: Cluster | None = None) -> OptimizeResult:
    """Find llvm-mca parameters through the surrogate and with each baseline search under the same
    budget, evaluate every setting with the real llvm-mca on the held-out split, log it all to one
    MLflow run (metrics per method, the settings as JSON, plots), and write the surrogate's setting
    to `out` as llvm-mca option names to values. Every llvm-mca run goes to `cluster` where given."""
    loop.device(config.device)  # a missing GPU fails before any llvm-mca run
    task = problem(config, cluster)
    # every llvm-mca run of the search is on the sample; the defaults' run there anchors the surrogate
    # and is every baseline's first trial
    outcomes: dict[str, Outcome] = {"defaults": Outcome("defaults", task.defaults, 0)}
    started = time.time()
    default_mape, default_cycles = llvm_mca_mape(task.program, task.defaults, task.blocks, task.measured)
    outcomes["defaults"].objective = default_mape
    outcomes["surrogate"] = search(task, config, default_mape, default_cycles, progress)
    outcomes["surrogate"].seconds = time.time() - started
    for name in config.baselines:
        started = time.time()
        setting, objective, trace = Baseline(name, Codec.knobs(task.space, task.defaults), task.defaults, config.seed).run(
            lambda s: llvm_mca_mape(task.program, s, task.blocks, task.measured)[0], task.trials, progress)
        outcomes[name] = Outcome(name, setting, len(trace) * len(task.blocks), objective,
                                 seconds=time.time() - started, trace=[(t * len(task.blocks), v) for t, v in trace])
    test_blocks, test_measured = list(task.test_rows["block"]), task.test_rows["measured"].to_numpy()
    for outcome in tqdm(outcomes.values(), desc="held-out llvm-mca", unit="setting", disable=not progress):
        outcome.test_mape, cycles = llvm_mca_mape(task.program, outcome.setting, test_blocks, test_measured)
        ok = np.isfinite(cycles)
        outcome.test_tau = kendall_tau(cycles[ok], test_measured[ok]) if ok.sum() > 1 else float("nan")
    run_id = _log_run(task, config, outcomes, out)
    return OptimizeResult(run_id, outcomes, len(task.test_rows), len(task.train_rows))


def search(task: Problem, config: OptimizeConfig, default_mape: float, default_cycles: np.ndarray,
           progress: bool = True) -> Outcome:
    """The surrogate's search, in rounds: descend, check a share of the candidates with llvm-mca,
    fine-tune the surrogate on those answers, again. The best checked setting (or, with no checks,
    the surrogate's first choice) and what it cost."""
    blocks, measured, space, defaults = task.blocks, task.measured, task.space, task.defaults
    keep = np.isfinite(default_cycles)
    if config.anchored:
        surrogate = Surrogate(task.predictor, [b for b, k in zip(blocks, keep, strict=True) if k], measured[keep],
                              default_cycles[keep], scale_settings(space, [defaults])[0], device=config.device)
    else:
        surrogate = Surrogate(task.predictor, list(task.train_rows["block"]), task.train_rows["measured"].to_numpy(),
                              device=config.device)
    found = Outcome("surrogate", dict(defaults), task.cost, objective=default_mape if config.anchored else None)
    checked = {setting_key(defaults)}
    labels = [(scale_settings(space, [defaults])[0], default_cycles[keep])] if config.anchored else []
    rounds = max(1, min(config.rounds, config.checks)) if config.anchored else 1
    for round_ in range(rounds):
        ranked, trace = descend(surrogate, space, defaults, replace(config, seed=config.seed + round_), progress)
        found.trace += [(len(found.trace) + step, value) for step, value in trace]
        if not config.checks:  # trust the surrogate's first choice, as DiffTune does
            found.setting, found.objective = dict(ranked[0][0]) if ranked else dict(defaults), ranked[0][1] if ranked else None
            break
        share = config.checks * (round_ + 1) // rounds - config.checks * round_ // rounds
        for setting in [setting for setting, _ in ranked if setting_key(setting) not in checked][:share]:
            value, cycles = llvm_mca_mape(task.program, setting, blocks, measured)
            checked.add(setting_key(setting))
            if config.anchored:
                labels.append((scale_settings(space, [setting])[0], cycles[keep]))
            if found.objective is None or value < found.objective:
                found.setting, found.objective = dict(setting), value
        if round_ < rounds - 1:
            surrogate.fit(labels, config.fit_steps, seed=config.seed + round_)
    return found


def _log_run(task: Problem, config: OptimizeConfig, outcomes: dict[str, Outcome], out: str | Path | None) -> str:
    """One MLflow run: metrics per method, params.json (the surrogate's setting as llvm-mca options),
    settings.json and the plot; params.json also to `out`."""
    program = task.program
    with tracking.start_run(run_name=f"optimize-{program.mcpu}") as run:
        mlflow.set_tags({"program": "llvm-mca", "mcpu": program.mcpu, "mode": "optimize", "model_uri": config.model,
                         "surrogate_parent": str(task.predictor.meta.get("parent", ""))})
        tracking.log_params({**{k: v for k, v in asdict(config).items() if k != "baselines"},
                           "baselines": ",".join(config.baselines), "baseline_trials": task.trials,
                           "train_blocks": len(task.train_rows), "test_blocks": len(task.test_rows),
                           "llvm_mca_version": program.version})
        for o in outcomes.values():
            mlflow.log_metrics({f"{o.method}_test_mape": o.test_mape, f"{o.method}_test_tau": o.test_tau,
                                f"{o.method}_evaluations": o.evaluations,
                                **({f"{o.method}_objective": o.objective} if o.objective is not None else {})})
        params_text = json.dumps(options(program, outcomes["surrogate"].setting), indent=1) + "\n"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "params.json").write_text(params_text)
            (tmp / "settings.json").write_text(json.dumps(
                {o.method: {**asdict(o), "trace": None, "options": options(program, o.setting)}
                 for o in outcomes.values()}, indent=1, default=float) + "\n")
            plots.optimization(outcomes, tmp / "optimization.png", f"llvm-mca -mcpu={program.mcpu}: parameters found")
            mlflow.log_artifacts(str(tmp))
        if out is not None:
            Path(out).write_text(params_text)
    return run.info.run_id
