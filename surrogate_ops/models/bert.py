"""`bert`: the seed paper's surrogate, a small transformer encoder over all the block's tokens with
a regression head (their default: hidden 64, 2 layers, 2 heads, feed-forward 4x hidden).

The block arrives as (batch, instructions, tokens) like every design here, and is flattened to one
token sequence; a token's position is its instruction's index plus its slot in the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import CyclesHead, TransformerLayer


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    ff_mult: int = 4
    max_tokens: int = 16  # tokens per instruction
    max_instructions: int = 64


class Bert(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=0)
        self.slot = nn.Parameter(torch.randn(config.max_tokens, config.dim) * 0.02)
        self.position = nn.Parameter(torch.randn(config.max_instructions, config.dim) * 0.02)
        self.layers = nn.ModuleList(TransformerLayer(config.dim, config.heads, config.ff_mult) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.head = CyclesHead(config.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(tokens))  # (batch,)

    def encode(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The block's pooled features, (batch, dim): what the head reads. `condition` (batch, dim),
        when given, is added to every token's vector before attention (a conditioned model);
        (batch, instructions, dim) to the tokens of each instruction."""
        # tokens: (batch, instructions, tokens) int64, 0 = padding
        _, n_ins, n_tok = tokens.shape
        x = self.token(tokens) + self.slot[:n_tok] + self.position[:n_ins].unsqueeze(1)  # (b, i, t, d)
        if condition is not None:
            x = x + (condition[:, :, None, :] if condition.dim() == 3 else condition[:, None, None, :])
        # (b, s, d) with s = i * t; -1 rather than i * t keeps the exported shape free of arithmetic
        # on dynamic dimensions, which TVM's ONNX importer cannot reshape
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        mask = (tokens != 0).reshape(tokens.shape[0], -1)  # (b, s)
        for layer in self.layers:
            x = layer(x, mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (self.norm(x) * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # mean over real tokens
        return pooled
