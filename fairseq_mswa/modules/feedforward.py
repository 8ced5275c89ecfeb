"""SwiGLU feed-forward (Shazeer 2020): ``W2 (silu(W1 x) * W3 x)``, no biases (as in Llama / Based)."""

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden_dim(embed_dim: int, multiple_of: int = 256) -> int:
    """Llama's rule: 2/3 of 4 x embed_dim (same parameters as a 4x GELU MLP), rounded up to
    ``multiple_of``: 512 -> 1536."""
    hidden = int(2 * 4 * embed_dim / 3)
    return multiple_of * (-(-hidden // multiple_of))


class SwiGLU(nn.Module):
    """(..., embed_dim) -> (..., embed_dim) through a gated hidden layer of ``hidden_dim``."""

    def __init__(self, embed_dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(embed_dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(embed_dim, hidden_dim, bias=False)  # value
        self.w2 = nn.Linear(hidden_dim, embed_dim, bias=False)  # out
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.dropout(F.silu(self.w1(x)) * self.w3(x)))
