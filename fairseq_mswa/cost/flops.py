"""Needed FLOPs of one training step: the arithmetic the models *need*, kernel overheads aside.

FLOPs are 2 x multiply-adds; a training step is forward x 3 (the backward is twice the forward).
What is counted, per token of a segment (sequence) of ``seg`` tokens:

* every matrix product of the layers: Transformer-XL's segment Q/K/V/output projections, its
  memory keys/values and relative position encodings (``W_r``), the FFN (ReLU: 2 matrices; SwiGLU:
  3), ``linear_mswa``'s q/k (to ``feature_dim`` per head), v and output projections;
* softmax attention over the *visible* keys only: per head and query, ``min(w, keys before it)``
  keys (full heads: every earlier key, memory included), 2 x head_dim multiply-adds each (score
  and value), plus one more for Transformer-XL's position score;
* Taylor linear attention as its recurrence: per token and head the state (F x (head_dim + 1),
  F = 1 + d + d(d+1)/2 features) is written once and read once;
* the output layer (and the adaptive input's projections, see ``adaptive_io_macs``).

Norms, softmax exponentials, RoPE, activations and the optimizer are elementwise and left out.
Their ratio between two variants is the tokens/s ratio that equal hardware efficiency would give
(``scripts/bench_train.py`` reports it beside the measured one); times a token count it is the
compute of a training run (``python scripts/plan.py``, ``studies/plan.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..schedule import WindowSchedule, build_schedule

FLOPS_PER_MAC = 2
TRAIN_PASSES = 3  # forward + backward (twice the forward)

# scripts/bench_train.py's variants: fairseq's transformer_lm, and transformer_xl_mswa by pattern
XL_PATTERN = {"xl_full": "full", "xl_swa": "swa", "xl_mswa": "mswa"}


def _visible_keys(window: Optional[int], mem: int, seg: int) -> float:
    """Keys the ``seg`` queries of a head see in total: query t (0-based) sees ``mem + t + 1``
    keys, at most ``window`` (None = all)."""
    if window is None:
        return seg * (mem + (seg + 1) / 2)
    return float(sum(min(window, mem + t + 1) for t in range(seg)))


def xl_forward_macs(schedule: WindowSchedule, dim: int, ffn: int, seg: int,
                    full_mem: Optional[int] = None) -> float:
    """Multiply-adds of the ``transformer_xl_mswa`` layers on one segment at steady-state memory
    (output layer excluded). Layer i keeps its largest window - 1 states (the model's default
    ``--mem-len -1``) or ``full_mem`` (default ``seg``) when it has a full head; each head group
    projects only the memory its window reaches and gets position encodings for its own
    distances (``modules/xl_attention.py``)."""
    d = dim // schedule.num_heads
    full_mem = seg if full_mem is None else full_mem
    macs = 0.0
    for i in range(schedule.num_layers):
        top = schedule.max_window(i)
        mem = full_mem if top is None else top - 1
        macs += seg * dim * 4 * dim + 2 * seg * dim * ffn  # q, k, v, out of the segment; FFN
        for w in schedule.layer(i):
            m = mem if w is None else min(mem, w - 1)
            r = m + seg if w is None else w  # distances with a position encoding
            macs += m * dim * 2 * d  # this head's memory keys and values
            macs += r * dim * d  # its position encodings through W_r
            macs += 3 * _visible_keys(w, m, seg) * d  # content score, position score, value
    return macs


def linear_mswa_forward_macs(layer_kinds: str, schedule: Optional[WindowSchedule], dim: int,
                             ffn: int, heads: int, seg: int, feature_dim: int = 16) -> float:
    """Multiply-adds of the ``linear_mswa`` layers on one sequence of ``seg`` tokens (no cache;
    output layer excluded). ``layer_kinds``: one ``L`` (Taylor linear attention) or ``A``
    (softmax attention over ``schedule``'s next layer) per layer; SwiGLU FFN everywhere."""
    from . import taylor_feature_count

    d = dim // heads
    feats = taylor_feature_count(feature_dim)
    n_local = layer_kinds.count("A")
    if n_local and (schedule is None or schedule.num_layers != n_local):
        raise ValueError(f"the schedule must have one layer per 'A' ({n_local})")
    macs, local = 0.0, 0
    for kind in layer_kinds:
        macs += 3 * seg * dim * ffn  # SwiGLU: gate, value, out
        if kind == "L":
            macs += seg * dim * (2 * heads * feature_dim + 2 * dim)  # q, k (feature_dim), v, out
            macs += seg * heads * 2 * feats * (d + 1)  # state written and read per token
        elif kind == "A":
            macs += seg * dim * 4 * dim  # q, k, v, out
            macs += sum(2 * _visible_keys(w, 0, seg) * d for w in schedule.layer(local))
            local += 1
        else:
            raise ValueError(f"layer kind {kind!r}: use 'L' (linear) or 'A' (local attention)")
    return macs


def transformer_lm_forward_macs(layers: int, dim: int, ffn: int, seg: int) -> float:
    """Multiply-adds of fairseq's ``transformer_lm`` layers (causal, no memory) on one sequence."""
    per_layer = seg * dim * 4 * dim + 2 * seg * dim * ffn + 2 * seg * dim * (seg + 1) / 2
    return layers * per_layer


def adaptive_io_macs(dim: int, cutoffs: Sequence[int], vocab: int, factor: float = 4) -> float:
    """Multiply-adds per token of a tied adaptive input + adaptive softmax (fairseq's, as
    ``transformer_xl_mswa_wt103``): the input band's projection to ``dim`` (counted as band 0's,
    the largest), the softmax head (``cutoffs[0]`` words + one entry per tail cluster), and every
    tail cluster (projection to ``dim / factor**(i+1)``, then its words). Training runs a tail
    only for the tokens whose target is in it, so counting every tail for every token is an upper
    bound."""
    bounds = list(cutoffs) + [vocab]
    macs = dim * dim + dim * (bounds[0] + len(cutoffs))
    for i in range(len(cutoffs)):
        hidden = int(dim // factor ** (i + 1))
        macs += dim * hidden + hidden * (bounds[i + 1] - bounds[i])
    return macs


def train_flops(forward_macs: float, output_macs_per_token: float, seg: int) -> float:
    """FLOPs of one training step on one segment: (layers + output layer) x 2 x 3."""
    return TRAIN_PASSES * FLOPS_PER_MAC * (forward_macs + seg * output_macs_per_token)


def step_flops(variant: str, shape: dict, seg: int, vocab: int) -> float:
    """FLOPs of one training step on one segment of ``scripts/bench_train.py``'s variants
    (``transformer_lm``, ``xl_full`` with memory = segment, ``xl_swa``, ``xl_mswa``) at
    ``shape`` (layers, dim, ffn, heads, base_window) with a plain ``vocab``-word output layer."""
    e, f, n = shape["dim"], shape["ffn"], shape["layers"]
    if variant == "transformer_lm":
        body = transformer_lm_forward_macs(n, e, f, seg)
    else:
        pattern = XL_PATTERN[variant]
        sched = build_schedule(n, shape["heads"], shape["base_window"], pattern)
        body = xl_forward_macs(sched, e, f, seg)
    return train_flops(body, e * vocab, seg)
