"""Transformer-XL relative multi-head attention with one window per head (MSWA).

Score of query ``i`` and key ``j`` (Dai et al. 2019, Sec. 3.3, terms (a)+(c) and (b)+(d)):

    ((q_i + u) . k_j  +  (q_i + v) . W_r R[i - j]) / sqrt(head_dim)

Heads are computed per *window group* (heads that share a window; MSWA has 4 groups per layer), so
every head's work is proportional to its own window, as the cost model says:

* keys / values: a group with window ``w`` projects only the last ``w - 1`` memory states it can
  see (plus the segment and the sink states it needs), not the layer's whole memory;
* position term: a group gets scores for the distances ``0 .. R - 1`` it can see (``R = w``, or
  every key for a full head), computed as one matmul and handed to ``window_attention`` as
  ``pos_scores`` (the kernel adds it by distance);
* sinks (SWAA "keep first"): a sink outside a head's window gets the position term of that
  window's farthest distance ``w - 1`` (Transformer-XL's ``clamp_len``), whatever the segmentation.

Memory layout (what the decoder hands over): ``memory`` holds the states at stream positions
``[memory_start, memory_start + M)``, right before the segment; ``sinks`` holds the states at
positions ``[0, S)``, ``S = min(num_sinks, memory_start + M)`` (they may overlap the memory).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.window_attention import window_attention
from .relative_positions import RelativeSinusoid

Window = Optional[int]


def window_groups(windows: Sequence[Window]) -> List[Tuple[Window, List[int]]]:
    """Heads grouped by window, in order of first appearance: ``[(w, [heads])]``."""
    groups = {}
    for h, w in enumerate(windows):
        groups.setdefault(w, []).append(h)
    return list(groups.items())


def _selector(heads: Sequence[int], size: int = 1, offset: int = 0):
    """Rows ``offset + h * size + [0, size)`` for ``heads``: a slice when the heads are
    consecutive (a view, no copy), else an index tensor."""
    if list(heads) == list(range(heads[0], heads[0] + len(heads))):
        return slice(offset + heads[0] * size, offset + (heads[-1] + 1) * size)
    return torch.tensor([offset + h * size + i for h in heads for i in range(size)])


class RelMultiheadWindowAttention(nn.Module):
    """(B, L, E) segment + (B, M, E) memory (+ sink states) -> (B, L, E)."""

    def __init__(self, embed_dim: int, num_heads: int, windows: Sequence[Window],
                 attention_dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        if len(windows) != num_heads:
            raise ValueError(f"got {len(windows)} windows for {num_heads} heads: give one per head")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.windows = tuple(windows)
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.r_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.positions = RelativeSinusoid(embed_dim)
        self.groups = window_groups(self.windows)
        self._order = [h for _, heads in self.groups for h in heads]  # heads in group order
        self._in_order = self._order == list(range(num_heads))
        self._sizes = [len(heads) for _, heads in self.groups]

    def _by_group(self, t: torch.Tensor, dim: int, unit: int = 1):
        """Split ``t`` (heads along ``dim``, ``unit`` entries per head) into one piece per window
        group. One ``split`` (after one reordering gather when groups are not consecutive heads):
        its backward is one concatenation, where per-group slicing would add a full-size zero
        gradient per group."""
        if not self._in_order:
            t = t.index_select(dim, _selector(self._order, unit).to(t.device))
        return t.split([n * unit for n in self._sizes], dim=dim)

    def memory_needed(self, window: Window, memory_len: int) -> int:
        """How many of the last memory states a head group with ``window`` reads."""
        return memory_len if window is None else min(memory_len, window - 1)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None, memory_start: int = 0,
                sinks: Optional[torch.Tensor] = None, num_sinks: int = 0) -> torch.Tensor:
        """x (B, L, E); memory (B, M, E) = states at stream positions [memory_start,
        memory_start + M); sinks (B, S, E) = states at positions [0, S), S = min(num_sinks,
        memory_start + M); num_sinks = the schedule's sink count. Returns (B, L, E)."""
        b, length, e = x.shape
        d = self.head_dim
        m_len = 0 if memory is None else memory.shape[1]
        seen = memory_start + m_len  # stream position of x[:, 0]
        sinks_in_keys = min(num_sinks, seen + length)  # keys at stream positions < num_sinks
        scale = d ** -0.5
        weight = self.qkv_proj.weight
        # the segment's queries, keys and values for every head in one matmul; memory (and sink)
        # states are projected per group, only as many as the group's window reaches
        q, k_seg, v_seg = F.linear(x, weight).view(b, length, 3, self.num_heads, d).unbind(2)
        w_k, w_v = self._by_group(weight[e:2 * e], 0, d), self._by_group(weight[2 * e:], 0, d)
        w_r = self._by_group(self.r_proj.weight, 0, d)
        per_group = zip(self.groups, self._by_group(q, 2), self._by_group(k_seg, 2),
                        self._by_group(v_seg, 2), w_k, w_v, w_r,
                        self._by_group(self.u_bias, 0), self._by_group(self.v_bias, 0))
        dropout_p = self.attention_dropout if self.training else 0.0
        outs = []
        for (w, heads), qg, k, v, wk, wv, wr, u, vb in per_group:
            g = len(heads)
            qg, k, v = (t.transpose(1, 2) for t in (qg, k, v))  # (B, G, L, D)
            m = self.memory_needed(w, m_len)
            start = seen - m  # stream position of the first memory state this group reads
            n_prefix = 0 if sinks is None else max(0, min(sinks.shape[1], start))
            if n_prefix or m:
                parts = ([sinks[:, :n_prefix]] if n_prefix else []) + ([memory[:, m_len - m:]] if m else [])
                past = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                kv_past = F.linear(past, torch.cat([wk, wv]))
                k_past, v_past = kv_past.view(b, -1, 2, g, d).permute(2, 0, 3, 1, 4)
                k, v = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
            lk = k.shape[2]
            num_dist = lk if w is None else min(w, lk)
            r = F.linear(self.positions(num_dist, x.dtype), wr).view(num_dist, g, d).permute(1, 2, 0)
            pos_scores = torch.matmul((qg + vb[:, None]) * scale, r)  # (B, G, L, R)
            outs.append(window_attention(
                qg + u[:, None], k, v, [w] * g, sink_tokens=sinks_in_keys,
                pos_scores=pos_scores, dropout_p=dropout_p, scale=scale, backend=self.backend,
            ))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # heads in group order
        out = out.transpose(1, 2).reshape(b, length, e)
        w_out = self.out_proj.weight
        if not self._in_order:
            w_out = w_out.index_select(1, _selector(self._order, d).to(w_out.device))
        return F.linear(out, w_out)

