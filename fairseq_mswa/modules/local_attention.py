"""Local (windowed) multi-head softmax attention with RoPE, for hybrid models such as ``linear_mswa``.

Every head has its own window (MSWA); ``None`` is full causal attention. The scores come from the
single kernel entry point ``fairseq_mswa.kernels.window_attention.window_attention``.

Decoding keeps a key/value cache: a layer whose heads are all windowed keeps only the sink keys and
the last ``max(windows)`` keys, so its cache has a fixed size whatever the context length.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..kernels.window_attention import window_attention
from .rotary import RotaryEmbedding

KVCache = Tuple[torch.Tensor, torch.Tensor]  # rotated keys, values: (B, H, Lc, head_dim)


class LocalAttention(nn.Module):
    """(B, L, embed_dim) -> (B, L, embed_dim): q, k, v projections, RoPE on q and k, windowed
    softmax attention (one window per head), output projection. No biases.

    Args:
        windows: one window per head (None = full causal attention).
        sink_tokens: first keys every query also sees (SWAA "keep first").
        attention_dropout: dropout on the attention probabilities (training only).
        backend: kernel backend of ``window_attention`` (auto, dense, blocked, flex, flash).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        windows: Sequence[Optional[int]],
        sink_tokens: int = 0,
        attention_dropout: float = 0.0,
        backend: str = "auto",
        rope_base: float = 10000.0,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim {embed_dim} is not divisible by {num_heads} heads: choose a head count "
                "that divides the model dimension"
            )
        if len(windows) != num_heads:
            raise ValueError(f"got {len(windows)} windows for {num_heads} heads: give one per head")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.windows = tuple(windows)
        self.sink_tokens = sink_tokens
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def cache_limit(self) -> Optional[int]:
        """Keys a decoding cache must keep (None = all: a head has full attention)."""
        if any(w is None for w in self.windows):
            return None
        return self.sink_tokens + max(self.windows)

    def forward(
        self, x: torch.Tensor, cache: Optional[KVCache] = None, offset: int = 0
    ) -> Tuple[torch.Tensor, Optional[KVCache]]:
        """x: (B, L, E) at positions ``offset ..``; ``cache``: keys/values of the earlier tokens
        (decoding). Returns (out (B, L, E), new cache or None when no cache was given)."""
        b, length, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        q, k = self.rotary(q, k, offset=offset)
        new_cache = None
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
            new_cache = self._truncate(k, v)
        out = window_attention(
            q, k, v, list(self.windows),
            sink_tokens=self.sink_tokens,
            dropout_p=self.attention_dropout if self.training else 0.0,
            backend=self.backend,
        )
        out = out.transpose(1, 2).reshape(b, length, self.embed_dim)
        return self.out_proj(out), new_cache

    def _truncate(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """Keep the sink keys and the last max-window keys (every later query needs no more)."""
        limit = self.cache_limit()
        if limit is None or k.shape[2] <= limit:
            return k, v
        s = self.sink_tokens
        recent = limit - s
        return (
            torch.cat([k[:, :, :s], k[:, :, -recent:]], dim=2),
            torch.cat([v[:, :, :s], v[:, :, -recent:]], dim=2),
        )

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, windows={list(self.windows)}, sink_tokens={self.sink_tokens}"
