"""FlexAttention backend: every head and window in one kernel via a per-head mask.

Semantics are those of :func:`fairseq_mswa.kernels.dense.dense_window_attention`.

* ``mask_mod`` reads each head's window from a (H,) tensor (full heads get a window longer
  than any sequence), shifts queries by the memory length and adds the sink keys;
* ``score_mod`` adds ``pos_scores[b, h, i, min(distance, R - 1)]`` when given;
* learned sinks (``sink_logits``): FlexAttention returns the log-sum-exp ``lse`` of each row's
  visible scores; a sink of logit ``s`` scales the row's output by ``exp(lse) / (exp(lse) +
  exp(s)) = sigmoid(lse - s)`` (the dense reference's extra softmax column, folded in);
* block masks are cached in :data:`BLOCK_MASK_CACHE`, an explicit LRU owned by this module,
  keyed by (Lq, Lk, windows, sinks, device); :func:`clear_block_mask_cache` empties it.

Limits (``unsupported_reason`` says which applies): PyTorch's FlexAttention has no CPU
backward, so on CPU it serves inference only; no dropout. ``compiled=True`` (the default) runs
the fused kernel through ``torch.compile`` (first call per shape compiles, ~20 s on CPU);
``compiled=False`` runs the unfused eager path (materialises all scores: a correctness check).
"""

from collections import OrderedDict
from typing import Optional, Tuple

import torch

from .common import Windows, check_inputs, effective_window

try:  # PyTorch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    _IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - depends on the installed torch
    create_block_mask = flex_attention = None
    _IMPORT_ERROR = f"torch.nn.attention.flex_attention is unavailable ({e}); needs torch >= 2.5"



class BlockMaskCache:
    """A small LRU of FlexAttention block masks: ``get(key, build)`` returns the cached mask or
    builds, stores and returns it, evicting the least recently used beyond ``maxsize``."""

    def __init__(self, maxsize: int = 32):
        self.maxsize = maxsize
        self._items: "OrderedDict[Tuple, object]" = OrderedDict()

    def get(self, key, build):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def __len__(self):
        return len(self._items)

    def clear(self):
        self._items.clear()


BLOCK_MASK_CACHE = BlockMaskCache()
_COMPILED = {}


def clear_block_mask_cache() -> None:
    BLOCK_MASK_CACHE.clear()


def unsupported_reason(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                       sink_logits=None) -> Optional[str]:
    """None when this backend can serve the inputs, else why not."""
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if dropout_p > 0:
        return "FlexAttention has no dropout (dropout_p > 0)"
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, pos_scores, sink_logits))
    if q.device.type == "cpu" and grad:
        return "FlexAttention has no backward on CPU (inputs require grad): CPU inference only"
    if sink_logits is not None and grad:
        # the sink is folded in through the returned log-sum-exp, whose gradient this project
        # has not verified on a GPU: training with learned sinks runs on blocked
        return "learned sinks in training (sink_logits through FlexAttention's log-sum-exp)"
    return None


def _with_lse(fn, q, k, v, score_mod, block_mask, scale):
    """(out, lse) of a FlexAttention call: ``return_aux=AuxRequest(lse=True)`` where torch has it
    (``return_lse`` is deprecated there), else ``return_lse=True``."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_lse=True)
    out, aux = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                  return_aux=AuxRequest(lse=True))
    return out, aux.lse


def _window_tensor(windows: Windows, lk: int, device) -> torch.Tensor:
    """(H,) int window per head; full heads (None) get lk + 1 (longer than any distance)."""
    return torch.tensor([lk + 1 if effective_window(w, lk) is None else w for w in windows],
                        device=device)


def _mask_mod(win: torch.Tensor, mem: int, sinks: int):
    def mask_mod(b, h, q_idx, kv_idx):
        dist = q_idx + mem - kv_idx
        return (dist >= 0) & ((dist < win[h]) | (kv_idx < sinks))

    return mask_mod


def block_mask_for(lq: int, lk: int, windows: Windows, sinks: int, device):
    """Cached FlexAttention block mask (batch-independent, one mask per head)."""
    key = (lq, lk, tuple(windows), sinks, str(device))

    def build():
        win = _window_tensor(windows, lk, device)
        return create_block_mask(
            _mask_mod(win, lk - lq, sinks), None, len(windows), lq, lk, device=device
        )

    return BLOCK_MASK_CACHE.get(key, build)


def flex_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Windows,
    sink_tokens: int = 0,
    pos_scores: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sink_logits: Optional[torch.Tensor] = None,
    compiled: bool = True,
) -> torch.Tensor:
    """FlexAttention window attention. q (B, H, Lq, D), k/v (B, H, Lk, D), pos_scores
    (B, H, Lq, R) or None, sink_logits (H,) or None. Returns (B, H, Lq, D). Raises ValueError
    when it cannot serve."""
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    reason = unsupported_reason(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    if reason:
        raise ValueError(f"flex backend: {reason}; use backend='blocked'")
    return flex_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                           scale, sink_logits, compiled)


def flex_window_attention_unchecked(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                                    dropout_p=0.0, scale=None, sink_logits=None,
                                    compiled=True) -> torch.Tensor:
    """``flex_window_attention`` without the checks (``window_attention`` ran them, and
    ``unsupported_reason``)."""
    lq, lk = q.shape[2], k.shape[2]
    mem = lk - lq
    block_mask = block_mask_for(lq, lk, windows, sink_tokens, q.device)
    score_mod = None
    if pos_scores is not None:
        r = pos_scores.shape[-1]

        def score_mod(score, b, h, q_idx, kv_idx):
            dist = (q_idx + mem - kv_idx).clamp(0, r - 1)
            return score + pos_scores[b, h, q_idx, dist]

    fn = flex_attention
    if compiled:
        fn = _COMPILED.get("flex")
        if fn is None:
            fn = _COMPILED["flex"] = torch.compile(flex_attention)
    if sink_logits is None:
        return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    out, lse = _with_lse(fn, q, k, v, score_mod, block_mask, scale)  # lse (B, H, Lq), natural log
    keep = torch.sigmoid(lse.float() - sink_logits.float().view(1, -1, 1))
    return out * keep.to(out.dtype).unsqueeze(-1)
