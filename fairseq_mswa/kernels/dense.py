"""Dense reference for causal multi-scale window attention (tests, tiny sizes).

Conventions shared by every backend (see ``window_attention``):

* ``q``: (B, H, Lq, D); ``k``, ``v``: (B, H, Lk, D) with ``Lk >= Lq``. The first
  ``mem = Lk - Lq`` keys are a memory prefix: query ``i`` sits at key position ``mem + i``.
* ``windows``: one entry per head; query at key position ``p`` sees keys ``j`` with
  ``p - w < j <= p`` (the ``w`` keys ending at itself); ``None`` = every key ``j <= p``.
* ``sink_tokens`` k: keys ``j < k`` are also visible to every query with ``j <= p``.
* ``pos_scores``: optional (B, H, Lq, R) additive score by distance: the score of query ``i``
  and key ``j`` gains ``pos_scores[b, h, i, min(p - j, R - 1)]`` (Transformer-XL's position term
  with its ``clamp_len`` behaviour for distances beyond R - 1).
* ``sink_logits``: optional (H,) learned attention sinks (gpt-oss): head h's softmax gets one more
  column of logit ``sink_logits[h]`` that is dropped after the softmax (a key of value 0 that every
  query sees with that score), so a head can give part of its weight to "nothing". It adds no key
  to the cache or the cost: :func:`with_sink_column`.
"""

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

from .common import Windows, check_inputs


def visibility_mask(
    lq: int, lk: int, windows: Windows, sink_tokens: int = 0, device=None
) -> torch.Tensor:
    """Boolean (H, Lq, Lk) mask, True where query i may attend key j."""
    mem = lk - lq
    qpos = torch.arange(mem, lk, device=device)[:, None]
    kpos = torch.arange(lk, device=device)[None, :]
    dist = qpos - kpos  # (Lq, Lk)
    causal = dist >= 0
    sink = causal & (kpos < sink_tokens)
    masks = []
    for w in windows:
        m = causal if w is None else causal & (dist < w)
        masks.append(m | sink)
    return torch.stack(masks)


@lru_cache(maxsize=128)
def cached_visibility_mask(lq: int, lk: int, windows: tuple, sink_tokens: int, device,
                           rows: int = 1) -> torch.Tensor:
    """:func:`visibility_mask` for the kernels, built once per shape (read only: never write to
    it). ``rows`` > 1 repeats it for ``rows`` batch rows: (rows x H, Lq, Lk)."""
    mask = visibility_mask(lq, lk, windows, sink_tokens, device)
    return mask.repeat(rows, 1, 1) if rows > 1 else mask


def distance_scores(pos_scores: torch.Tensor, lk: int) -> torch.Tensor:
    """Expand (B, H, Lq, R) scores by distance into (B, H, Lq, Lk) scores by key position."""
    b, h, lq, r = pos_scores.shape
    mem = lk - lq
    dist = torch.arange(mem, lk, device=pos_scores.device)[:, None] - torch.arange(
        lk, device=pos_scores.device
    )[None, :]
    idx = dist.clamp(0, r - 1).expand(b, h, lq, lk)
    return pos_scores.gather(-1, idx)


def distance_bias(pos_scores: torch.Tensor, lk: int) -> torch.Tensor:
    """:func:`distance_scores` by copies only (no gather, whose backward is a slow scatter):
    the same (B, H, Lq, Lk) values at every causal (query, key) pair; entries of future keys
    (j > query position) are unspecified (every kernel masks them). Distances >= R read column
    R - 1 (the clamp), by repeating it up to Lk columns; then Transformer-XL's relative shift."""
    r = pos_scores.shape[-1]
    if r < lk:
        pos_scores = torch.cat([pos_scores, pos_scores[..., r - 1:].expand(
            *pos_scores.shape[:-1], lk - r)], dim=-1)
    elif r > lk:
        pos_scores = pos_scores[..., :lk]  # distances >= Lk never occur
    *lead, lq, _ = pos_scores.shape
    width = lk + lq
    flat = F.pad(pos_scores.flip(-1), (0, lq)).reshape(*lead, lq * width)
    return flat[..., lq - 1: lq - 1 + lq * (width - 1)].view(*lead, lq, width - 1)[..., :lk]


def with_sink_column(scores: torch.Tensor, sink_logits: torch.Tensor) -> torch.Tensor:
    """Scores (N, ..., Lq, Lk) -> (N, ..., Lq, Lk + 1): the learned sink's logit appended as the
    last column; ``sink_logits`` has one entry per index of the leading dim N (heads, or
    batch x heads flattened), broadcast over the rest. The caller drops the column's probability
    (its value is 0)."""
    shape = (scores.shape[0],) + (1,) * (scores.dim() - 1)
    col = sink_logits.to(scores.dtype).view(shape).expand(*scores.shape[:-1], 1)
    return torch.cat([scores, col], dim=-1)


def softmax_precision(dtype: torch.dtype) -> torch.dtype:
    """The precision rule of every kernel that materialises scores: half precision (fp16/bf16)
    takes its softmax in float32; float32 / float64 keep their own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def softmax_probs(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """softmax over the last dim in :func:`softmax_precision`, returned in ``dtype``."""
    return torch.softmax(scores.to(softmax_precision(scores.dtype)), dim=-1).to(dtype)


def dense_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Windows,
    sink_tokens: int = 0,
    pos_scores: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sink_logits: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference: materialise all (Lq, Lk) scores, mask, softmax. Returns (B, H, Lq, D)."""
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    return dense_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                            scale, sink_logits)


def dense_window_attention_unchecked(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                                     dropout_p=0.0, scale=None, sink_logits=None) -> torch.Tensor:
    """``dense_window_attention`` without the input checks (``window_attention`` ran them)."""
    lq, lk = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if pos_scores is not None:
        scores = scores + distance_bias(pos_scores, lk)
    mask = cached_visibility_mask(lq, lk, tuple(windows), sink_tokens, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    if sink_logits is not None:  # (B, H, ...): one logit per head, the same for every batch row
        scores = with_sink_column(scores.transpose(0, 1), sink_logits).transpose(0, 1)
        probs = softmax_probs(scores, q.dtype)[..., :-1]
    else:
        probs = softmax_probs(scores, q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)
