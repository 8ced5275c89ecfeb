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
  window's farthest distance ``w - 1`` (Transformer-XL's ``clamp_len``), whatever the segmentation;
* learned sinks (``learned_sinks``, gpt-oss): one trained logit per head (``sink_logits``, (H,)),
  an extra softmax column that carries no value (``window_attention``'s ``sink_logits``); no key,
  no memory, no position term.

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

from functools import lru_cache
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.common import HeadGroups, Window
from ..kernels.window_attention import window_attention
from .kv_cache import WindowKVCache
from .relative_positions import RelativeSinusoid
from .sinks import learned_sink_logits

# How a layer lays out its window groups in *passes* (``strategy``); a pass is a run of
# consecutive window groups computed together: one memory projection of the states its widest
# window reads, one position table, one kernel call with per-head masks (blocked's merge_heads).
#   grouped  one pass per window group: the work of each head follows its window; a fixed cost
#            per group.
#   merged   one pass for all heads: the fixed cost of one group, the arithmetic of the largest
#            window for every head.
#   auto     on CPU with backend auto / blocked: the partition with the smallest modelled time
#            (kernels/plan.py: best_partition, CPU-fitted), for example (2, 1, 1): the two
#            smallest window groups together, the others alone; elsewhere (CUDA, or flex) merged:
#            one kernel call per layer (kernels/capabilities.py: plans_passes).
#   a tuple  an explicit partition: window groups per pass, in group order, e.g. (2, 2).
STRATEGIES = ("auto", "grouped", "merged")


@lru_cache(maxsize=64)
def _clamped_distances(windows, num_dist: int, device) -> torch.Tensor:
    """(num_dist, H) long: distance t of head h read as min(t, w_h - 1) (t for a full head)."""
    return torch.tensor([[t if w is None else min(t, w - 1) for w in windows]
                         for t in range(num_dist)], device=device)


class RelMultiheadWindowAttention(nn.Module):
    """(B, L, E) segment + (B, M, E) memory (+ sink states) -> (B, L, E)."""

    def __init__(self, embed_dim: int, num_heads: int, windows: Sequence[Window],
                 attention_dropout: float = 0.0, backend: str = "auto", strategy: str = "auto",
                 learned_sinks: bool = False, block_size=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        if len(windows) != num_heads:
            raise ValueError(f"got {len(windows)} windows for {num_heads} heads: give one per head")
        if isinstance(strategy, (tuple, list)):
            from ..kernels.plan import pass_windows

            strategy = tuple(int(n) for n in strategy)
            pass_windows(windows, strategy)  # raises when it does not cut the groups
        elif strategy not in STRATEGIES:
            raise ValueError(f"unknown attention strategy {strategy!r}: use one of "
                             f"{', '.join(STRATEGIES)}, or a partition such as (2, 2)")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.windows = tuple(windows)
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.strategy = strategy
        # flex's block mask tiles: None (torch's 128 x 128), one (q_block, kv_block) for every
        # pass, or a list with one per pass of the strategy's partition (set_block_size)
        self.block_size = None
        self.set_block_size(block_size)
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.r_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.positions = RelativeSinusoid(embed_dim)
        self.sink_logits = learned_sink_logits(num_heads) if learned_sinks else None
        self.heads = HeadGroups(self.windows)
        self.groups = self.heads.groups
        self._kv_row_cache = {}  # (device, partition) -> rows of qkv_proj.weight (_kv_rows)
        self._pass_cache = {}  # partition -> windows per pass (_pass_windows)

    def set_block_size(self, block_size) -> None:
        """flex's tiles per pass: None (torch's 128 x 128), a (q_block, kv_block) pair for every
        pass, or a list of pairs (or None), one per pass of the layer's partition (checked at the
        call against the number of passes). Other backends ignore it."""
        from ..kernels.flex import check_block_size

        if isinstance(block_size, list):
            for b in block_size:
                if b is not None:
                    check_block_size(b)
        elif block_size is not None:
            check_block_size(block_size)
        self.block_size = block_size

    def _pass_block_sizes(self, n_passes: int):
        """One flex block size (or None) per pass."""
        if not isinstance(self.block_size, list):
            return [self.block_size] * n_passes
        if len(self.block_size) != n_passes:
            raise ValueError(f"block_size gives {len(self.block_size)} tile sizes for a layout of "
                             f"{n_passes} passes: give one per pass, or one pair for all")
        return self.block_size

    def memory_needed(self, window: Window, memory_len: int) -> int:
        """How many of the last memory states a head group with ``window`` reads."""
        return memory_len if window is None else min(memory_len, window - 1)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None, memory_start: int = 0,
                sinks: Optional[torch.Tensor] = None, num_sinks: int = 0) -> torch.Tensor:
        """x (B, L, E); memory (B, M, E) = states at stream positions [memory_start,
        memory_start + M); sinks (B, S, E) = states at positions [0, S), S = min(num_sinks,
        memory_start + M); num_sinks = the schedule's sink count. Returns (B, L, E).

        Work done once per call for every pass (a pass = a run of window groups, see
        ``STRATEGIES``):
        the queries of every head (one matmul), the states the passes read (the last memory
        states the widest pass needs, then the segment: one concatenation), the key/value weight
        rows in pass order (one gather) and the projected position table up to the largest
        distance (one matmul). Each pass then reads views of these: its states suffix, its rows,
        its columns and distances, so its own work (keys/values of the states it sees, position
        scores, attention) follows its window."""
        b, length, e = x.shape
        d = self.head_dim
        m_len = 0 if memory is None else memory.shape[1]
        seen = memory_start + m_len  # stream position of x[:, 0]
        sinks_in_keys = min(num_sinks, seen + length)  # keys at stream positions < num_sinks
        scale = d ** -0.5
        weight = self.qkv_proj.weight
        # every head's queries in one matmul; the two query biases (content u, position v; the
        # position one pre-scaled) added once for every head
        q = F.linear(x, weight[:e]).view(b, length, self.num_heads, d)
        q_u, q_v = q + self.u_bias, (q + self.v_bias) * scale  # (B, L, H, D)
        sizes = self._partition(b, length, m_len, x.device.type)
        passes = self._pass_windows(sizes)  # per pass its heads' windows, group order
        counts = [len(ws) for ws in passes]
        if len(passes) == 1 and self.heads.in_order:  # one pass in head order: plain views
            w_kv = weight[e:]  # rows: k of every head, then v
        else:
            w_kv = weight.index_select(0, self._kv_rows(weight.device, sizes))
        w_r = self.heads.to_group_order(self.r_proj.weight, 0, d)
        q_parts = list(zip(self.heads.to_group_order(q_u, 2).split(counts, 2),
                           self.heads.to_group_order(q_v, 2).split(counts, 2)))
        sl = self.sink_logits
        sink_parts = ([None] * len(passes) if sl is None
                      else self.heads.to_group_order(sl, 0).split(counts, 0))
        reaches = [None if None in ws else max(ws) for ws in passes]
        needs = [self.memory_needed(r, m_len) for r in reaches]
        m_max = max(needs)
        states = x if m_max == 0 else torch.cat([memory[:, m_len - m_max:], x], dim=1)
        prefixes = [0 if sinks is None else max(0, min(sinks.shape[1], seen - m)) for m in needs]
        dists = [n + m + length if r is None else min(r, n + m + length)
                 for r, m, n in zip(reaches, needs, prefixes)]
        r_all = F.linear(self.positions(max(dists), q_u.dtype), w_r)  # (R_max, E), pass order
        outs, row, col = [], 0, 0
        for windows, (qu, qv), m, n_prefix, num_dist, sp, bs in zip(
                passes, q_parts, needs, prefixes, dists, sink_parts,
                self._pass_block_sizes(len(passes))):
            g = len(windows)
            w_kv_p = w_kv[row:row + 2 * g * d]
            kv = F.linear(states[:, m_max - m:], w_kv_p)  # (B, m + L, 2 G D)
            if n_prefix:  # the sink states before the memory slice this pass reads
                kv = torch.cat([F.linear(sinks[:, :n_prefix], w_kv_p), kv], dim=1)
            k, v = kv.view(b, -1, 2, g, d).permute(2, 0, 3, 1, 4)  # (B, G, Lk, D) each
            r = r_all[:num_dist, col:col + g * d].view(num_dist, g, d)
            outs.append(self._attend(windows, qu, qv, k, v, r, sinks_in_keys, sp, bs))
            row, col = row + 2 * g * d, col + g * d
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, H, L, D), group order
        out = out.transpose(1, 2).reshape(b, length, e)
        return F.linear(out, self.heads.to_group_order(self.out_proj.weight, 1, d))

    def _kv_rows(self, device, sizes) -> torch.Tensor:
        """Rows of ``qkv_proj.weight`` for the passes of partition ``sizes``: per pass its heads'
        key rows then their value rows, heads in group order (one contiguous block per pass);
        cached per device and partition."""
        key = (str(device), sizes)
        rows = self._kv_row_cache.get(key)
        if rows is None:
            e, d = self.embed_dim, self.head_dim
            order, start = [], 0
            for n in (len(ws) for ws in self._pass_windows(sizes)):
                heads = self.heads.order[start:start + n]
                for base in (e, 2 * e):
                    order += [base + h * d + i for h in heads for i in range(d)]
                start += n
            rows = self._kv_row_cache[key] = torch.tensor(order, device=device)
        return rows

    def _pass_windows(self, sizes):
        """Per pass of partition ``sizes`` its heads' windows (group order); cached."""
        ws = self._pass_cache.get(sizes)
        if ws is None:
            from ..kernels.plan import pass_windows

            ws = self._pass_cache[sizes] = pass_windows(self.windows, sizes)
        return ws

    def _partition(self, batch: int, length: int, memory_len: int, device: str = "cpu"):
        """Window groups per pass for this call on ``device`` (see ``STRATEGIES``)."""
        n = len(self.groups)
        if n == 1 or self.strategy == "grouped":
            return (1,) * n
        if self.strategy == "merged":
            return (n,)
        if isinstance(self.strategy, tuple):
            return self.strategy
        from ..kernels.capabilities import plans_passes
        from ..kernels.plan import best_partition

        if not plans_passes(self.backend, device):
            return (n,)

        return best_partition(self.windows, batch, length, memory_len, self.head_dim)

    def _attend(self, windows: List[Window], q_u, q_v, k, v, r, sinks_in_keys: int,
                sink_logits: Optional[torch.Tensor] = None, block_size=None) -> torch.Tensor:
        """Attention of one pass (a window group, or every head merged) with its ``windows``:
        q_u, q_v (B, L, G, D) of the segment; k, v (B, G, Lk, D) = the sink states before the
        memory slice it reads, the last memory states it needs and the segment; r (R, G, D) the
        projected encodings of distances 0 .. R - 1 (R = the largest window, or every key for a
        full head), clamped per head to its own farthest distance ``w - 1`` (what a sink outside
        the window gets); sink_logits (G,) the pass's learned sinks or None; block_size flex's tiles
        (None: 128 x 128). Returns (B, G, L, D)."""
        num_dist, g, d = r.shape
        if sinks_in_keys and any(w is not None and w < num_dist for w in windows):
            # merged heads: distances beyond a head's window (only its sinks) read its w - 1
            idx = _clamped_distances(tuple(windows), num_dist, r.device)
            r = r.gather(0, idx[:, :, None].expand(num_dist, g, d))
        pos_scores = torch.matmul(q_v.transpose(1, 2), r.permute(1, 2, 0))  # (B, G, L, R)
        return window_attention(
            q_u.transpose(1, 2), k, v, windows, sink_tokens=sinks_in_keys, pos_scores=pos_scores,
            dropout_p=self.attention_dropout if self.training else 0.0, scale=d ** -0.5,
            sink_logits=sink_logits, backend=self.backend, merge_heads=len(set(windows)) > 1,
            block_size=block_size,
        )

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
            table = F.linear(self.positions(cap, dtype), self.r_proj.weight[self.heads.rows(heads, d)])
            cache.positions[gi] = table  # (cap, G * D)
        return table[:num].view(num, g, d).permute(1, 2, 0)

    def decode(self, x: torch.Tensor, cache: "XLDecodeCache") -> torch.Tensor:
        """x (B, L, E): the layer's normalised input at positions ``cache.length ..`` (one token,
        or a prompt chunk of any length); attends to the cached keys and stores the new ones.
        Returns (B, L, E), equal to :meth:`forward` over the whole sequence (no memory)."""
        b, length, e = x.shape
        d = self.head_dim
        scale = d ** -0.5
        q, k, v = F.linear(x, self.qkv_proj.weight).view(b, length, 3, self.num_heads, d).unbind(2)
        q_u, q_v = q + self.u_bias, (q + self.v_bias) * scale
        split = self.heads.split  # per group (B, L, G, D) -> (B, G, L, D) below
        qs, ks, vs, ps = [], [], [], []
        end = cache.length + length  # distances of the chunk's last query: 0 .. end - 1
        for gi, ((w, _), qu, qv, kg, vg) in enumerate(zip(self.groups, split(q_u, 2), split(q_v, 2),
                                                            split(k, 2), split(v, 2))):
            r = self._positions_of_group(cache, gi, end if w is None else w, x.dtype)
            ps.append(torch.matmul(qv.transpose(1, 2), r))  # (B, G, L, R)
            qs.append(qu.transpose(1, 2))
            ks.append(kg.transpose(1, 2))
            vs.append(vg.transpose(1, 2))
        sl = None if self.sink_logits is None else self.heads.split(self.sink_logits, 0)
        outs = cache.kv.attend_groups(qs, ks, vs, pos_scores=ps, scale=scale, sink_logits=sl)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # group order
        out = out.transpose(1, 2).reshape(b, length, e)
        return F.linear(out, self.heads.to_group_order(self.out_proj.weight, 1, d))


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
