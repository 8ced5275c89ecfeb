"""How a Transformer-XL layer lays out its window groups in passes: a cost model.

A layer with several window groups (MSWA: 4) computes them in *passes*, each a run of consecutive
window groups with one memory projection (of the states its widest window reads), one position
table and one kernel call with per-head masks (``blocked``'s ``merge_heads``). One pass per group
(``grouped``) makes each head's work follow its window but pays a fixed cost per group; one pass
for all (``merged``) pays the fixed cost once but every head pays the largest window; the
partitions between (e.g. ``2+1+1``: the two smallest windows' groups together) trade the two.
Time of one pass is modelled as

    t = CALL_SECONDS + flops / FLOPS_PER_SECOND

with ``flops`` the forward + backward arithmetic the pass performs (the keys its kernel layout
touches, not only the visible ones); :func:`best_partition` picks the partition with the
smallest sum (``auto``).

The two constants are a least-squares fit (:func:`fit_constants`: each residual divided by the
layer's grouped time) of the measured difference to ``grouped`` of every partition of every
distinct MSWA layer alone, forward + backward, on a 2-core CPU (torch 2.13, 2 threads, freed
memory kept by ``fairseq_mswa.allocator``) at the shapes the project trains: the demo's (4 x 4,
d 128, segment 64, batch 16), the CPU tables' (d 64, segment 128, batch 8) and the paper's
(12 x 8, d 512, segments 512 and 2048, batch 1): 16 layers x 8 partitions, 7 interleaved reps
each (``bench_train.time_layouts``). With them ``auto`` picked the fastest measured partition in
6 of the 16 layers (the best few are within 1-5 % of each other, about the spread between
repetitions), and summed over the 16 layers its partitions took 1.041x the time of the fastest
measured ones (``grouped`` everywhere 1.051x, ``merged`` everywhere 1.274x). The committed run
``results/bench/train_cpu.json`` measured the same again: auto fastest in 8 of 16, 1.050x the
fastest's summed time, refit 0.76 ms per pass at 94 GFLOP/s (nearly the same product). Only the product
``CALL_SECONDS * FLOPS_PER_SECOND`` (the arithmetic one pass's fixed cost is worth) decides.
``scripts/bench_train.py`` measures the same layers in every run (its ``layouts`` section) and
reports how auto's layouts compare with the fastest and the constants that run's own data would
give (``layouts_refit``). The constants describe the CPU's dense / blocked layouts and decide
only those (``capabilities.plans_passes``: a layer on CPU with backend ``auto`` or ``blocked``):
on CUDA, and with flex anywhere, ``auto`` is one kernel call per layer (``merged``: with flex one
compiled graph per layer shape) until a GPU measurement says otherwise. To force a layout, pass
``strategy='grouped'``, ``'merged'`` or a
partition such as ``(2, 1, 1)`` to a layer to force one.
"""

import itertools
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from .blocked import default_block_size, merged_block_size
from .capabilities import cpu_auto_backend

CALL_SECONDS = 9.0e-4
FLOPS_PER_SECOND = 8.0e10


def _keys_touched(windows: Sequence[Optional[int]], length: int, keys: int) -> int:
    """Keys per query the CPU kernel layout of one pass over heads with ``windows`` computes
    scores for (``auto``'s CPU backend choice, ``capabilities.cpu_auto_backend``): one window, its own blocked layout; several,
    ``blocked``'s merged-heads layout (blocks of ``merged_block_size`` queries over the span of
    the largest window)."""
    reach = None if None in windows else max(windows)
    if reach is None or reach >= keys or cpu_auto_backend(length, keys) == "dense":
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


Partition = Tuple[int, ...]  # window groups per pass, in group order: (1, 1, 1, 1) grouped, (4,) merged


def compositions(n: int):
    """Every partition of ``n`` window groups into runs of consecutive groups (2 ** (n - 1))."""
    for cuts in itertools.product((False, True), repeat=n - 1):
        sizes, run = [], 1
        for cut in cuts:
            if cut:
                sizes.append(run)
                run = 1
            else:
                run += 1
        sizes.append(run)
        yield tuple(sizes)


def pass_windows(windows: Sequence[Optional[int]], sizes: Partition) -> List[List[Optional[int]]]:
    """The windows of each pass's heads (group order) when ``sizes`` cuts the window groups of
    ``windows`` into passes; raises ValueError when the sizes do not add up to the groups."""
    from .common import window_groups

    groups = window_groups(windows)
    if sum(sizes) != len(groups) or min(sizes, default=0) < 1:
        raise ValueError(f"partition {tuple(sizes)} does not cut the {len(groups)} window groups "
                         f"of {list(windows)} into passes (positive sizes adding up to {len(groups)})")
    out, start = [], 0
    for size in sizes:
        out.append([w for w, heads in groups[start:start + size] for _ in heads])
        start += size
    return out


def layout_seconds(windows: Sequence[Optional[int]], sizes: Partition, batch: int, length: int,
                   memory_len: int, head_dim: int) -> float:
    """Modelled seconds of the window-dependent part of one layer laid out as ``sizes``."""
    embed = head_dim * len(windows)
    return sum(CALL_SECONDS + pass_flops(p, batch, length, memory_len, head_dim, embed)
               / FLOPS_PER_SECOND for p in pass_windows(windows, sizes))


@lru_cache(maxsize=512)
def best_partition(windows: Tuple[Optional[int], ...], batch: int, length: int, memory_len: int,
                   head_dim: int) -> Partition:
    """The partition of the window groups into passes with the smallest modelled time (fewer
    passes on ties): what a layer's ``auto`` strategy uses."""
    from .common import window_groups

    n = len(window_groups(windows))
    return min(compositions(n), key=lambda sizes: (
        layout_seconds(windows, sizes, batch, length, memory_len, head_dim), len(sizes)))


def fit_constants(layers: Sequence[Dict]) -> Optional[Tuple[float, float]]:
    """``(CALL_SECONDS, FLOPS_PER_SECOND)`` fitted to measured layers, or None when the data
    cannot determine them (fewer than two differences, or a fit that is not positive).

    ``layers``: ``bench_train``'s ``layouts`` records, each with ``median_s``, ``passes`` and
    ``flops`` per measured layout (``grouped`` and the others). Least squares of every measured
    difference to the grouped layout, ``t_L - t_grouped = CALL * (passes_L - passes_grouped) +
    (flops_L - flops_grouped) / FLOPS``, each residual divided by the layer's grouped time (a layer
    of 10 ms and one of 1 s count alike)."""
    rows = []
    for x in layers:
        t, n, f = x["median_s"], x["passes"], x["flops"]
        w = 1.0 / t["grouped"]
        for key in t:
            if key != "grouped" and (n[key], f[key]) != (n["grouped"], f["grouped"]):
                rows.append((w * (n[key] - n["grouped"]), w * (f[key] - f["grouped"]),
                             w * (t[key] - t["grouped"])))
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
    constants sends to the layout that measured fastest of those measured."""
    hits = 0
    for x in layers:
        t, n, f = x["median_s"], x["passes"], x["flops"]
        model = {k: n[k] * call_seconds + f[k] / flops_per_second for k in t}
        hits += min(model, key=model.get) == min(t, key=t.get)
    return hits
