"""Surrogate architectures: one file each, an `nn.Module` beside its frozen config dataclass.

Every design takes token ids shaped (batch, instructions, tokens), 0 for padding, and returns
cycles per 100 iterations, shaped (batch,); `encode` gives the pooled features its head reads.
`dep` (the default) also reads the def-use edge tokens its tokenizer appends to each row
(`tokenizer_options` says which tokenizer a config needs).
`conditioned` wraps any of them with llvm-mca's parameters as a second input; `confident` wraps a
trained one with an estimate of its own error per block (output (batch, 2)); `ensemble` holds several
trained networks of one architecture and answers with their geometric mean. To add one: write `models/<name>.py` with a config
and a module, add it to ARCHITECTURES, and give it size presets in presets/model_sizes.json.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from surrogate_ops import presets
from surrogate_ops.errors import SurrogateOpsError
from surrogate_ops.models.bert import Bert, BertConfig
from surrogate_ops.models.conditioned import Conditioned, ConditionedConfig
from surrogate_ops.models.confident import Confident, ConfidentConfig
from surrogate_ops.models.dep import Dep, DepConfig
from surrogate_ops.models.ensemble import Ensemble, EnsembleConfig
from surrogate_ops.models.hier import Hier, HierConfig
from surrogate_ops.models.ithemal import Ithemal, IthemalConfig

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "hier": (HierConfig, Hier),
    "dep": (DepConfig, Dep),
    "bert": (BertConfig, Bert),
    "ithemal": (IthemalConfig, Ithemal),
    "conditioned": (ConditionedConfig, Conditioned),
    "confident": (ConfidentConfig, Confident),
    "ensemble": (EnsembleConfig, Ensemble),
}
WRAPPERS = ("conditioned", "confident", "ensemble")  # architectures made around a trained one, never built from scratch
DEFAULT_ARCH = "dep"  # what `train` builds unless told otherwise


def build(arch: str, vocab_size: int, preset: str = "small", **sizes: int) -> nn.Module:
    """A fresh model of `arch` at a named size preset, with explicit sizes overriding the preset."""
    buildable = [name for name in ARCHITECTURES if name not in WRAPPERS]
    if arch not in buildable:
        raise SurrogateOpsError(f"unknown architecture {arch!r}; choose from {', '.join(buildable)}")
    table = presets.load("model_sizes")[arch]
    if preset not in table:
        raise SurrogateOpsError(f"unknown preset {preset!r} for {arch}; choose from {', '.join(table)}")
    config_cls, module_cls = ARCHITECTURES[arch]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(sizes) - fields
    if unknown:
        raise SurrogateOpsError(f"{arch} has no size option {', '.join(sorted(unknown))}")
    return module_cls(config_cls(vocab_size=vocab_size, **{**table[preset], **sizes}))


def size_options(items: list[str]) -> dict[str, int]:
    """`["dim=48", "layers=1"]` -> `{"dim": 48, "layers": 1}`; SurrogateOpsError naming a bad item."""
    parsed = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not value.isdigit():
            raise SurrogateOpsError(f"{item!r}: expected NAME=INT")
        parsed[key] = int(value)
    return parsed


def tokenizer_options(config) -> dict[str, int]:
    """The tokenizer a model of this config reads: its row width, and its edge tokens where it takes them."""
    max_deps = getattr(config, "max_deps", 0)
    return {"max_tokens": config.max_tokens, "max_deps": max_deps, "positions": config.max_instructions if max_deps else 0}


def arch_of(model: nn.Module) -> str:
    return next(name for name, (_, cls) in ARCHITECTURES.items() if isinstance(model, cls))


def to_checkpoint(model: nn.Module) -> dict:
    """What is needed to rebuild the model: architecture, config and weights."""
    return {"arch": arch_of(model), "config": dataclasses.asdict(model.config), "state_dict": model.state_dict()}


def from_checkpoint(checkpoint: dict) -> nn.Module:
    config_cls, module_cls = ARCHITECTURES[checkpoint["arch"]]
    model = module_cls(config_cls(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_conditioned(model: nn.Module) -> bool:
    return isinstance(model, Conditioned)


def takes_parts(model: nn.Module) -> bool:
    """Whether the model also runs from a batch's parts (`forward_parts`, `batching.parts`)."""
    inner = network(model)
    if isinstance(inner, Ensemble):
        return all(isinstance(m, Dep) for m in inner.members)
    return isinstance(inner, Dep)  # a dep network, alone or inside a confident model


def network(model: nn.Module) -> nn.Module:
    """The network that predicts cycles: a confident model's without its error head (which training
    the network would leave stale), any other model as it is."""
    return model.block if isinstance(model, Confident) else model


__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "WRAPPERS", "Conditioned", "Confident", "Ensemble", "build", "from_checkpoint", "is_conditioned", "network", "parameter_count",
           "takes_parts", "to_checkpoint", "tokenizer_options"]
