"""`confident`: a surrogate that says, per block, how far off it expects to be.

A trained block encoder (hier, dep, ...) keeps its weights and its cycles head; beside the head, a
small MLP reads the same pooled features and the predicted log-cycles and estimates the relative
error of that prediction against the program (|surrogate - llvm-mca| / llvm-mca). It is fit after
the fact, on residuals of blocks the encoder never trained on (`confidence.fit_error_head`), so it
costs one small MLP per block at inference: the service can route the least trusted blocks to
llvm-mca (`max_error`) and still run at the surrogate's speed.

The network's output is (batch, 2): cycles per 100 iterations, then the estimated relative error
(0.05 = 5%). Engines pass it through unchanged; `inference.Predictor` splits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import WrappedLimits


@dataclass(frozen=True)
class ConfidentConfig(WrappedLimits):
    base: str  # architecture of the surrogate whose error is estimated
    base_config: dict  # its config, as a dict
    hidden: int = 64


class Confident(nn.Module):
    def __init__(self, config: ConfidentConfig):
        super().__init__()
        from surrogate_ops.models import ARCHITECTURES

        self.config = config
        config_cls, module_cls = ARCHITECTURES[config.base]
        self.block = module_cls(config_cls(**config.base_config))
        dim = config.base_config["dim"]
        self.error = nn.Sequential(nn.LayerNorm(dim + 1), nn.Linear(dim + 1, config.hidden), nn.GELU(),
                                   nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))

    @classmethod
    def wrap(cls, block: nn.Module, hidden: int = 64) -> Confident:
        """A confident model around `block` (weights kept; the error head untrained)."""
        import dataclasses

        from surrogate_ops.models import arch_of

        model = cls(ConfidentConfig(arch_of(block), dataclasses.asdict(block.config), hidden))
        model.block.load_state_dict(block.state_dict())
        return model

    def features(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cycles (batch,), what the error head reads (batch, dim + 1))."""
        return self._read(self.block.encode(tokens))

    def _read(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cycles = self.block.head(pooled)
        return cycles, torch.cat([pooled, torch.log(cycles).unsqueeze(-1)], dim=-1)

    def log_error(self, features: torch.Tensor) -> torch.Tensor:
        return self.error(features).squeeze(-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._answer(*self.features(tokens))

    def forward_parts(self, rows: torch.Tensor, ins: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """`forward` from a batch's parts, where the block encoder takes them (`dep`)."""
        return self._answer(*self._read(self.block.encode_parts(rows, ins, edges)))

    def _answer(self, cycles: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([cycles, torch.exp(self.log_error(features))], dim=-1)  # (batch, 2)
