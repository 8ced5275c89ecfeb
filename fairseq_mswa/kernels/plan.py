"""Which layout a Transformer-XL layer should use for its window groups: a cost model.

A layer with several window groups (MSWA: 4) can compute each group on its own (``grouped``:
each head's work follows its window, plus a fixed cost per group: its memory projection, position
table, kernel call and their backward) or all heads in one pass over the largest window
(``merged``: one fixed cost, every head pays the largest window). Time of one pass is modelled as

    t = CALL_SECONDS + flops / FLOPS_PER_SECOND

with ``flops`` the forward + backward arithmetic the pass performs (the keys its kernel layout
touches, not only the visible ones).

The two constants are a least-squares fit (:func:`fit_constants`: each layer's residual divided
by its grouped time) of the measured difference ``t_merged - t_grouped`` of every distinct MSWA
layer alone, forward + backward, on a 2-core CPU (torch 2.13, 2 threads) at the shapes the
project trains: the demo's (4 x 4, d 128, segment 64, batch 16), the CPU tables' (d 64,
segment 128, batch 8) and the paper's (12 x 8, d 512, segments 512 and 2048, batch 1): 16 layers,
measured by ``bench_train.time_layouts`` (9 reps, medians) with ``merged`` as one kernel call
(``blocked``'s ``merge_heads``). That fit sends 13 of the 16 layers to the layout that measured
faster; the three it misses differ by 0.2-3 ms (two demo layers within their repetitions'
spread, and the CPU tables' last layer, whose merged span of 16-query blocks over window 128 is
slower than the arithmetic says). ``scripts/bench_train.py`` measures the same layers in every
run (its ``layouts`` section), reports how many of them this model picks right and the constants
that run's own data would give (``layouts_refit``). On other hardware pass
``strategy='grouped'`` or ``'merged'`` to a layer to force one.
"""

from typing import Dict, Optional, Sequence, Tuple

from .blocked import default_block_size, merged_block_size
from .window_attention import DENSE_MAX_SCORES

CALL_SECONDS = 8.2e-4
FLOPS_PER_SECOND = 4.0e10


def _keys_touched(windows: Sequence[Optional[int]], length: int, keys: int) -> int:
    """Keys per query the CPU kernel layout of one pass over heads with ``windows`` computes
    scores for (``auto``'s backend choice): one window, its own blocked layout; several,
    ``blocked``'s merged-heads layout (blocks of ``merged_block_size`` queries over the span of
    the largest window)."""
    reach = None if None in windows else max(windows)
    if reach is None or reach >= keys or length * keys <= DENSE_MAX_SCORES:
        return keys  # dense, or one block spanning every key
    bq = default_block_size(reach) if len(set(windows)) == 1 else merged_block_size(windows)
    if bq >= length:
        return keys
    return bq + reach - 1


def pass_flops(windows: Sequence[Optional[int]], batch: int, length: int, memory_len: int,
               head_dim: int, embed_dim: int) -> float:
    """Forward + backward FLOPs (x3 of forward) of one pass over heads that all use the layout
    of the largest of ``windows``: memory keys/values, position scores and attention."""
    reach = None if None in windows else max(windows)
    m = memory_len if reach is None else min(memory_len, reach - 1)
    keys = length + m
    num_dist = keys if reach is None else min(reach, keys)
    g = len(windows)
    touched = _keys_touched(windows, length, keys)
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


def fit_constants(layers: Sequence[Dict]) -> Optional[Tuple[float, float]]:
    """``(CALL_SECONDS, FLOPS_PER_SECOND)`` fitted to measured layers, or None when the data
    cannot determine them (fewer than two layers, or a fit that is not positive).

    ``layers``: ``bench_train``'s ``layouts`` records, each with ``median_s``, ``passes`` and
    ``flops`` for ``grouped`` and ``merged``. Least squares of the measured difference
    ``t_merged - t_grouped = CALL * (passes_m - passes_g) + (flops_m - flops_g) / FLOPS``, each
    layer's residual divided by its grouped time (a layer of 10 ms and one of 1 s count alike)."""
    rows = []
    for x in layers:
        t, n, f = x["median_s"], x["passes"], x["flops"]
        w = 1.0 / t["grouped"]
        rows.append((w * (n["merged"] - n["grouped"]), w * (f["merged"] - f["grouped"]),
                     w * (t["merged"] - t["grouped"])))
    if len(rows) < 2:
        return None
    s11 = sum(a * a for a, _, _ in rows)
    s12 = sum(a * b for a, b, _ in rows)
    s22 = sum(b * b for _, b, _ in rows)
    y1 = sum(a * y for a, _, y in rows)
    y2 = sum(b * y for _, b, y in rows)
    det = s11 * s22 - s12 * s12
    if det <= 0:
        return None
    call, inv_rate = (y1 * s22 - y2 * s12) / det, (s11 * y2 - s12 * y1) / det
    if call <= 0 or inv_rate <= 0:
        return None
    return call, 1.0 / inv_rate


def picks_faster(layers: Sequence[Dict], call_seconds: float, flops_per_second: float) -> int:
    """How many of ``layers`` (as :func:`fit_constants` takes them) the model with these
    constants sends to the layout that measured faster."""
    hits = 0
    for x in layers:
        t, n, f = x["median_s"], x["passes"], x["flops"]
        model = {k: n[k] * call_seconds + f[k] / flops_per_second for k in ("grouped", "merged")}
        hits += min(model, key=model.get) == min(t, key=t.get)
    return hits
