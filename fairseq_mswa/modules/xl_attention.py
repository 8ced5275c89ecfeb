"""Transformer-XL relative multi-head attention with one window per head (MSWA).

Score of query ``i`` and key ``j`` (Dai et al. 2019, Eq. in Sec. 3.3, terms (a)+(c) and (b)+(d)):

    ((q_i + u) . k_j  +  (q_i + v) . W_r R[i - j]) / sqrt(head_dim)

The content term goes to ``window_attention`` as queries ``q + u``; the position term is computed
only for the distances a head can see (``0 .. R - 1``, R = the layer's largest window, or every key
when a head is full) and passed as ``pos_scores``, so windowed layers stay O(n w).
Keys and values come from ``[memory; segment]``: the segment's query ``i`` sits at key position
``len(memory) + i``.
"""

from typing import Optional, Sequence

import torch
from torch import nn

from ..kernels.window_attention import window_attention
from .relative_positions import RelativeSinusoid


class RelMultiheadWindowAttention(nn.Module):
    """(B, L, E) segment + (B, M, E) memory -> (B, L, E)."""

    def __init__(self, embed_dim: int, num_heads: int, windows: Sequence[Optional[int]],
                 sink_tokens: int = 0, attention_dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        if len(windows) != num_heads:
            raise ValueError(f"got {len(windows)} windows for {num_heads} heads: give one per head")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.windows = tuple(windows)
        self.sink_tokens = sink_tokens
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.r_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.positions = RelativeSinusoid(embed_dim)

    @property
    def max_window(self) -> Optional[int]:
        return None if any(w is None for w in self.windows) else max(self.windows)

    def num_distances(self, num_keys: int) -> int:
        """R: distances that get their own position score. Beyond R - 1 the kernel clamps to
        R - 1 (Transformer-XL's clamp_len): only sink keys outside the window are that far, so
        they all get the window's farthest distance, whatever the segmentation."""
        if self.max_window is None:
            return num_keys
        return min(self.max_window, num_keys)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                sink_tokens: int = 0) -> torch.Tensor:
        """x: (B, L, E); memory: (B, M, E) or None; sink_tokens: how many of the first keys are sinks."""
        b, length, _ = x.shape
        h, d = self.num_heads, self.head_dim
        kv_in = x if memory is None or memory.shape[1] == 0 else torch.cat([memory, x], dim=1)
        q = self.qkv_proj.weight[: self.embed_dim]
        q = nn.functional.linear(x, q).view(b, length, h, d).transpose(1, 2)
        kv = nn.functional.linear(kv_in, self.qkv_proj.weight[self.embed_dim:])
        k, v = kv.view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        scale = d ** -0.5
        r = self.r_proj(self.positions(self.num_distances(k.shape[2]), x.dtype)).view(-1, h, d)
        pos_scores = torch.einsum("bhld,rhd->bhlr", q + self.v_bias[:, None], r) * scale
        out = window_attention(
            q + self.u_bias[:, None], k, v, self.windows,
            sink_tokens=sink_tokens, pos_scores=pos_scores,
            dropout_p=self.attention_dropout if self.training else 0.0,
            scale=scale, backend=self.backend,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, length, self.embed_dim))
