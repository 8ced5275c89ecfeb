"""Single entry point for causal multi-scale window attention: ``window_attention``.

Semantics (shared by every backend) are in :mod:`fairseq_mswa.kernels.dense`: q (B, H, Lq, D),
k/v (B, H, Lk, D) with a memory prefix of Lk - Lq keys, one window per head (None = full),
sink tokens, optional distance scores ``pos_scores`` (B, H, Lq, R), optional learned sinks
``sink_logits`` (H,), dropout.

Backends:

* ``dense``   masked reference, O(Lq * Lk) memory: tests and tiny sizes;
* ``blocked`` pure PyTorch, O(n * w), autograd, any device (:mod:`.blocked`);
* ``flex``    FlexAttention, one kernel for all heads; no CPU backward, no dropout, learned
  sinks in inference only (:mod:`.flex`);
* ``flash``   flash-attn ``window_size``; CUDA fp16/bf16, no sinks of either kind, no pos_scores
  (:mod:`.flash`);
* ``auto``    CUDA: flash if it can serve the inputs, else flex, else blocked;
  CPU: dense for tiny problems (Lq * Lk <= ``DENSE_MAX_SCORES``), else blocked.

An explicit backend that cannot serve the inputs raises ValueError naming one that can.
"""

from typing import Callable, Dict, Optional

import torch

from . import flash as _flash
from . import flex as _flex
from .blocked import blocked_window_attention_unchecked
from .common import BACKENDS, Windows, check_inputs
from .dense import dense_window_attention_unchecked

# On CPU, `auto` uses the dense reference up to this many (query, key) scores per head: there
# one masked matmul beats the blocked layout (fwd+bwd, 8 heads, windows 2..16: dense is faster
# up to L=128 and 2x slower at L=256; scripts/bench_attention.py --tiny measures it).
DENSE_MAX_SCORES = 128 * 128

# the dispatcher checks the inputs once, then calls the backends' unchecked forms
_FUNCTIONS: Dict[str, Callable] = {
    "dense": dense_window_attention_unchecked,
    "blocked": blocked_window_attention_unchecked,
    "flex": _flex.flex_window_attention_unchecked,
    "flash": _flash.flash_window_attention_unchecked,
}


def unsupported_reason(
    backend: str, q, k, v, windows: Windows, sink_tokens=0, pos_scores=None, dropout_p=0.0,
    sink_logits=None,
) -> Optional[str]:
    """None when ``backend`` can serve these inputs, else a sentence saying why not."""
    if backend in ("dense", "blocked"):
        return None
    if backend == "flex":
        return _flex.unsupported_reason(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                        sink_logits)
    if backend == "flash":
        return _flash.unsupported_reason(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                         sink_logits)
    raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}")


def select_backend(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None, dropout_p=0.0,
                   sink_logits=None) -> str:
    """The backend ``auto`` uses for these inputs."""
    if q.device.type == "cuda":
        for name in ("flash", "flex"):
            if unsupported_reason(name, q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                  sink_logits) is None:
                return name
        return "blocked"
    if q.shape[2] * k.shape[2] <= DENSE_MAX_SCORES:
        return "dense"
    return "blocked"


def available_backends(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None, dropout_p=0.0,
                       sink_logits=None):
    """Backends (besides ``auto``) that can serve these inputs."""
    return [
        name
        for name in _FUNCTIONS
        if unsupported_reason(name, q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                              sink_logits) is None
    ]


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Windows,
    *,
    sink_tokens: int = 0,
    pos_scores: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sink_logits: Optional[torch.Tensor] = None,
    backend: str = "auto",
    merge_heads: bool = False,
) -> torch.Tensor:
    """Causal multi-scale window attention.

    Args:
        q: (B, H, Lq, D) queries; query i sits at key position Lk - Lq + i.
        k, v: (B, H, Lk, D), Lk >= Lq (the first Lk - Lq keys are a memory prefix).
        windows: one entry per head: int >= 1 (the w keys ending at the query) or None (full).
        sink_tokens: the first ``sink_tokens`` keys are visible to every (later) query.
        pos_scores: optional (B, H, Lq, R) score added by distance min(i - j, R - 1).
        dropout_p: attention dropout (pass 0 at evaluation).
        scale: score scale, default D ** -0.5.
        sink_logits: optional (H,) learned sink logit per head: one more softmax column, dropped
            after the softmax (gpt-oss's attention sinks; no key is added).
        backend: one of ``BACKENDS``.
        merge_heads: ``blocked`` computes heads of different windows in one call over the
            largest window's layout (per-head masks) instead of one call per window group: the
            XL layer's ``merged`` layout. Other backends take all heads in one call (dense,
            flex) or one per group (flash) whatever it says; results are the same either way.
    Returns:
        (B, H, Lq, D)
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}")
    windows = list(windows)
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    if backend == "auto":
        backend = select_backend(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    else:
        reason = unsupported_reason(backend, q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                    sink_logits)
        if reason is not None:
            fallback = select_backend(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                      sink_logits)
            raise ValueError(
                f"attention backend {backend!r} cannot serve these inputs: {reason}. "
                f"Use backend={fallback!r} (or 'auto')."
            )
    if backend == "blocked" and merge_heads:
        return blocked_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores,
                                                  dropout_p, scale, sink_logits, merge_heads=True)
    return _FUNCTIONS[backend](q, k, v, windows, sink_tokens, pos_scores, dropout_p, scale,
                               sink_logits)
