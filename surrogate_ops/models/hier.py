"""`hier`: the fast design. Tokens are pooled per instruction, then a light transformer runs over
instructions, not tokens.

A block of I instructions of T tokens costs O(I*T) for the pooling and O(I^2) for attention,
instead of O((I*T)^2) for a token-level transformer; real blocks are short (most under 10
instructions), so with length bucketing a batch is a few small matrix products. Only MatMul,
Softmax, LayerNorm, Gather and reductions: ONNX and TVM's Relax frontend take it as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import CyclesHead, TransformerLayer


@dataclass(frozen=True)
class HierConfig:
    vocab_size: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    ff_mult: int = 2
    max_tokens: int = 16  # tokens per instruction
    max_instructions: int = 64
    token_mlp: bool = True  # bind each token to its slot (a nonlinearity before pooling), not a bag of tokens


class Hier(nn.Module):
    def __init__(self, config: HierConfig):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=0)
        self.slot = nn.Parameter(torch.randn(config.max_tokens, config.dim) * 0.02)  # position within instruction
        self.position = nn.Parameter(torch.randn(config.max_instructions, config.dim) * 0.02)
        self.token_mix = nn.Sequential(nn.Linear(config.dim, config.dim), nn.GELU()) if config.token_mlp else nn.Identity()
        self.instruction = nn.Sequential(nn.LayerNorm(config.dim), nn.Linear(config.dim, config.dim), nn.GELU())
        self.layers = nn.ModuleList(TransformerLayer(config.dim, config.heads, config.ff_mult) for _ in range(config.layers))
        self.head = CyclesHead(config.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(tokens))  # (batch,)

    def encode(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The block's pooled features, (batch, dim): what the head reads. `condition` (batch, dim),
        when given, is added to every instruction's vector before attention (a conditioned model);
        (batch, instructions, dim) gives each instruction its own (per-instruction parameters)."""
        # tokens: (batch, instructions, tokens) int64, 0 = padding
        _, n_ins, n_tok = tokens.shape
        token_mask = (tokens != 0).unsqueeze(-1).to(self.slot.dtype)  # (b, i, t, 1)
        x = (self.token_mix(self.token(tokens) + self.slot[:n_tok]) * token_mask).sum(2)  # (b, i, d)
        x = self.instruction(x) + self.position[:n_ins]
        if condition is not None:
            x = x + (condition if condition.dim() == 3 else condition.unsqueeze(1))
        mask = tokens[:, :, 0] != 0  # (b, i): real instructions
        for layer in self.layers:
            x = layer(x, mask)
        pooled = (x * mask.unsqueeze(-1).to(x.dtype)).sum(1)  # (b, d)
        return pooled
