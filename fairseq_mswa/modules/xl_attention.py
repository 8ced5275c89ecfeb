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

Decoding (:meth:`RelMultiheadWindowAttention.decode`, an :class:`XLDecodeCache` per layer): the
per-head rolling ``WindowKVCache`` keeps the *position-free* keys/values (the projections of the
layer's normalised input, as the memory states are projected above): head h its last ``w_h`` plus
the sinks, full heads everything. Each step adds the same position term from the distances: a group
with window ``w`` gets ``R = w`` distances (sinks, and with SWAA full-attention decode every key
beyond the window, clamped to ``w - 1``), a full head one per key. The projected encodings
``W_r R[0 .. R)`` depend only on the weights: the cache computes them once per group (full heads:
grown by doubling) and shares them across the batch.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.window_attention import window_attention
from ..kernels.common import window_groups
from .kv_cache import WindowKVCache
from .relative_positions import RelativeSinusoid

Window = Optional[int]


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

    # --- incremental decoding ----------------------------------------------------------------------

    def init_cache(self, sink_tokens: int = 0, keep_all: bool = False) -> "XLDecodeCache":
        """An empty decoding cache for this layer (``keep_all``: evict nothing, SWAA full-attention
        decode)."""
        return XLDecodeCache(self.windows, sink_tokens, keep_all)

    def _positions_of_group(self, cache: "XLDecodeCache", gi: int, num: int, dtype) -> torch.Tensor:
        """``W_r R[d]`` for distances ``d < num`` of window group ``gi``: (G, D, num)."""
        w, heads = self.groups[gi]
        g, d = len(heads), self.head_dim
        table = cache.positions[gi]
        if table is None or table.shape[0] < num or table.dtype != dtype:
            have = 0 if table is None else table.shape[0]
            cap = num if w is not None else max(num, 2 * have, 64)  # full heads: grow by doubling
            table = F.linear(self.positions(cap, dtype), self.r_proj.weight[_selector(heads, d)])
            cache.positions[gi] = table  # (cap, G * D)
        return table[:num].view(num, g, d).permute(1, 2, 0)

    def decode(self, x: torch.Tensor, cache: "XLDecodeCache") -> torch.Tensor:
        """x (B, L, E): the layer's normalised input at positions ``cache.length ..`` (one token,
        or a prompt chunk of any length); attends to the cached keys and stores the new ones.
        Returns (B, L, E), equal to :meth:`forward` over the whole sequence (no memory)."""
        b, length, e = x.shape
        d = self.head_dim
        scale = d ** -0.5
        qkv = F.linear(x, self.qkv_proj.weight).view(b, length, 3, self.num_heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D), position-free
        end = cache.length + length  # distances of the chunk's last query: 0 .. end - 1
        qs, ks, vs, ps = [], [], [], []
        for gi, (w, heads) in enumerate(self.groups):
            sel = _selector(heads)
            qg = q[:, sel]
            r = self._positions_of_group(cache, gi, end if w is None else w, x.dtype)
            ps.append(torch.matmul((qg + self.v_bias[sel, None]) * scale, r))  # (B, G, L, R)
            qs.append(qg + self.u_bias[sel, None])
            ks.append(k[:, sel])
            vs.append(v[:, sel])
        outs = cache.kv.attend_groups(qs, ks, vs, pos_scores=ps, scale=scale)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        out = out.transpose(1, 2).reshape(b, length, e)
        w_out = self.out_proj.weight if self._in_order else self.out_proj.weight[:, self._out_cols]
        return F.linear(out, w_out)


class XLDecodeCache:
    """Decoding cache of one Transformer-XL layer, with the cache interface (``length``,
    ``reorder``, ``nbytes``, ``reserve``, ``set_full_attention_from``): ``kv`` is the per-head
    rolling :class:`WindowKVCache` of position-free keys/values; ``positions`` holds per window
    group the projected relative encodings (weights only, one copy for the whole batch; not
    counted in :meth:`nbytes`, which is the keys/values held per the cache formula)."""

    def __init__(self, windows: Sequence[Window], sink_tokens: int = 0, keep_all: bool = False):
        self.kv = WindowKVCache(windows, sink_tokens, keep_all=keep_all)
        self.positions: List[Optional[torch.Tensor]] = [None] * len(self.kv.groups)

    @property
    def length(self) -> int:
        return self.kv.length

    def reorder(self, new_order: torch.Tensor) -> None:
        self.kv.reorder(new_order)

    def nbytes(self) -> int:
        return self.kv.nbytes()

    def reserve(self, tokens: int) -> None:
        self.kv.reserve(tokens)

    def set_full_attention_from(self, position: int) -> None:
        self.kv.set_full_attention_from(position)

    def __repr__(self) -> str:
        return f"XLDecodeCache({self.kv!r})"
