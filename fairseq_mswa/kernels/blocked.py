"""Blocked causal multi-scale window attention in pure PyTorch: O(n * w) time and memory.

Semantics are those of :func:`fairseq_mswa.kernels.dense.dense_window_attention` (memory
prefix, per-head windows, sink tokens, distance scores); read its module docstring.

How it works, for one group of heads that share a window ``w`` (all heads with the same window
are computed together):

* heads are cut into window groups by :class:`~fairseq_mswa.kernels.common.HeadGroups` (one
  reordering gather only when groups are not consecutive heads, then ``split``), so the backward
  joins the per-group gradients in one concatenation;
* the ``Lq`` queries are cut into ``nb`` blocks of ``bq`` queries (the last one zero-padded,
  ``bq`` from :func:`default_block_size`);
* block ``b`` (queries at key positions ``[p0, p0 + bq)``) can reach the ``span = bq + w - 1``
  keys ``[p0 - w + 1, p0 + bq)``: the last ``w - 1`` keys of the previous block and the block
  itself, two views of one zero-padded copy concatenated (c + 1 views, c = ceil((w - 1) / bq),
  when bq < w - 1),
  so every block of the group goes through ONE batched attention call with batch ``(B*G, nb)``:
  the fused ``scaled_dot_product_attention`` kernel, or plain matmul/softmax for spans up to
  ``SMALL_SPAN`` keys (faster there on CPU);
* inside a block the window test only depends on the local (row, column): the boolean mask is
  ``(bq, span)`` (``(nb, bq, span)`` when left padding or sink tokens make blocks differ),
  built from positions and cached per shape (:func:`_window_mask`, an ``lru_cache``);
* sink keys ``j < k`` are appended to every block's span, visible only where they are NOT
  already inside the window (no double counting);
* ``pos_scores`` (B, H, Lq, R) become the per-block additive bias by gathering at the
  clamped distance, so their gradient flows through ``gather``;
* full heads (``None``) and windows that reach every key use one causal SDPA call (``is_causal``
  when there is no memory prefix), else run in blocks of ``FULL_BLOCK`` queries, each over the
  keys up to its last query only (:func:`_dense_group`): O(n^2) work as they must, but never an
  (Lq, Lk) score, bias or probability tensor, and the future keys of a block are not scored;
* ``merge_heads`` (the XL layer's ``merged`` layout): all heads of distinct windows in one call
  over the largest window's blocked layout, the mask narrowed per head (:func:`_merged_heads`);
* learned sinks (``sink_logits``): every block's span gets one more key, of zeros, whose additive
  mask entry is the head's sink logit (:func:`_append_learned_sink`): its probability is the
  sink's and its value adds nothing, so the softmax is the dense reference's with its sink column.

Dropout is applied to each block's probabilities (SDPA's ``dropout_p``, or ``F.dropout`` on the
matmul path): the same distribution as dropping the dense probabilities.
"""

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

from .common import Windows, check_inputs, effective_window, group_heads
from .dense import cached_visibility_mask, distance_bias, with_sink_column

# Query block size per window, tuned on a 2-core CPU (scripts/bench_attention.py, fwd+bwd of
# 2-head groups at L=4096): the work per query is bq + w - 1 keys, so small windows want small
# blocks, but below ~16 queries per block the per-block overhead dominates, and above 128 the
# wasted (masked) work does.
MIN_BLOCK = 16
MAX_BLOCK = 128
# Key spans (block + window - 1 + sinks) up to this use plain matmul/softmax (`_attend_small`),
# longer ones the fused SDPA kernel: measured faster on each side of it.
SMALL_SPAN = 64
# Full heads with a memory prefix or distance scores: queries per block of `_dense_group`. Measured
# (fwd+bwd, 8 heads x 64, 2048 queries over 4096 keys, distance scores, 1 thread): one (Lq, Lk)
# call 3.67 s; blocks of 128 / 256 / 512 queries 3.21 / 2.14 / 1.90 s (less memory traffic, and
# a block does not score the keys after its last query).
FULL_BLOCK = 512


