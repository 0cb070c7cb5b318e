"""`conditioned`: a surrogate of llvm-mca under a parameter setting, for surrogate optimization.

Any block encoder (hier, bert, ithemal) reads the block; a small MLP reads the encoder's pooled
features beside the parameter setting (each parameter as a unit in [0, 1], see
`programs.base.Parameter.to_unit`) and adds its answer to the encoder's own log-cycles. The MLP's
last layer starts at zero, so a conditioned model made from a trained surrogate starts out as that
surrogate, whatever the setting, and learns how the parameters move the answer.

The block part does not depend on the parameters: optimization encodes its blocks once
(`encode`) and then descends on the setting through the MLP alone (`from_encoding`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConditionedConfig:
    base: str  # architecture of the block encoder
    base_config: dict  # its config, as a dict
    parameters: tuple[str, ...]  # parameter names, in the column order of the `params` input
    hidden: int = 128

    def __post_init__(self):
        object.__setattr__(self, "parameters", tuple(self.parameters))

    # the limits every caller reads from a model's config
    vocab_size = property(lambda self: self.base_config["vocab_size"])
    max_instructions = property(lambda self: self.base_config["max_instructions"])
    max_tokens = property(lambda self: self.base_config["max_tokens"])


class Conditioned(nn.Module):
    def __init__(self, config: ConditionedConfig):
        super().__init__()
        from surrogate_ops.models import ARCHITECTURES

        self.config = config
        config_cls, module_cls = ARCHITECTURES[config.base]
        self.block = module_cls(config_cls(**config.base_config))
        dim = config.base_config["dim"]
        self.mix = nn.Sequential(nn.Linear(dim + len(config.parameters), config.hidden), nn.GELU(),
                                 nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    @classmethod
    def wrap(cls, block: nn.Module, parameters: tuple[str, ...], hidden: int = 128) -> Conditioned:
        """A conditioned model whose block encoder is `block` (weights kept): it starts as `block`."""
        from surrogate_ops.models import arch_of

        model = cls(ConditionedConfig(arch_of(block), dataclasses.asdict(block.config), tuple(parameters), hidden))
        model.block.load_state_dict(block.state_dict())
        return model

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.block.encode(tokens)  # (batch, dim)

    def from_encoding(self, pooled: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # pooled: (batch, dim); params: (batch, parameters) units in [0, 1]
        head = self.block.head
        features = head.norm(pooled)
        log_cycles = head.proj(features).squeeze(-1) + head.log_scale
        return torch.exp(log_cycles + self.mix(torch.cat([features, params], dim=-1)).squeeze(-1))  # (batch,)

    def forward(self, tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.from_encoding(self.encode(tokens), params)
