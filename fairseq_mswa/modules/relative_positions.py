"""Sinusoidal relative position encodings of Transformer-XL (Dai et al. 2019, Sec. 3.3).

``R[d]`` encodes the distance ``d = i - j >= 0`` between a query and a key; the attention layer
projects it per head (``W_r R``) and adds ``(q_i + v) . W_r R[i - j]`` to the score.
"""

import torch
from torch import nn


def sinusoid_table(num_distances: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(num_distances, dim) table: row ``d`` = [sin(d / 10000^(2k/dim)) ..., cos(...) ...]."""
    if dim % 2:
        raise ValueError(f"relative position dimension must be even, got {dim}")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    d = torch.arange(num_distances, dtype=torch.float64, device=device)
    angles = d[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


class RelativeSinusoid(nn.Module):
    """Distances 0 .. n-1 -> (n, dim) encodings, cached for the largest n seen (a buffer kept out
    of the state dict)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("_table", torch.empty(0, dim), persistent=False)

    def forward(self, num_distances: int, dtype: torch.dtype) -> torch.Tensor:
        if self._table.shape[0] < num_distances:
            self._table = sinusoid_table(max(num_distances, 2 * self._table.shape[0]), self.dim,
                                         device=self._table.device)
        return self._table[:num_distances].to(dtype)
