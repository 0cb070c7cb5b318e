"""`ithemal`: the hierarchical LSTM of Ithemal and DiffTune, the field's reference design.

A token LSTM reads each instruction; its state after the instruction's last token is the
instruction's vector; an instruction LSTM reads those; a linear head reads its final state.
Exports to ONNX (the LSTM operator), which ONNX Runtime runs; Apache TVM's Relax ONNX frontend
does not import LSTM, so this design has no TVM build.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surrogate_ops.models.layers import CyclesHead


@dataclass(frozen=True)
class IthemalConfig:
    vocab_size: int
    dim: int = 64
    max_tokens: int = 16
    max_instructions: int = 64


class Ithemal(nn.Module):
    def __init__(self, config: IthemalConfig):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=0)
        self.token_lstm = nn.LSTM(config.dim, config.dim, batch_first=True)
        self.instruction_lstm = nn.LSTM(config.dim, config.dim, batch_first=True)
        self.head = CyclesHead(config.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(tokens))  # (batch,)

    def encode(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The block's pooled features, (batch, dim): what the head reads."""
        # tokens: (batch, instructions, tokens) int64, 0 = padding at the end of each row
        if condition is not None:
            raise ValueError("ithemal takes no per-instruction condition")
        b, n_ins, n_tok = tokens.shape
        flat = tokens.reshape(b * n_ins, n_tok)
        states, _ = self.token_lstm(self.token(flat))  # (b*i, t, d)
        last_token = ((flat != 0).sum(1) - 1).clamp(min=0)  # (b*i,)
        index = last_token.reshape(-1, 1, 1).expand(-1, 1, states.shape[-1])
        instructions = states.gather(1, index).reshape(b, n_ins, -1)  # (b, i, d)
        states, _ = self.instruction_lstm(instructions)  # (b, i, d)
        last_ins = ((tokens[:, :, 0] != 0).sum(1) - 1).clamp(min=0)
        index = last_ins.reshape(-1, 1, 1).expand(-1, 1, states.shape[-1])
        return states.gather(1, index).squeeze(1)  # (b, d)
