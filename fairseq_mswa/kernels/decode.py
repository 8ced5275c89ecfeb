"""Attention of a few new queries over cached keys: the decoding kernel of every KV cache.

A cache hands over its keys as *pieces* (a ring buffer, the sink store, a growing buffer, the new
chunk's own keys), each with the distances ``query position - key position`` and, where some keys
are not visible, a boolean mask. ``attend_pieces`` scores every piece, joins the scores for one
softmax (in :func:`~fairseq_mswa.kernels.dense.softmax_precision`, as the dense reference) and
sums the per-piece value products: the keys are never concatenated (no per-step copy of the
cache). One piece with every key visible goes through one fused SDPA call.

Shapes: q (B, G, Lq, D); piece k, v (B, G, n, D), ``dist`` (Lq, n) long, ``visible`` (Lq, n) bool
or None (all visible); ``pos_scores`` (B, G, Lq, R) or None: the score of a key at distance d
gains ``pos_scores[..., min(d, R - 1)]`` (the convention of ``window_attention``);
``sink_logits`` (G,) or None: learned sinks, one more softmax column per head, dropped after the
softmax (as :func:`~fairseq_mswa.kernels.dense.with_sink_column` in the dense reference).
"""

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .dense import softmax_probs, with_sink_column


class KeyPiece(NamedTuple):
    """Cached keys/values of one window group as a query chunk sees them (see module docstring)."""

    k: Tensor
    v: Tensor
    dist: Tensor
    visible: Optional[Tensor] = None


def _bias(pos_scores: Tensor, dist: Tensor) -> Tensor:
    """(B, G, Lq, R) scores by distance -> (B, G, Lq, n) by key, distances clamped to [0, R - 1]."""
    idx = dist.clamp(0, pos_scores.shape[-1] - 1)
    if idx.shape[0] == 1:  # one query (decoding): a plain index on the last dim
        return pos_scores.index_select(-1, idx[0])
    return pos_scores.gather(-1, idx.expand(*pos_scores.shape[:2], *idx.shape))


def attend_pieces(q: Tensor, pieces: Sequence[KeyPiece], scale: float,
                  pos_scores: Optional[Tensor] = None,
                  sink_logits: Optional[Tensor] = None) -> Tensor:
    """Softmax attention of q (B, G, Lq, D) over the keys of ``pieces``. Returns (B, G, Lq, D)."""
    if len(pieces) == 1 and pieces[0].visible is None and sink_logits is None:  # one fused kernel
        k, v, dist, _ = pieces[0]
        bias = None if pos_scores is None else _bias(pos_scores, dist)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = []
    for p in pieces:
        sc = torch.matmul(q * scale, p.k.transpose(-1, -2))
        if pos_scores is not None:
            sc = sc + _bias(pos_scores, p.dist)
        scores.append(sc if p.visible is None else sc.masked_fill(~p.visible, float("-inf")))
    joined = torch.cat(scores, dim=-1) if len(scores) > 1 else scores[0]
    if sink_logits is not None:  # heads lead in (G, B, Lq, n)
        joined = with_sink_column(joined.transpose(0, 1), sink_logits).transpose(0, 1)
    probs = softmax_probs(joined, q.dtype)  # a sink's column (the last) is never read below
    out, offset = None, 0
    for p in pieces:
        n = p.k.shape[2]
        o = torch.matmul(probs[..., offset:offset + n], p.v)
        out = o if out is None else out + o
        offset += n
    return out
