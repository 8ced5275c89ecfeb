"""Local (windowed) multi-head softmax attention with RoPE, for hybrid models such as ``linear_mswa``.

Every head has its own window (MSWA); ``None`` is full causal attention. The scores come from the
single kernel entry point ``fairseq_mswa.kernels.window_attention.window_attention``.

Decoding keeps a per-head rolling key/value cache (``modules/kv_cache.py``): head h keeps its last
``w_h`` rotated keys plus the sink keys, so a windowed layer's cache holds the sum of its windows
whatever the context length.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..kernels.window_attention import window_attention
from .kv_cache import WindowKVCache
from .rotary import RotaryEmbedding
from .sinks import learned_sink_logits


class LocalAttention(nn.Module):
    """(B, L, embed_dim) -> (B, L, embed_dim): q, k, v projections, RoPE on q and k, windowed
    softmax attention (one window per head), output projection. No biases.

    Args:
        windows: one window per head (None = full causal attention).
        sink_tokens: first keys every query also sees (SWAA "keep first").
        attention_dropout: dropout on the attention probabilities (training only).
        backend: kernel backend of ``window_attention`` (auto, dense, blocked, flex, flash).
        learned_sinks: one trained sink logit per head (``sink_logits``), as the XL layer's.
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
        learned_sinks: bool = False,
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
        self.sink_logits = learned_sink_logits(num_heads) if learned_sinks else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def init_cache(self, keep_all: bool = False) -> WindowKVCache:
        """An empty decoding cache: per head its last ``w`` keys plus the sinks (``keep_all``:
        evict nothing, for full-attention decode)."""
        return WindowKVCache(self.windows, self.sink_tokens, keep_all=keep_all)

    def forward(
        self, x: torch.Tensor, cache: Optional[WindowKVCache] = None, offset: int = 0
    ) -> Tuple[torch.Tensor, Optional[WindowKVCache]]:
        """x: (B, L, E) at positions ``offset ..``. Without ``cache`` (training, scoring): the
        parallel kernel, returns (out (B, L, E), None). With ``cache`` (decoding; ``offset`` must be
        ``cache.length``): attends to the cached keys, stores the new ones, returns (out, cache)."""
        b, length, _ = x.shape
        if cache is not None and offset != cache.length:
            raise ValueError(f"offset {offset} != cache length {cache.length}: feed tokens in order")
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        q, k = self.rotary(q, k, offset=offset)
        if cache is None:
            out = window_attention(
                q, k, v, list(self.windows),
                sink_tokens=self.sink_tokens,
                dropout_p=self.attention_dropout if self.training else 0.0,
                sink_logits=self.sink_logits, backend=self.backend,
            )
        else:
            out = cache.attend(q, k, v, sink_logits=self.sink_logits)
        out = out.transpose(1, 2).reshape(b, length, self.embed_dim)
        return self.out_proj(out), cache

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, windows={list(self.windows)}, "
                f"sink_tokens={self.sink_tokens}, learned_sinks={self.sink_logits is not None}")
