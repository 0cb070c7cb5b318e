"""`conditioned`: a surrogate of llvm-mca under a parameter setting, for surrogate optimization.

A block encoder (hier, dep or bert) reads the block with the setting (each parameter as a unit in
[0, 1], see `programs.base.Parameter.scale`) added, through a small MLP, to every instruction's
vector (`inject="instructions"`: attention sees the setting beside each instruction, so it can
weigh, say, the load queue against the block's loads); a second MLP reads the pooled features
beside the setting and adds its answer to the encoder's own log-cycles. Both MLPs' last layers
start at zero, so a conditioned model made from a trained surrogate starts out as that surrogate,
whatever the setting, and learns how the parameters move the answer. `inject="pooled"` keeps the
encoder blind to the setting: then optimization encodes its blocks once and descends through the
second MLP alone. `inject="per_instruction"` takes a setting per instruction instead, `params`
(batch, instructions, parameters): each instruction's own scheduling entry (`programs.tables`:
latency, micro-ops, port cycles) added to its vector, and their mean over the block's instructions
read by the second MLP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import WrappedLimits


@dataclass(frozen=True)
class ConditionedConfig(WrappedLimits):
    base: str  # architecture of the block encoder
    base_config: dict  # its config, as a dict
    parameters: tuple[str, ...]  # parameter names, in the column order of the `params` input
    hidden: int = 128
    inject: str = "pooled"  # where the setting enters: "pooled" features only, also "instructions", or "per_instruction"

    def __post_init__(self):
        object.__setattr__(self, "parameters", tuple(self.parameters))


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
        if config.inject in ("instructions", "per_instruction"):
            if config.base not in ("hier", "dep", "bert"):
                raise ValueError(f"{config.base} cannot take the setting per instruction; use inject='pooled'")
            self.inject = nn.Sequential(nn.Linear(len(config.parameters), dim), nn.GELU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.inject[-1].weight)
            nn.init.zeros_(self.inject[-1].bias)
        elif config.inject != "pooled":
            raise ValueError(f"inject must be 'pooled', 'instructions' or 'per_instruction', not {config.inject!r}")

    @classmethod
    def wrap(cls, block: nn.Module, parameters: tuple[str, ...], hidden: int = 128,
             inject: str | None = None) -> Conditioned:
        """A conditioned model whose block encoder is `block` (weights kept): it starts as `block`.
        `inject` defaults to "instructions" where the encoder takes it (hier, dep, bert)."""
        from surrogate_ops.models import arch_of

        inject = inject or ("instructions" if arch_of(block) in ("hier", "dep", "bert") else "pooled")
        model = cls(ConditionedConfig(arch_of(block), dataclasses.asdict(block.config), tuple(parameters), hidden,
                                      inject))
        model.block.load_state_dict(block.state_dict())
        return model

    @property
    def blind(self) -> bool:
        """True when the block encoding does not depend on the setting (it can be computed once)."""
        return self.config.inject == "pooled"

    def encode(self, tokens: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        if self.blind:
            return self.block.encode(tokens)  # (batch, dim)
        condition = self.inject(params)
        if self.config.inject == "per_instruction":  # padding rows get no condition
            condition = condition * self._real(tokens, params)
        return self.block.encode(tokens, condition)  # (batch, dim)

    def setting(self, tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The setting the second MLP reads, (batch, parameters): per instruction, the mean over
        the block's real instructions."""
        if self.config.inject != "per_instruction":
            return params
        real = self._real(tokens, params)
        return (params * real).sum(1) / real.sum(1).clamp(min=1)

    @staticmethod
    def _real(tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return (tokens[:, :, :1] != 0).to(params.dtype)  # (batch, instructions, 1)

    def from_encoding(self, pooled: torch.Tensor, setting: torch.Tensor) -> torch.Tensor:
        # pooled: (batch, dim); setting: (batch, parameters), as `setting` gives it
        head = self.block.head
        features = head.norm(pooled)
        log_cycles = head.proj(features).squeeze(-1) + head.log_scale
        return torch.exp(log_cycles + self.mix(torch.cat([features, setting], dim=-1)).squeeze(-1))  # (batch,)

    def forward(self, tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # params: (batch, parameters) scaled to [0, 1], or (batch, instructions, parameters) per instruction
        return self.from_encoding(self.encode(tokens, params), self.setting(tokens, params))
