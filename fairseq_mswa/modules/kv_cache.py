"""Decoding caches: one interface for every token mixer (``reorder``, ``nbytes``, ``length``).

* :class:`WindowKVCache` -- per-head rolling key/value cache of one softmax-attention layer. Head ``h``
  keeps exactly its last ``w_h`` keys/values (full heads keep everything), plus the first
  ``sink_tokens`` keys of the sequence, stored separately. Heads with equal windows form a *group*
  that shares one tensor ``(B, G, w, D)`` (a ring buffer: slot ``p % w`` holds position ``p``), so
  the bytes held are the sum of the windows (x 2 x head_dim x dtype size per sequence), not
  ``H x`` the layer's largest window.
* :class:`RecurrentStateCache` -- the fixed-size state ``(S, z)`` of Taylor linear attention.

Keys and values are stored as the layer hands them over: rotated keys for RoPE layers (linear_mswa),
position-free keys for Transformer-XL, whose layer adds the position term from the distances (the
``pos_scores`` argument of :meth:`WindowKVCache.attend`, same convention as
``kernels.window_attention``: score of a key at distance ``d`` gains ``pos_scores[..., min(d, R - 1)]``).

Visibility (the kernels' convention, ``kernels/dense.py``): the query at position ``p`` sees key
``j`` when ``0 <= p - j < w`` or ``j < sink_tokens``; a full head sees every ``j <= p``. With
``full_attention_from = P`` (SWAA "full-attention decode") queries at positions ``>= P`` see every
earlier key; such a cache evicts nothing (``keep_all``), so generated tokens can see the whole
context while the prompt (positions ``< P``) keeps its windows.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..kernels.common import HeadGroups, Window, window_groups  # noqa: F401  (window_groups re-exported)
from ..kernels.decode import KeyPiece, attend_pieces


class _Group:
    """One window group: a ring buffer of ``window`` slots (or a growing buffer) plus its sinks."""

    def __init__(self, window: Window, heads: List[int], sink_tokens: int, keep_all: bool):
        self.window = window
        self.heads = heads
        self.grows = window is None or keep_all  # a growing buffer holding every key
        # windowed ring buffers keep the sinks apart; a growing buffer holds them already
        self.sinks = 0 if self.grows else sink_tokens
        self.k: Optional[Tensor] = None  # (B, G, n, D)
        self.v: Optional[Tensor] = None
        self.pos: Optional[Tensor] = None  # (n,) long, -1 = empty slot
        self.sink_k: Optional[Tensor] = None  # (B, G, sinks, D)
        self.sink_v: Optional[Tensor] = None
        self.sink_pos: Optional[Tensor] = None
        self._kbuf = self._vbuf = self._pbuf = None  # growing buffers' storage (capacity)
        self.capacity = 0  # tokens to reserve at the first allocation of a growing buffer

    def allocate(self, like: Tensor) -> None:
        b, _, _, d = like.shape
        g = len(self.heads)
        n = 0 if self.grows else self.window
        self.k = like.new_zeros(b, g, n, d)
        self.v = like.new_zeros(b, g, n, d)
        self.pos = torch.full((n,), -1, dtype=torch.long, device=like.device)
        if self.sinks:
            self.sink_k = like.new_zeros(b, g, self.sinks, d)
            self.sink_v = like.new_zeros(b, g, self.sinks, d)
            self.sink_pos = torch.full((self.sinks,), -1, dtype=torch.long, device=like.device)

    def write(self, k: Tensor, v: Tensor, start: int) -> None:
        """Store keys (B, G, L, D) at positions start .. start + L - 1, evicting what falls out."""
        length = k.shape[2]
        positions = torch.arange(start, start + length, device=k.device)
        if self.sinks and start < self.sinks:
            m = min(self.sinks, start + length) - start
            self.sink_k[:, :, start:start + m] = k[:, :, :m]
            self.sink_v[:, :, start:start + m] = v[:, :, :m]
            self.sink_pos[start:start + m] = positions[:m]
        if self.grows:
            self._append(k, v, positions)
            return
        if length == 1:  # decoding: one slot, plain copies
            slot = start % self.window
            self.k[:, :, slot] = k[:, :, 0]
            self.v[:, :, slot] = v[:, :, 0]
            self.pos[slot] = start
            return
        keep = min(length, self.window)
        slots = positions[-keep:] % self.window
        self.k[:, :, slots] = k[:, :, -keep:]
        self.v[:, :, slots] = v[:, :, -keep:]
        self.pos[slots] = positions[-keep:]

    def _append(self, k: Tensor, v: Tensor, positions: Tensor) -> None:
        """Growing buffer: k, v, pos are views of the first n slots of buffers whose capacity
        grows by half when full (amortised O(1) per token instead of a copy of the cache per
        step), or is ``capacity`` tokens from the start when reserved."""
        n, need = self.k.shape[2], self.k.shape[2] + k.shape[2]
        if self._kbuf is None or need > self._kbuf.shape[2]:
            cap = max(need, n + n // 2, 16, self.capacity)
            kbuf = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            vbuf = v.new_empty(kbuf.shape)
            pbuf = positions.new_full((cap,), -1)
            kbuf[:, :, :n], vbuf[:, :, :n], pbuf[:n] = self.k, self.v, self.pos
            self._kbuf, self._vbuf, self._pbuf = kbuf, vbuf, pbuf
        self._kbuf[:, :, n:need] = k
        self._vbuf[:, :, n:need] = v
        self._pbuf[n:need] = positions
        self.k, self.v, self.pos = self._kbuf[:, :, :need], self._vbuf[:, :, :need], self._pbuf[:need]

    def reorder(self, new_order: Tensor) -> None:
        for name in ("k", "v", "sink_k", "sink_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, new_order))
        self._kbuf = self._vbuf = self._pbuf = None  # the next append re-allocates

    def tensors(self) -> List[Tensor]:
        return [t for t in (self.k, self.v, self.sink_k, self.sink_v) if t is not None]


class WindowKVCache:
    """Per-head rolling K/V cache of one attention layer (see the module docstring).

    Args:
        windows: one window per head (None = full attention).
        sink_tokens: the first keys every query also sees (kept apart from the windows).
        keep_all: evict nothing (needed for ``full_attention_from``; SWAA full-attention decode).

    Tensors are allocated on the first :meth:`update` / :meth:`attend` (batch, head_dim, dtype and
    device come from the keys). ``length`` is the number of tokens seen, i.e. the position of the
    next token.
    """

    def __init__(self, windows: Sequence[Window], sink_tokens: int = 0, keep_all: bool = False):
        windows = list(windows)
        if not windows:
            raise ValueError("a KV cache needs at least one head")
        for w in windows:
            if w is not None and (int(w) != w or w < 1):
                raise ValueError(f"window {w!r}: windows must be integers >= 1 (None = full)")
        if sink_tokens < 0:
            raise ValueError(f"sink_tokens must be >= 0, got {sink_tokens}")
        self.windows = windows
        self.num_heads = len(windows)
        self.sink_tokens = int(sink_tokens)
        self.keep_all = bool(keep_all)
        self.length = 0
        self.full_attention_from: Optional[int] = None
        self.heads = HeadGroups(windows)
        self.groups = [_Group(w, heads, self.sink_tokens, self.keep_all) for w, heads in self.heads]

    # --- the shared cache interface -------------------------------------------------------------

    def reorder(self, new_order: Tensor) -> None:
        """Select / reorder the batch rows (beam search): row i becomes old row new_order[i]."""
        for g in self.groups:
            g.reorder(new_order)

    def nbytes(self) -> int:
        """Bytes of the keys/values held (positions bookkeeping excluded; a growing buffer counts
        its tokens, not the spare capacity it reserves in doublings)."""
        return sum(t.numel() * t.element_size() for g in self.groups for t in g.tensors())

    def reserve(self, tokens: int) -> None:
        """Allocate growing buffers (full heads, ``keep_all``) for ``tokens`` tokens at once, so
        that decoding up to that length never re-allocates (ring buffers have a fixed size)."""
        for g in self.groups:
            g.capacity = int(tokens)

    def set_full_attention_from(self, position: int) -> None:
        """Queries at positions >= ``position`` see every earlier key (needs ``keep_all``)."""
        if not self.keep_all:
            raise ValueError("full-attention decode needs a cache built with keep_all=True")
        self.full_attention_from = int(position)

    # --- writing and reading --------------------------------------------------------------------

    def _split(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(B, H, L, D) -> per group (B, G, L, D)."""
        if x.shape[1] != self.num_heads:
            raise ValueError(f"expected {self.num_heads} heads, got tensor {tuple(x.shape)}")
        return self.heads.split(x, 1)

    def update(self, k: Tensor, v: Tensor) -> None:
        """Append keys/values (B, H, L, D) of the next L tokens without attending (prefill)."""
        if k.shape != v.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
        if self.groups[0].k is None:
            for g in self.groups:
                g.allocate(k)
        for g, kg, vg in zip(self.groups, self._split(k), self._split(v)):
            g.write(kg, vg, self.length)
        self.length += k.shape[2]

    def pieces(self, group: int, query_positions: Tensor, new: Optional[Tuple[Tensor, Tensor]] = None
               ) -> List[KeyPiece]:
        """What group ``group``'s queries at ``query_positions`` (Lq,) see: the sinks, the cached
        keys and optionally ``new`` = (k, v) (B, G, L, D) at positions length .. length + L - 1,
        each as a :class:`~fairseq_mswa.kernels.decode.KeyPiece` with distances and visibility."""
        g = self.groups[group]
        parts = []  # (k, v, positions, kind)
        if g.sink_k is not None:
            parts.append((g.sink_k, g.sink_v, g.sink_pos, "sink"))
        if g.k is not None and g.k.shape[2]:
            parts.append((g.k, g.v, g.pos, "all" if g.grows else "ring"))
        if new is not None:
            pos = torch.arange(self.length, self.length + new[0].shape[2], device=new[0].device)
            parts.append((new[0], new[1], pos, "all"))
        qp = query_positions[:, None]
        out = []
        for k, v, pos, kind in parts:
            dist = qp - pos[None, :]
            visible = (pos[None, :] >= 0) & (dist >= 0)
            if g.window is not None:
                in_window = dist < g.window
                if kind == "sink":  # a sink inside the window is in the ring too: count it once
                    vis = ~in_window
                elif kind == "ring":  # the ring keeps no sink that the sink store lacks
                    vis = in_window
                else:
                    vis = in_window | (pos[None, :] < self.sink_tokens)
                    if self.full_attention_from is not None:
                        vis = vis | (qp >= self.full_attention_from)
                visible = visible & vis
            out.append(KeyPiece(k, v, dist, visible))
        return out

    def _decode_pieces(self, group: int, position: int) -> Optional[List[KeyPiece]]:
        """Decode-step fast path (after the token at ``position`` was written): the pieces the
        query sees *entirely* (no mask); None when a mask is needed (a windowed growing buffer
        before full-attention decode starts)."""
        g = self.groups[group]
        if g.grows:
            if not (g.window is None or (self.full_attention_from is not None
                                         and position >= self.full_attention_from)):
                return None
            stored = [(g.k, g.v, g.pos)]  # every cached key: positions 0 .. position
        elif position + 1 < g.window:
            # a ring still filling has never wrapped: slot p holds position p, so positions
            # 0 .. position are its first slots, all visible (every sink is inside the window)
            n = position + 1
            stored = [(g.k[:, :, :n], g.v[:, :, :n], g.pos[:n])]
        else:
            # the ring holds exactly positions position - w + 1 .. position: all visible; the
            # sinks outside the window (j <= position - w) come from the sink store
            stored = [(g.k, g.v, g.pos)]
            outside = min(g.sinks, position - g.window + 1)
            if outside > 0:
                stored.insert(0, (g.sink_k[:, :, :outside], g.sink_v[:, :, :outside],
                                  g.sink_pos[:outside]))
        return [KeyPiece(k, v, (position - pos)[None, :]) for k, v, pos in stored]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, pos_scores: Optional[Tensor] = None,
               scale: Optional[float] = None, sink_logits: Optional[Tensor] = None) -> Tensor:
        """Attend the next L tokens to the cache, then store their keys/values.

        Args:
            q, k, v: (B, H, L, D) of the tokens at positions ``length .. length + L - 1`` (L = 1
                when decoding, a whole prompt chunk when prefilling).
            pos_scores: optional (B, H, L, R) additive score by distance ``min(p - j, R - 1)``
                (Transformer-XL's position term; same convention as ``window_attention``).
            scale: score scale, default D ** -0.5.
            sink_logits: optional (H,) learned sink logit per head (``window_attention``'s).
        Returns:
            (B, H, L, D). Softmax in float32 for half-precision inputs.
        """
        b, h, length, d = q.shape
        if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ValueError(f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
        if pos_scores is not None and pos_scores.shape[:3] != (b, h, length):
            raise ValueError(f"pos_scores must be (B, H, L, R) = ({b}, {h}, {length}, R), "
                             f"got {tuple(pos_scores.shape)}")
        ps = None if pos_scores is None else self._split(pos_scores)
        sl = None if sink_logits is None else self.heads.split(sink_logits, 0)
        outs = self.attend_groups(self._split(q), self._split(k), self._split(v), pos_scores=ps,
                                  scale=scale, sink_logits=sl)
        return self.heads.merge(outs, 1)

    def attend_groups(self, qs: Sequence[Tensor], ks: Sequence[Tensor], vs: Sequence[Tensor], *,
                      pos_scores: Optional[Sequence[Optional[Tensor]]] = None,
                      scale: Optional[float] = None,
                      sink_logits: Optional[Sequence[Tensor]] = None) -> List[Tensor]:
        """:meth:`attend` with the heads already split by window group (for layers that compute
        per group, such as Transformer-XL's): one entry per group of ``self.groups`` (the order
        of :func:`window_groups`), group i's q, k, v (B, G_i, L, D) and ``pos_scores[i]``
        (B, G_i, L, R_i) or None; each group has its own number of distances R_i (XL: its
        window), ``sink_logits[i]`` (G_i,) its learned sinks (or ``sink_logits`` None). Returns
        the outputs per group, (B, G_i, L, D)."""
        if not (len(qs) == len(ks) == len(vs) == len(self.groups)):
            raise ValueError(f"expected one q, k, v per window group ({len(self.groups)}), got "
                             f"{len(qs)}, {len(ks)}, {len(vs)}")
        ps = [None] * len(self.groups) if pos_scores is None else list(pos_scores)
        if len(ps) != len(self.groups):
            raise ValueError(f"expected one pos_scores entry per window group ({len(self.groups)})")
        sls = [None] * len(self.groups) if sink_logits is None else list(sink_logits)
        if len(sls) != len(self.groups):
            raise ValueError(f"expected one sink_logits entry per window group ({len(self.groups)})")
        b, _, length, d = qs[0].shape
        for g, qg, kg, vg, pg in zip(self.groups, qs, ks, vs, ps):
            want = (b, len(g.heads), length, d)
            if qg.shape != want or kg.shape != want or vg.shape[:3] != want[:3]:
                raise ValueError(f"window group {g.window} ({len(g.heads)} heads): expected q, k, v "
                                 f"{want}, got {tuple(qg.shape)}, {tuple(kg.shape)}, {tuple(vg.shape)}")
            if pg is not None and (pg.dim() != 4 or pg.shape[:3] != want[:3]):
                raise ValueError(f"pos_scores of window group {g.window} must be (B, G, L, R) = "
                                 f"{want[:3] + ('R',)}, got {tuple(pg.shape)}")
        scale = d ** -0.5 if scale is None else scale
        if self.groups[0].k is None:
            for g, kg in zip(self.groups, ks):
                g.allocate(kg)
        start = self.length
        qpos = torch.arange(start, start + length, device=qs[0].device)
        # one token into a full ring: its slot holds the key at distance w, which no query sees,
        # so write first and attend over the ring alone (no concatenation)
        write_first = length == 1
        if write_first:
            for g, kg, vg in zip(self.groups, ks, vs):
                g.write(kg, vg, start)
        outs = []
        for gi, (qg, kg, vg, pg, sg) in enumerate(zip(qs, ks, vs, ps, sls)):
            pieces = self._decode_pieces(gi, start) if write_first else None
            if pieces is None:
                pieces = self.pieces(gi, qpos, new=None if write_first else (kg, vg))
            outs.append(attend_pieces(qg, pieces, scale, pg, sg))
        if not write_first:
            for g, kg, vg in zip(self.groups, ks, vs):
                g.write(kg, vg, start)
        self.length = start + length
        return outs

    def __repr__(self) -> str:
        groups = ", ".join(f"w={g.window}:{len(g.heads)}h" for g in self.groups)
        return (f"WindowKVCache(length={self.length}, groups=[{groups}], sinks={self.sink_tokens}, "
                f"keep_all={self.keep_all}, nbytes={self.nbytes()})")


class RecurrentStateCache:
    """The decoding state of Taylor linear attention: ``state`` = (S (B, H, F, D), z (B, H, F)),
    None before the first token; fixed size whatever the context length."""

    def __init__(self):
        self.state: Optional[Tuple[Tensor, Tensor]] = None
        self.length = 0

    def reorder(self, new_order: Tensor) -> None:
        if self.state is not None:
            self.state = tuple(t.index_select(0, new_order) for t in self.state)

    def nbytes(self) -> int:
        return 0 if self.state is None else sum(t.numel() * t.element_size() for t in self.state)

    def __repr__(self) -> str:
        return f"RecurrentStateCache(length={self.length}, nbytes={self.nbytes()})"
