"""Single entry point for causal multi-scale window attention: ``window_attention``.

Semantics (shared by every backend) are in :mod:`fairseq_mswa.kernels.dense`: q (B, H, Lq, D),
k/v (B, H, Lk, D) with a memory prefix of Lk - Lq keys, one window per head (None = full),
sink tokens, optional distance scores ``pos_scores`` (B, H, Lq, R), optional learned sinks
``sink_logits`` (H,), dropout.

Backends:

* ``dense``   masked reference, O(Lq * Lk) memory: tests and tiny sizes;
* ``blocked`` pure PyTorch, O(n * w), autograd, any device (:mod:`.blocked`);
* ``flex``    FlexAttention, one kernel for all heads; no CPU backward, no dropout, learned
  sinks in inference only, head dim >= 16 on CUDA (:mod:`.flex`);
* ``flash``   flash-attn ``window_size``; CUDA fp16/bf16, no sinks of either kind, no pos_scores
  (:mod:`.flash`);
* ``auto``    CUDA: flash if it can serve the inputs, else flex, else blocked;
  CPU: dense for tiny problems (Lq * Lk <= ``DENSE_MAX_SCORES``), else blocked.

An explicit backend that cannot serve the inputs raises ValueError naming one that can; what each
backend serves is :mod:`.capabilities` (the model build asks the same rules).
"""

from typing import Callable, Dict, Optional

import torch

from . import capabilities as _caps
from . import flash as _flash
from . import flex as _flex
from .blocked import blocked_window_attention_unchecked
from .capabilities import DENSE_MAX_SCORES  # noqa: F401  (re-exported)
from .common import BACKENDS, Windows, check_inputs
from .dense import dense_window_attention_unchecked

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
    """None when ``backend`` can serve these inputs, else a sentence saying why not and which
    backend serves (:func:`fairseq_mswa.kernels.capabilities.refusal`)."""
    if backend not in _FUNCTIONS:
        raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}")
    return _caps.refusal(backend, _caps.needs_of(q, k, v, sink_tokens, pos_scores, dropout_p,
                                                 sink_logits))


def select_backend(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None, dropout_p=0.0,
                   sink_logits=None) -> str:
    """The backend ``auto`` uses for these inputs."""
    needs = _caps.needs_of(q, k, v, sink_tokens, pos_scores, dropout_p, sink_logits)
    return _caps.select_backend(needs, q.shape[2], k.shape[2])


def available_backends(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None, dropout_p=0.0,
                       sink_logits=None):
    """Backends (besides ``auto``) that can serve these inputs."""
    needs = _caps.needs_of(q, k, v, sink_tokens, pos_scores, dropout_p, sink_logits)
    return [name for name in _FUNCTIONS if _caps.unsupported_reason(name, needs) is None]


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
    block_size=None,
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
        block_size: flex's block mask tiles (q_block, kv_block), powers of two >= 16; None =
            torch's 128 x 128. The other backends ignore it.
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
            raise ValueError(f"attention backend {backend!r} cannot serve these inputs: {reason}")
    if backend == "blocked" and merge_heads:
        return blocked_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores,
                                                  dropout_p, scale, sink_logits, merge_heads=True)
    if backend == "flex":
        return _flex.flex_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores,
                                                     dropout_p, scale, sink_logits,
                                                     block_size=block_size)
    return _FUNCTIONS[backend](q, k, v, windows, sink_tokens, pos_scores, dropout_p, scale,
                               sink_logits)
