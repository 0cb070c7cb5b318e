"""`dep`: `hier` that sees the block's dependency graph.

Throughput under llvm-mca is often set by a chain, not by the mix: one `imulq %rcx, %rdx` is a
3-cycle loop-carried chain, `movq (%rax), %rax` a pointer chase. A plain transformer over
instructions must guess the def-use structure from register tokens, and on dense chains it
guesses badly. Here the tokenizer appends each instruction's def-use edges as tokens with fixed ids
(`tokenizer.dependency_tokens`: kind and producer), and the model turns them back into an edge matrix
E (batch, kinds, instructions, instructions) with comparisons alone, so the network still takes one
input and exports to ONNX and TVM as `hier` does. E enters three ways, as in graph networks for
basic blocks (Granite):
- per-instruction degree features: in- and out-edges of each kind, and self-loops (an
  instruction that feeds itself across iterations is a chain on its own);
- a message step before every attention layer: each instruction adds a projection, per edge
  kind, of its producers' vectors;
- attention biases: a learned logit per head for each edge kind and direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.blocks.batching import EDGE_BASE
from surrogate_ops.blocks.batching import EDGE_KINDS as KINDS  # reg, reg-carried, mem, mem-carried (blocks.deps.KINDS)
from surrogate_ops.models.layers import CyclesHead, TransformerLayer


@dataclass(frozen=True)
class DepConfig:
    vocab_size: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    ff_mult: int = 2
    max_tokens: int = 22  # row width: instruction tokens, then up to max_deps edge tokens
    max_deps: int = 6  # edge tokens per instruction
    max_instructions: int = 64  # also the positions edge tokens can name


class DepLayer(nn.Module):
    """A message step along the edges, then a transformer layer biased by them."""

    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.message = nn.Parameter(torch.randn(KINDS, dim, dim) / dim**0.5)  # a projection per edge kind
        self.edge_bias = nn.Parameter(torch.zeros(2 * KINDS, heads))  # per kind: consumer->producer, reverse
        self.layer = TransformerLayer(dim, heads, ff_mult)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                ) -> torch.Tensor:
        # x: (b, i, d); edges: (b, k, i, j), 1 where instruction i reads what j wrote, and its two
        # views (b, i, j, k) and (b, j, i, k), made once for every layer (`Dep.over_block`)
        # batched matrix products, not reshapes (TVM's ONNX importer refuses reshapes to several
        # dynamic dimensions) and not einsums (ONNX Runtime runs MatMul several times faster)
        by_kind, reads, read_by = edges
        messages = self.norm(x).unsqueeze(1) @ self.message  # (b, k, j, d)
        x = x + (by_kind @ messages).sum(1)  # each instruction gathers its producers' messages, per kind
        forward = reads @ self.edge_bias[:KINDS]  # (b, i, j, h)
        backward = read_by @ self.edge_bias[KINDS:]  # (b, i, j, h): j reads i
        return self.layer(x, mask, (forward + backward).permute(0, 3, 1, 2))  # bias (b, h, i, j)


class Dep(nn.Module):
    def __init__(self, config: DepConfig):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=0)
        self.slot = nn.Parameter(torch.randn(config.max_tokens, config.dim) * 0.02)
        self.position = nn.Parameter(torch.randn(config.max_instructions, config.dim) * 0.02)
        self.token_mix = nn.Sequential(nn.Linear(config.dim, config.dim), nn.GELU())
        self.instruction = nn.Sequential(nn.LayerNorm(config.dim), nn.Linear(config.dim, config.dim), nn.GELU())
        self.degree = nn.Linear(3 * KINDS, config.dim)
        self.layers = nn.ModuleList(DepLayer(config.dim, config.heads, config.ff_mult) for _ in range(config.layers))
        self.head = CyclesHead(config.dim)
        self.register_buffer("index", torch.arange(config.max_instructions), persistent=False)
        self.register_buffer("kinds", torch.arange(KINDS), persistent=False)
        self.register_buffer("eye", torch.eye(config.max_instructions), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(tokens))  # (batch,)

    def edges(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(edge matrix (b, kinds, i, i) float, edge-token mask (b, i, t)) from the token ids."""
        n_ins = tokens.shape[1]
        positions = self.config.max_instructions
        offset = tokens - EDGE_BASE
        is_edge = (offset >= 0) & (offset < KINDS * positions)  # (b, i, t)
        offset = torch.where(is_edge, offset, torch.zeros_like(offset))
        kind = torch.div(offset, positions, rounding_mode="trunc")
        producer = offset - kind * positions
        by_kind = ((kind.unsqueeze(-1) == self.kinds) & is_edge.unsqueeze(-1)).to(self.slot.dtype)  # (b, i, t, k)
        by_producer = (producer.unsqueeze(-1) == self.index[:n_ins]).to(self.slot.dtype)  # (b, i, t, j)
        edges = by_kind.transpose(2, 3) @ by_producer  # (b, i, k, t) @ (b, i, t, j) -> (b, i, k, j)
        return edges.transpose(1, 2), is_edge  # (b, k, i, j)

    def mixed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """token_mix(embedding + slot) of every token, (b, i, t, d). In eval mode (inference,
        export) it is read from a table of every (token id, slot) pair made from the weights: one
        gather instead of a matrix product and a GELU per token, and a table that ONNX Runtime
        folds into a constant when it loads the model. Training keeps the direct form, which
        touches only the tokens in the batch."""
        if self.training:
            return self.token_mix(self.token(tokens) + self.slot[: tokens.shape[2]])
        width = self.config.max_tokens
        table = self.token_mix(self.token.weight.unsqueeze(1) + self.slot).reshape(-1, self.config.dim)  # (vocab * width, d)
        return nn.functional.embedding(tokens * width + self.index[: tokens.shape[2]], table)

    def encode(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The block's pooled features, (batch, dim); `condition` (batch, dim) or (batch, instructions,
        dim) as in `hier`."""
        # tokens: (batch, instructions, tokens) int64, 0 = padding
        edges, is_edge = self.edges(tokens)
        token_mask = ((tokens != 0) & ~is_edge).unsqueeze(-1).to(self.slot.dtype)  # instruction tokens only
        x = (self.mixed_tokens(tokens) * token_mask).sum(2)  # (b, i, d)
        return self.over_block(self.instruction(x), tokens[:, :, 0] != 0, edges, condition)

    def encode_parts(self, rows: torch.Tensor, ins: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """`encode` from a batch's parts (`batching.parts`): each distinct instruction's tokens once,
        rows (u, w) with row 0 all padding; each instruction's row, ins (b, i), 0 for padding; the
        edge matrix (b, kinds, i, i). What depends on one instruction alone (its tokens through the
        token table, pooled, the instruction MLP) runs once per distinct instruction of the batch,
        about half of its instructions on BHive, and the edges come built: same answers as
        `encode`, up to float rounding, from a cheaper graph (issue 32)."""
        token_mask = (rows != 0).unsqueeze(-1).to(self.slot.dtype)
        per_row = self.instruction((self.mixed_tokens(rows.unsqueeze(0))[0] * token_mask).sum(1))  # (u, d)
        return self.over_block(per_row[ins], ins != 0, edges)

    def over_block(self, x: torch.Tensor, mask: torch.Tensor, edges: torch.Tensor,
                   condition: torch.Tensor | None = None) -> torch.Tensor:
        """From each instruction's vector x (b, i, d), which are real (mask (b, i)), and the edges, to
        the block's pooled features (b, d)."""
        n_ins = x.shape[1]
        self_loops = (edges * self.eye[:n_ins, :n_ins]).sum(-1)  # (b, k, i)
        degrees = torch.cat([edges.sum(-1), edges.sum(-2), self_loops], dim=1).transpose(1, 2)  # (b, i, 3k)
        x = x + self.position[:n_ins] + self.degree(degrees)
        if condition is not None:
            x = x + (condition if condition.dim() == 3 else condition.unsqueeze(1))
        views = (edges, edges.permute(0, 2, 3, 1), edges.permute(0, 3, 2, 1))
        for layer in self.layers:
            x = layer(x, mask, views)
        return (x * mask.unsqueeze(-1).to(x.dtype)).sum(1)  # (b, d)

    def forward_parts(self, rows: torch.Tensor, ins: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode_parts(rows, ins, edges))  # (batch,)
