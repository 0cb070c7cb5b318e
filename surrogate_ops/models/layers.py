"""Building blocks shared by the architectures, written with plain tensor ops so that they export
to ONNX with operators Apache TVM's Relax frontend imports (MatMul, Softmax, LayerNormalization)."""

from __future__ import annotations

import math

import torch
from torch import nn


class WrappedLimits:
    """For the config of a model made around another (conditioned, confident): the limits every
    caller reads from a model's config are the wrapped model's (`base_config`)."""

    vocab_size = property(lambda self: self.base_config["vocab_size"])
    max_instructions = property(lambda self: self.base_config["max_instructions"])
    max_tokens = property(lambda self: self.base_config["max_tokens"])


class Attention(nn.Module):
    """Multi-head self-attention with a key padding mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # x: (batch, seq, dim); mask: (batch, seq), True where there is a real element;
        # bias: (batch, heads, seq, seq) added to the attention logits (dependency edges), or None
        # No reshape back to (b, s, d) after attention: when s is a product of dynamic dimensions
        # (instructions x tokens), the exported shape is arithmetic that TVM's ONNX importer refuses.
        # The heads are merged by the output projection itself (an einsum over head and head_dim).
        b = x.shape[0]
        q, k, v = self.qkv(x).reshape(b, -1, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (b, h, s, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (b, h, s, s)
        scores = scores + (~mask)[:, None, None, :].to(x.dtype) * -1e4
        if bias is not None:
            scores = scores + bias
        y = torch.softmax(scores, dim=-1) @ v  # (b, h, s, hd)
        weight = self.out.weight.t().reshape(self.heads, self.head_dim, -1)  # (h, hd, d)
        return torch.einsum("bhsk,hkd->bsd", y, weight) + self.out.bias


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, bias)
        return x + self.ff(self.norm2(x))


class CyclesHead(nn.Module):
    """Regression head: pooled features to cycles (per 100 iterations), positive by construction.

    Predicts log-cycles around `log_scale` (set from the training targets' median), so that the
    untrained network starts near the right magnitude."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)
        self.register_buffer("log_scale", torch.zeros(()))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.proj(self.norm(pooled)).squeeze(-1) + self.log_scale)  # (batch,)
