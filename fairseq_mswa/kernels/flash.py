"""flash-attn backend: ``flash_attn_func`` with ``window_size`` (CUDA, fp16/bf16).

Semantics are those of :func:`fairseq_mswa.kernels.dense.dense_window_attention` restricted to
what flash-attn computes: causal attention aligned to the bottom right (query ``i`` at key
position ``Lk - Lq + i``, flash-attn >= 2.1) and ``window_size=(w - 1, 0)`` (the ``w`` keys
ending at the query); full heads use ``(-1, -1)``. Heads that share a window go in one call.
No sink tokens, no learned sinks, no ``pos_scores``: :mod:`.capabilities` says so and the
dispatcher picks another backend. flash-attn is imported lazily (it is optional).
"""

from typing import Optional

import torch

from .capabilities import flash_import, needs_of, refusal
from .common import Windows, check_inputs, group_heads


def flash_window_attention(
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
    """flash-attn window attention. q (B, H, Lq, D), k/v (B, H, Lk, D). Returns (B, H, Lq, D).
    Raises ValueError when it cannot serve the inputs."""
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    reason = refusal("flash", needs_of(q, k, v, sink_tokens, pos_scores, dropout_p, sink_logits))
    if reason:
        raise ValueError(f"flash backend: {reason}")
    return flash_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                            scale)


def flash_window_attention_unchecked(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                                     dropout_p=0.0, scale=None, sink_logits=None) -> torch.Tensor:
    """``flash_window_attention`` without the checks (``window_attention`` ran them, and
    :mod:`.capabilities`)."""
    flash_attn_func = flash_import()
    groups = group_heads(windows, k.shape[2])
    outs = []
    for (w, _), qg, kg, vg in zip(groups, groups.split(q, 1), groups.split(k, 1), groups.split(v, 1)):
        # flash-attn layout is (B, L, H, D)
        o = flash_attn_func(
            qg.transpose(1, 2),
            kg.transpose(1, 2),
            vg.transpose(1, 2),
            dropout_p=dropout_p,
            softmax_scale=scale,
            causal=True,
            window_size=(-1, -1) if w is None else (w - 1, 0),
        )
        outs.append(o.transpose(1, 2))
    return groups.merge(outs, 1)
