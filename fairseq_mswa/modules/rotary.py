"""Rotary position embedding (RoPE, Su et al. 2021) in the "rotate half" layout of GPT-NeoX / Llama.

Position ``p`` rotates the pair ``(x[i], x[i + dim/2])`` by the angle ``p * base^(-2i/dim)``. Rotating
queries and keys by their absolute positions makes ``q_p . k_r`` a function of ``p - r`` only, so any
score built from ``q.k`` (softmax or the Taylor kernel of linear attention) sees relative positions.

Shapes: ``x`` (..., L, dim); ``cos``, ``sin`` (L, dim).
"""

from typing import Tuple

import torch
from torch import nn


def rotary_cos_sin(
    positions: torch.Tensor, dim: int, base: float = 10000.0, dtype=torch.float32
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (L, dim) for integer ``positions`` (L,). Angles are computed in float64 so
    large positions keep their precision, then cast to ``dtype``."""
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    inv_freq = base ** (
        -torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
    )
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, dim/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., L, dim) by the tables (L, dim)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Applies RoPE to (B, H, L, dim) queries and keys at positions ``offset .. offset + L - 1``.

    The tables are recomputed per call (cheap next to attention) and hold no state, so the module
    has no buffers and adds nothing to checkpoints. Half-precision inputs are rotated in float32.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}: use an even head/feature dim")
        self.dim = dim
        self.base = base

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0):
        """q: (B, H, Lq, dim) at positions offset + Lk - Lq ..; k: (B, H, Lk, dim) at offset .."""
        lq, lk = q.shape[-2], k.shape[-2]
        dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
        positions = torch.arange(offset, offset + lk, device=k.device)
        cos, sin = rotary_cos_sin(positions, self.dim, self.base, dtype=dtype)
        k_rot = apply_rotary(k.to(dtype), cos, sin).to(k.dtype)
        q_rot = apply_rotary(q.to(dtype), cos[lk - lq:], sin[lk - lq:]).to(q.dtype)
        return q_rot, k_rot

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"
