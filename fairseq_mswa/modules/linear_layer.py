"""Taylor linear-attention layer (Based-style) with RoPE on the feature-dimension queries and keys.

Per head: q and k are projected to ``feature_dim`` (16), v to ``head_dim``; RoPE rotates q and k
before the Taylor feature map, so ``K(q_i, k_j) = 1 + s + s^2/2`` with ``s = q_i.k_j / sqrt(16)``
depends on positions only through ``i - j``. Decoding carries the fixed-size state
(S: features x head_dim, z: features) per head in a ``RecurrentStateCache`` (``modules/kv_cache.py``);
the layer has the token-mixer interface ``forward(x, cache=None, offset=0) -> (out, cache)``.
"""

from typing import Optional, Tuple

import torch
from torch import nn

from ..kernels.linear_attention import (
    fla_parallel_based,
    fla_parallel_based_available,
    linear_attention_chunked,
    linear_attention_recurrent,
)
from .kv_cache import RecurrentStateCache
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

    def init_cache(self, keep_all: bool = False) -> RecurrentStateCache:
        """An empty decoding state (``keep_all`` is accepted for the shared mixer interface: the
        recurrent state already summarises the whole context)."""
        return RecurrentStateCache()

    def forward(
        self, x: torch.Tensor, cache: Optional[RecurrentStateCache] = None, offset: int = 0
    ) -> Tuple[torch.Tensor, Optional[RecurrentStateCache]]:
        """x: (B, L, E) at positions ``offset ..``. Without ``cache``: the parallel form, returns
        (out (B, L, E), None). With ``cache`` (decoding; ``offset`` must be ``cache.length``): starts
        from ``cache.state`` (S, z), stores the state after the last token, returns (out, cache)."""
        b, length, _ = x.shape
        if cache is not None and offset != cache.length:
            raise ValueError(f"offset {offset} != cache length {cache.length}: feed tokens in order")
        q = self._heads(self.q_proj(x), self.feature_dim)
        k = self._heads(self.k_proj(x), self.feature_dim)
        v = self._heads(self.v_proj(x), self.head_dim)
        q, k = self.rotary(q, k, offset=offset)
        if cache is not None:
            if length == 1:
                out, cache.state = linear_attention_recurrent(q, k, v, cache.state)
            else:
                out, cache.state = linear_attention_chunked(
                    q, k, v, self.chunk_size, initial_state=cache.state, output_final_state=True
                )
            cache.length += length
        elif self._use_fla(q):
            out = fla_parallel_based(q, k, v)
        else:
            out, _ = linear_attention_chunked(q, k, v, self.chunk_size)
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim))
        return out, cache

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, feature_dim={self.feature_dim}, head_dim={self.head_dim}, "
            f"chunk_size={self.chunk_size}, impl={self.impl}"
        )
