"""`ensemble`: several trained networks of one architecture and one vocabulary, answering together.

Each member reads the same token ids; the answer is the geometric mean of their cycles (the mean
in log space, where the relative errors that MAPE counts are symmetric). Members fine-tuned from
one parent with different seeds see the data in different orders and land in different minima;
their errors are partly independent, so the mean is closer to the measurement than a typical
member (`training.combine` makes one; `finetune --members K` trains them). One graph: it exports to
ONNX and TVM as its members do, at K times their cost per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import WrappedLimits


@dataclass(frozen=True)
class EnsembleConfig(WrappedLimits):
    base: str  # the members' architecture
    base_config: dict  # their config, as a dict (the same for all)
    members: int = 2


class Ensemble(nn.Module):
    def __init__(self, config: EnsembleConfig):
        super().__init__()
        from surrogate_ops.models import ARCHITECTURES

        self.config = config
        config_cls, module_cls = ARCHITECTURES[config.base]
        self.members = nn.ModuleList(module_cls(config_cls(**config.base_config)) for _ in range(config.members))

    @classmethod
    def of(cls, networks: list[nn.Module]) -> Ensemble:
        """An ensemble of trained `networks` (weights copied), which must share architecture and config."""
        import dataclasses

        from surrogate_ops.models import arch_of

        configs = {(arch_of(n), repr(dataclasses.asdict(n.config))) for n in networks}
        if len(configs) != 1:
            raise ValueError("an ensemble's members share one architecture and one config")
        first = networks[0]
        model = cls(EnsembleConfig(arch_of(first), dataclasses.asdict(first.config), len(networks)))
        for member, network in zip(model.members, networks):
            member.load_state_dict(network.state_dict())
        return model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._mean([m(tokens) for m in self.members])

    def forward_parts(self, rows: torch.Tensor, ins: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """`forward` from a batch's parts, where the members take them (`dep`)."""
        return self._mean([m.forward_parts(rows, ins, edges) for m in self.members])

    @staticmethod
    def _mean(cycles: list[torch.Tensor]) -> torch.Tensor:
        return torch.exp(torch.stack([torch.log(c) for c in cycles]).mean(0))  # (batch,)
