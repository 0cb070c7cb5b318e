"""Several trained surrogates of one vocabulary made into one registered model.

`combine(members, data, ...)` takes surrogates fine-tuned from the same parent on the same data
(the same vocabulary, the same network shape; different seeds) and makes either
- an **ensemble** (`models.Ensemble`): every member answers and the model gives their geometric
  mean; errors that are partly independent partly cancel, at K times a member's cost per block; or
- a **soup**: one network whose weights are the members' mean (members fine-tuned from one parent
  stay close enough in weight space for the mean to be a good network), at one member's cost.
The result is exported, scored on the data's test split as training scores a model, logged to its
own MLflow run (each member's version and test figures as parameters), and registered when asked.
`finetune --members K` trains the members and combines them; `surrogate-ops combine` combines
members trained elsewhere (on a GPU machine, say).
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import torch

from surrogate_ops import models, registry
from surrogate_ops.builds.export import save_model_dir
from surrogate_ops.config import COMBINE_HOWS as HOWS
from surrogate_ops.config import work_dir
from surrogate_ops.data import datasets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.registry import tracking, versions
from surrogate_ops.runtime.modeldir import ModelDir
from surrogate_ops.training.train import TrainResult, score


def networks_of(members: list[ModelDir]) -> list[torch.nn.Module]:
    """The members' networks, checked to share one vocabulary and one network shape."""
    if len(members) < 2:
        raise SurrogateOpsError("combining needs at least two members")
    vocab = members[0].vocab.read_bytes()
    networks = [models.network(m.module()) for m in members]
    for member, network in zip(members[1:], networks[1:]):
        if member.vocab.read_bytes() != vocab:
            raise SurrogateOpsError(f"{member} has another vocabulary than {members[0]}: members are fine-tuned "
                                    "from one parent on one dataset")
        if models.arch_of(network) != models.arch_of(networks[0]) or network.config != networks[0].config:
            raise SurrogateOpsError(f"{member} has another network shape than {members[0]}")
    if any(isinstance(n, models.Ensemble) or models.is_conditioned(n) for n in networks):
        raise SurrogateOpsError("members are plain networks (not ensembles, not parameter-conditioned)")
    return networks


def soup(networks: list[torch.nn.Module]) -> torch.nn.Module:
    """One network with the members' mean weights."""
    states = [n.state_dict() for n in networks]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
            if states[0][k].is_floating_point() else states[0][k] for k in states[0]}
    model = models.from_checkpoint({**models.to_checkpoint(networks[0]), "state_dict": mean})
    return model.eval()


def combined(networks: list[torch.nn.Module], how: str) -> torch.nn.Module:
    if how == "ensemble":
        return models.Ensemble.of(networks).eval()
    if how == "soup":
        return soup(networks)
    raise SurrogateOpsError(f"unknown way to combine {how!r}: use {' or '.join(HOWS)}")


def combine(member_uris: list[str], data: str | Path, how: str = "ensemble", register: str | None = None,
            mcpu: str | None = None, target: str = "measured", tags: dict | None = None) -> TrainResult:
    """Combine the surrogates `member_uris` (model directories or registry URIs) into one, scored on
    `data`'s test split; registered as `register` when given."""
    started = time.time()
    opened = [registry.open(uri) for uri in member_uris]
    members = [o.model for o in opened]
    networks = networks_of(members)
    mcpu = mcpu or members[0].mcpu
    frame = datasets.load(datasets.measured_dataset(data, mcpu) if target == "measured" else data)
    model = combined(networks, how)
    first = members[0].meta
    with tracking.start_run(run_name=f"{how}-of-{len(members)}-{target}-{mcpu}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"program": "llvm-mca", "mcpu": mcpu, "target": target, "arch": models.arch_of(model),
                         "mode": how, **(tags or {})})
        tracking.log_params({"how": how, "members": len(members), "member_uris": ", ".join(member_uris),
                             "parameters": models.parameter_count(model)})
        for i, member in enumerate(members):
            figures = member.meta.get("metrics", {})
            if "test_mape_vs_measured" in figures:
                mlflow.log_metric(f"member_{i}_test_mape_vs_measured", figures["test_mape_vs_measured"])
        meta = {"program": "llvm-mca", "program_version": first.get("program_version", "unknown"), "mcpu": mcpu,
                "target": target, "dataset_digest": first.get("dataset_digest", ""), "run_id": run.info.run_id,
                "parent": first.get("parent", ""), "members": [str(m) for m in member_uris], "combined": how}
        blocks = list(frame.loc[frame["split"] == "val", "block"][:64])
        model_dir, agreement = save_model_dir(model, members[0].tokenizer(), meta, work_dir() / "models" / run.info.run_id,
                                              check_blocks=blocks)
        mlflow.log_metrics({"onnx_max_abs_diff": agreement.max_abs, "onnx_max_rel_diff": agreement.max_rel})
        model_dir, metrics = score(model_dir, frame, mcpu, f"{how} of {len(members)}",
                                   {"train_seconds": time.time() - started})
        version_tags = {"program": "llvm-mca", "program_version": meta["program_version"], "mcpu": mcpu,
                        "arch": models.arch_of(model), "target": target, "mode": how, "members": str(len(members)),
                        **{k: f"{v:.6g}" for k, v in metrics.items()}, **(tags or {})}
        registered = versions.log_model(model_dir, example=blocks[:2], name=register, tags=version_tags)
    return TrainResult(run.info.run_id, model_dir, metrics, registered, 0, metrics["train_seconds"])
