"""Taylor linear-attention layer (Based-style) with RoPE on the feature-dimension queries and keys.

Per head: q and k are projected to ``feature_dim`` (16), v to ``head_dim``; RoPE rotates q and k
before the Taylor feature map, so ``K(q_i, k_j) = 1 + s + s^2/2`` with ``s = q_i.k_j / sqrt(16)``
depends on positions only through ``i - j``. Decoding carries the fixed-size state
(S: features x head_dim, z: features) per head.
"""

from typing import Optional

import torch
from torch import nn

from ..kernels.linear_attention import (
    State,
    fla_parallel_based,
    fla_parallel_based_available,
    linear_attention_chunked,
    linear_attention_recurrent,
)
from .rotary import RotaryEmbedding

LINEAR_IMPLS = ("torch", "fla", "auto")


class TaylorLinearAttention(nn.Module):
    """(B, L, embed_dim) -> (B, L, embed_dim) causal linear attention.

    Args:
        feature_dim: per-head q/k dimension d before the feature map (F = 1 + d + d(d+1)/2).
        head_dim: per-head value dimension (default embed_dim // num_heads).
        chunk_size: chunk of the chunk-parallel training form.
        impl: ``torch`` (chunked, pure PyTorch: the default and the tested one), ``fla`` (fla-core's
            Triton ``parallel_based``, CUDA only) or ``auto`` (fla when importable and on CUDA).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        feature_dim: int = 16,
        head_dim: Optional[int] = None,
        chunk_size: int = 64,
        impl: str = "torch",
        rope_base: float = 10000.0,
    ):
        super().__init__()
        if impl not in LINEAR_IMPLS:
            raise ValueError(f"unknown linear attention impl {impl!r}: use one of {', '.join(LINEAR_IMPLS)}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim {embed_dim} is not divisible by {num_heads} heads: choose a head "
                    "count that divides the model dimension"
                )
            head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.feature_dim = feature_dim
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        self.impl = impl
        self.q_proj = nn.Linear(embed_dim, num_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, num_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=False)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=False)
        self.rotary = RotaryEmbedding(feature_dim, rope_base)

    def _heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, dim).transpose(1, 2)

    def _use_fla(self, x: torch.Tensor) -> bool:
        if self.impl == "torch":
            return False
        ok = fla_parallel_based_available(x)
        if self.impl == "fla" and not ok:
            raise RuntimeError(
                "--linear-impl fla needs fla-core (pip install fla-core) and CUDA tensors; "
                "use --linear-impl torch (the pure PyTorch path) otherwise"
            )
        return ok

    def forward(
        self, x: torch.Tensor, state: Optional[State] = None, offset: int = 0,
        return_state: bool = False,
    ):
        """x: (B, L, E) at positions ``offset ..``; ``state``: (S, z) after the earlier tokens.

        Returns out (B, L, E), or (out, new state) when ``return_state`` (decoding).
        """
        b, length, _ = x.shape
        q = self._heads(self.q_proj(x), self.feature_dim)
        k = self._heads(self.k_proj(x), self.feature_dim)
        v = self._heads(self.v_proj(x), self.head_dim)
        q, k = self.rotary(q, k, offset=offset)
        new_state = None
        if return_state:
            if length == 1:
                out, new_state = linear_attention_recurrent(q, k, v, state)
            else:
                out, new_state = linear_attention_chunked(
                    q, k, v, self.chunk_size, initial_state=state, output_final_state=True
                )
        elif state is None and self._use_fla(q):
            out = fla_parallel_based(q, k, v)
        else:
            out = linear_attention_chunked(q, k, v, self.chunk_size, initial_state=state)
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim))
        return (out, new_state) if return_state else out

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, feature_dim={self.feature_dim}, head_dim={self.head_dim}, "
            f"chunk_size={self.chunk_size}, impl={self.impl}"
        )