def default_block_size(window: int) -> int:
    """Query block size for a window: ``window`` rounded up to a power of two, clamped to
    ``[MIN_BLOCK, MAX_BLOCK]``."""
    bq = 1
    while bq < window:
        bq *= 2
    return max(MIN_BLOCK, min(MAX_BLOCK, bq))


def merged_block_size(windows) -> int:
    """Query block size when heads of different ``windows`` share one layout (``merge_heads``):
    :func:`default_block_size` of a quarter of the largest window, so the span (block + largest
    window - 1) is at most 1.25x the largest window and its blocks are not too small (measured,
    fwd+bwd, MSWA layer of windows 16..128 at segment 128, batch 8, d 64: blocks of 16 / 32 / 64
    queries 14.9 / 11.4 / 13.9 ms, median of 31 interleaved reps)."""
    return default_block_size(max(windows) // 4)


@lru_cache(maxsize=64)
def _window_mask(lc: int, mem: int, w: int, bq: int, device: torch.device):
    """Mask and distances of the blocked layout of ``lc`` queries whose first query sits
    ``mem`` (< w) keys after the first key of the slice (cached per shape).

    Returns ``(mask, dist)``: mask bool (1, 1, bq, span) or (1, nb, bq, span) (True =
    visible; per block only when left padding makes the first blocks differ) and dist long
    (bq, span), the distance query - key inside any block.
    """
    nb = -(-lc // bq)
    span = bq + w - 1
    r = torch.arange(bq, device=device)
    c = torch.arange(span, device=device)
    dist = r[:, None] + (w - 1) - c[None, :]  # (bq, span)
    mask = (dist >= 0) & (dist < w)
    if mem < w - 1:  # key position of column c in block b: mem - (w - 1) + b*bq + c
        kpos = (mem - (w - 1) + bq * torch.arange(nb, device=device))[:, None] + c[None, :]
        return (mask[None] & (kpos >= 0)[:, None, :])[None], dist
    return mask[None, None], dist


@lru_cache(maxsize=64)
def _merged_window_mask(lc: int, mem: int, w: int, bq: int, head_windows, batch: int,
                        device: torch.device):
    """:func:`_window_mask` of the layout window ``w`` narrowed per head to its own window:
    ``head_windows`` (G windows, all <= w) of rows ``bi * G + g``. Returns (mask (batch * G,
    nb' , bq, span), dist (bq, span), hw (G,) long)."""
    mask, dist = _window_mask(lc, mem, w, bq, device)
    hw = torch.tensor(head_windows, device=device)
    own = dist[None] < hw[:, None, None]  # (G, bq, span)
    mask = (mask & own[:, None]).repeat(batch, 1, 1, 1)
    return mask, dist, hw


def _key_blocks(x: torch.Tensor, p0: int, lc: int, w: int, bq: int) -> torch.Tensor:
    """Keys (N, Lk, D) -> (N, nb, span, D): block b holds the span = bq + w - 1 keys at
    positions p0 + b*bq - (w - 1) ... p0 + (b+1)*bq - 1 (zeros outside [0, Lk)).

    With bq >= w - 1 the span is [last w-1 keys of the previous block, the block itself]: two
    views of one padded copy, concatenated (cheaper to differentiate than ``unfold``)."""
    n, lk, d = x.shape
    nb = -(-lc // bq)
    right = p0 + nb * bq - lk
    if bq >= w - 1:
        start = max(0, p0 - bq)
        ext = F.pad(x[:, start:], (0, 0, bq - (p0 - start), right)).view(n, nb + 1, bq, d)
        if w == 1:
            return ext[:, 1:]
        return torch.cat([ext[:, :-1, bq - (w - 1) :], ext[:, 1:]], dim=2)
    # bq < w - 1: the span reaches back c = ceil((w - 1) / bq) blocks; block b's keys are the
    # tail of block b - c, the blocks b - c + 1 .. b - 1 and block b itself: c + 1 views of one
    # padded copy, concatenated (its backward is copies, not unfold's slow scatter)
    c = -(-(w - 1) // bq)
    start = max(0, p0 - c * bq)
    ext = F.pad(x[:, start:], (0, 0, c * bq - (p0 - start), right)).view(n, nb + c, bq, d)
    parts = [ext[:, :nb, c * bq - (w - 1):]] + [ext[:, j:j + nb] for j in range(1, c + 1)]
    return torch.cat(parts, dim=2)


def _windowed_group(q, k, v, w, sinks, pos_scores, dropout_p, scale, bq, sink_logits=None,
                    head_windows=None):
    """One group of heads sharing window ``w`` < Lk: q (N, Lq, D), k/v (N, Lk, D),
    pos_scores (N, Lq, R) or None, sink_logits (N,) or None, N = batch * heads of the group.
    Returns (N, Lq, D). All blocks go through one SDPA call."""
    n, lq, d = q.shape
    p0 = k.shape[1] - lq  # key position of the first query (the memory length)
    nb = -(-lq // bq)
    qpad = nb * bq - lq
    span = bq + w - 1
    qb = F.pad(q, (0, 0, 0, qpad)).view(n, nb, bq, d)
    kb = _key_blocks(k, p0, lq, w, bq)
    vb = _key_blocks(v, p0, lq, w, bq)
    if head_windows is None:
        mask, dist = _window_mask(lq, min(p0, w - 1), w, bq, q.device)
    else:
        mask, dist, hw = _merged_window_mask(lq, min(p0, w - 1), w, bq, tuple(head_windows),
                                             n // len(head_windows), q.device)
    # sink keys j < sinks are added where causal and outside the window (else counted twice)
    use_sinks = sinks > 0 and p0 + lq - 1 >= min(head_windows or [w])
    if use_sinks:
        qpos = p0 + torch.arange(nb * bq, device=q.device).view(nb, bq, 1)
        dist_sink = qpos - torch.arange(sinks, device=q.device)  # (nb, bq, s)
        if head_windows is None:
            outside = (dist_sink >= w)[None]
        else:
            outside = (dist_sink[None] >= hw[:, None, None, None]).repeat(n // len(hw), 1, 1, 1)
        lead = max(mask.shape[0], outside.shape[0])
        mask = torch.cat([mask.expand(lead, nb, bq, span), outside.expand(lead, nb, bq, sinks)],
                         dim=-1)
        kb = torch.cat([kb, k[:, None, :sinks].expand(n, nb, sinks, d)], dim=2)
        vb = torch.cat([vb, v[:, None, :sinks].expand(n, nb, sinks, d)], dim=2)
    if pos_scores is None:
        attn_mask = mask  # 4-D: CPU's fused SDPA kernel takes only 2-D or 4-D masks
    else:
        r = pos_scores.shape[-1]
        psb = F.pad(pos_scores, (0, 0, 0, qpad)).view(n, nb, bq, r)
        if r == w:  # the XL case: one score per visible distance, laid out by a skew (no gather)
            bias = _skew(psb, bq)
        else:
            bias = psb.gather(-1, dist.clamp(0, r - 1).expand(n, nb, bq, span))
        if use_sinks:
            if r == w and head_windows is None:  # sinks outside the window: its farthest distance
                sink_bias = psb[..., w - 1:].expand(n, nb, bq, sinks)
            else:  # (merged heads: a sink inside the layout window reads its own distance)
                sink_bias = psb.gather(-1, dist_sink.clamp(0, r - 1).expand(n, nb, bq, sinks))
            bias = torch.cat([bias, sink_bias], dim=-1)
        attn_mask = bias.masked_fill(~mask, float("-inf"))  # one op; its backward one too
    if sink_logits is not None:
        attn_mask, kb, vb = _append_learned_sink(attn_mask, kb, vb, sink_logits)
    # fused SDPA on CPU has no gradient for a float mask: with a differentiable bias it falls back
    # to its (slower, safe-softmax) math path, so the plain path serves that case directly
    small = kb.shape[2] <= SMALL_SPAN or (attn_mask.requires_grad and q.device.type == "cpu")
    attend = _attend_small if small else F.scaled_dot_product_attention
    out = attend(qb, kb, vb, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return out.reshape(n, nb * bq, d)[:, :lq]


def _append_learned_sink(attn_mask, k, v, sink_logits):
    """One key of zeros per row whose mask entry is the row's learned sink logit.

    attn_mask bool or float, broadcastable to (N, ..., Lq, S); k, v (N, ..., S, D); sink_logits
    (N,). Returns the float mask (N, ..., Lq, S + 1) and k, v (N, ..., S + 1, D)."""
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=k.dtype, device=k.device).masked_fill(
            ~attn_mask, float("-inf"))
    lead, lq = k.shape[:-2], attn_mask.shape[-2]
    attn_mask = with_sink_column(attn_mask.expand(*lead, lq, attn_mask.shape[-1]), sink_logits)
    zero = k.new_zeros(*lead, 1, k.shape[-1])
    return attn_mask, torch.cat([k, zero], dim=-2), torch.cat([v, zero], dim=-2)


def _skew(psb: torch.Tensor, bq: int) -> torch.Tensor:
    """Scores by distance (..., bq, w) -> scores by key column (..., bq, bq + w - 1) of the
    blocked layout: ``out[r, c] = psb[r, r + w - 1 - c]`` inside the window (0 <= r + w - 1 - c
    < w), 0 outside (masked by the caller). Transformer-XL's relative shift: flip, pad each row
    by ``bq`` and re-read the flat buffer with a row length one shorter, so row ``r`` moves
    ``r`` columns right. Copies only; its backward is copies too (no scatter)."""
    *lead, rows, w = psb.shape
    flat = F.pad(psb.flip(-1), (0, bq)).reshape(*lead, rows * (w + bq))
    return flat[..., : rows * (w + bq - 1)].view(*lead, rows, w + bq - 1)


def _attend_small(q, k, v, attn_mask, dropout_p, scale):
    """Plain matmul-softmax-matmul attention (the same contract as SDPA with a boolean or
    additive mask): faster than the fused CPU kernel on short key spans."""
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~attn_mask, float("-inf")
        )
    probs = torch.softmax(torch.matmul(q * scale, k.transpose(-1, -2)) + attn_mask, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)


def _full_group(q, k, v, sinks, pos_scores, dropout_p, scale, sink_logits=None):
    """Heads with full causal attention (memory prefix aware). Shapes as ``_windowed_group``."""
    if q.shape[1] == k.shape[1] and pos_scores is None and sink_logits is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    return _dense_group(q, k, v, None, sinks, pos_scores, dropout_p, scale, sink_logits)


def blocked_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Windows,
    sink_tokens: int = 0,
    pos_scores: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sink_logits: Optional[torch.Tensor] = None,
    block_size: Optional[int] = None,
    merge_heads: bool = False,
) -> torch.Tensor:
    """Blocked window attention. q (B, H, Lq, D), k/v (B, H, Lk, D), windows one per head,
    pos_scores (B, H, Lq, R) or None, sink_logits (H,) or None. Returns (B, H, Lq, D).
    ``block_size`` overrides :func:`default_block_size`. ``merge_heads``: every head in one
    call over the layout of the largest window, each masked to its own (:func:`_merged_heads`;
    one fixed cost instead of one per window group, the span of the largest window for all)."""
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    return blocked_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores,
                                              dropout_p, scale, sink_logits, block_size,
                                              merge_heads)


def blocked_window_attention_unchecked(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                                       dropout_p=0.0, scale=None, sink_logits=None,
                                       block_size=None, merge_heads=False) -> torch.Tensor:
    """``blocked_window_attention`` without the input checks (``window_attention`` ran them)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    if merge_heads:
        ws = tuple(effective_window(w, lk) for w in windows)
        if None not in ws and len(set(ws)) > 1:
            return _merged_heads(q, k, v, ws, sink_tokens, pos_scores, dropout_p, scale,
                                 sink_logits, block_size)
    groups = group_heads(windows, lk)
    parts = zip(*(groups.split(x, 1) if x is not None else [None] * len(groups)
                  for x in (q, k, v, pos_scores)))
    logits = [None] * len(groups) if sink_logits is None else groups.split(sink_logits, 0)
    outs = []
    for (w, heads), (qg, kg, vg, pg), sg in zip(groups, parts, logits):
        n = b * len(heads)
        qg, kg, vg = (x.reshape(n, -1, d) for x in (qg, kg, vg))
        pg = None if pg is None else pg.reshape(n, lq, -1)
        sg = None if sg is None else sg.repeat(b)  # (N,): row bi * G + g is head g's
        bq = block_size or (default_block_size(w) if w is not None else lq)
        if w is None:
            og = _full_group(qg, kg, vg, sink_tokens, pg, dropout_p, scale, sg)
        elif bq >= lq:  # a single block would already span the keys
            og = _dense_group(qg, kg, vg, w, sink_tokens, pg, dropout_p, scale, sg)
        else:
            og = _windowed_group(qg, kg, vg, w, sink_tokens, pg, dropout_p, scale, bq, sg)
        outs.append(og.view(b, len(heads), lq, d))
    return groups.merge(outs, 1)


def _merged_heads(q, k, v, windows, sinks, pos_scores, dropout_p, scale, sink_logits, block_size):
    """Every head in one call: blocks of :func:`merged_block_size` queries over the
    span of the largest of ``windows`` (all finite, < Lk), each head masked to its own window
    (:func:`_merged_window_mask`). Where window groups are many and small (MSWA at small
    shapes) this saves a fixed cost per group; every head pays the largest window's span.
    Shapes as ``blocked_window_attention``."""
    b, h, lq, d = q.shape
    n = b * h
    w = max(windows)
    bq = block_size or merged_block_size(windows)
    qf, kf, vf = (x.reshape(n, -1, d) for x in (q, k, v))
    pf = None if pos_scores is None else pos_scores.reshape(n, lq, -1)
    sf = None if sink_logits is None else sink_logits.repeat(b)
    if bq >= lq:
        out = _dense_group(qf, kf, vf, windows, sinks, pf, dropout_p, scale, sf)
    else:
        out = _windowed_group(qf, kf, vf, w, sinks, pf, dropout_p, scale, bq, sf,
                              head_windows=windows)
    return out.view(b, h, lq, d)


def _dense_group(q, k, v, w, sinks, pos_scores, dropout_p, scale, sink_logits=None):
    """A group with window ``w`` (None = full) whose queries see (nearly) every earlier key:
    full heads with a memory prefix or distance scores, and windows whose single block spans the
    keys. Queries in blocks of ``FULL_BLOCK``; block [s, e) attends to the keys [0, mem + e) only,
    in one masked call (:func:`_dense_block`)."""
    lq, lk = q.shape[1], k.shape[1]
    if lq <= FULL_BLOCK:
        return _dense_block(q, k, v, w, sinks, pos_scores, dropout_p, scale, sink_logits)
    mem = lk - lq
    outs = []
    for s in range(0, lq, FULL_BLOCK):
        e = min(lq, s + FULL_BLOCK)
        outs.append(_dense_block(q[:, s:e], k[:, :mem + e], v[:, :mem + e], w, sinks,
                                 None if pos_scores is None else pos_scores[:, s:e], dropout_p,
                                 scale, sink_logits))
    return torch.cat(outs, dim=1)


def _dense_block(q, k, v, w, sinks, pos_scores, dropout_p, scale, sink_logits=None):
    """One masked (Lq, Lk) call: q (N, Lq, D) are the last Lq positions of the Lk keys."""
    lk = k.shape[1]
    ws = tuple(w) if isinstance(w, (list, tuple)) else (w,)  # one window, or one per head of the rows
    mask = cached_visibility_mask(q.shape[1], lk, ws, sinks, q.device,
                                  q.shape[0] // len(ws) if len(ws) > 1 else 1)
    if pos_scores is None:
        attn_mask = mask
    else:
        bias = distance_bias(pos_scores, lk)  # the relative shift (copies, no gather)
        attn_mask = bias.masked_fill(~mask, float("-inf"))
    if sink_logits is not None:
        attn_mask, k, v = _append_learned_sink(attn_mask, k, v, sink_logits)
    if attn_mask.requires_grad and q.device.type == "cpu":  # see _windowed_group
        return _attend_small(q, k, v, attn_mask, dropout_p, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
