"""Which layout a Transformer-XL layer should use for its window groups: a cost model.

A layer with several window groups (MSWA: 4) can compute each group on its own (``grouped``:
each head's work follows its window, plus a fixed cost per group: its memory projection, position
table, kernel call and their backward) or all heads in one pass over the largest window
(``merged``: one fixed cost, every head pays the largest window). Time of one pass is modelled as

    t = CALL_SECONDS + flops / FLOPS_PER_SECOND

with ``flops`` the forward + backward arithmetic the pass performs (the keys its kernel layout
touches, not only the visible ones).

The two constants are a least-squares fit (each layer weighted by 1 / its grouped time) of the
measured difference ``t_merged - t_grouped`` of every distinct MSWA layer alone, forward +
backward, on a 2-core CPU (torch 2.13, 2 threads) at the shapes the project trains: the demo's
(4 x 4, d 128, segment 64, batch 16), the CPU tables' (d 64, segment 128, batch 8) and the paper's
(12 x 8, d 512, segments 512 and 2048, batch 1): 16 layers. ``scripts/bench_train.py`` measures
the same layers again in every run (its ``layouts`` section) and reports in how many of them this
model picks the faster layout; where it misses, the measured gap was small at the paper's shape
(< 3 ms of a ~1 s step) and 2.8 ms of one demo layer (about 4 % of the demo's step): the model
prices arithmetic and calls, not the memory-bound work on score tensors that separates those
layers. On other hardware pass ``strategy='grouped'`` or ``'merged'`` to a layer to force one.
"""

from typing import Optional, Sequence

from .blocked import default_block_size
from .window_attention import DENSE_MAX_SCORES

CALL_SECONDS = 3.8e-4
FLOPS_PER_SECOND = 2.2e11


def _keys_touched(window: Optional[int], length: int, keys: int) -> int:
    """Keys per query the CPU kernel layout computes scores for (``auto``'s backend choice)."""
    if window is None or window >= keys or length * keys <= DENSE_MAX_SCORES:
        return keys  # dense, or one block spanning every key
    bq = default_block_size(window)
    if bq >= length:
        return keys
    return bq + window - 1


def pass_flops(windows: Sequence[Optional[int]], batch: int, length: int, memory_len: int,
               head_dim: int, embed_dim: int) -> float:
    """Forward + backward FLOPs (x3 of forward) of one pass over heads that all use the layout
    of the largest of ``windows``: memory keys/values, position scores and attention."""
    reach = None if None in windows else max(windows)
    m = memory_len if reach is None else min(memory_len, reach - 1)
    keys = length + m
    num_dist = keys if reach is None else min(reach, keys)
    g = len(windows)
    touched = _keys_touched(reach, length, keys)
    fwd = 2 * batch * m * embed_dim * 2 * g * head_dim  # memory keys and values
    fwd += 2 * batch * length * num_dist * g * head_dim  # position scores
    fwd += 2 * 2 * batch * g * length * touched * head_dim  # q.k and p.v
    return 3.0 * fwd


def layer_seconds(windows: Sequence[Optional[int]], batch: int, length: int, memory_len: int,
                  head_dim: int, merged: bool) -> float:
    """Modelled seconds of the window-dependent part of one layer, merged or grouped."""
    from .common import window_groups

    embed = head_dim * len(windows)
    passes = [list(windows)] if merged else [[w] * len(h) for w, h in window_groups(windows)]
    return sum(CALL_SECONDS + pass_flops(p, batch, length, memory_len, head_dim, embed)
               / FLOPS_PER_SECOND for p in passes)


def prefer_merged(windows: Sequence[Optional[int]], batch: int, length: int, memory_len: int,
                  head_dim: int) -> bool:
    """True when one merged pass is modelled cheaper than one pass per window group."""
    return (layer_seconds(windows, batch, length, memory_len, head_dim, True)
            < layer_seconds(windows, batch, length, memory_len, head_dim, False))
