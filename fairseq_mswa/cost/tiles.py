"""Tile-granular attention work: what a block-sparse GPU kernel computes, per tile shape.

GPU attention kernels (FlexAttention's Triton kernel, flash-attn) do not compute per key: they
compute (query block x key block) *tiles*, and a tile holding one visible key costs a whole tile.
This module counts that work exactly, in pure Python (no torch, no fairseq at import).

Units: a *pair* is one (query, key) score. Tile work is in pairs **per batch row, summed over the
heads** of a call (times the batch for a step); ``tile_work = non-empty tiles x q_block x k_block``.
A tile shape is ``(q_block, kv_block)``, the order of FlexAttention's
``create_block_mask(..., BLOCK_SIZE=(q_block, kv_block))``.

Visibility is FlexAttention's mask in ``kernels/flex.py`` (``_mask_mod``): with ``memory`` keys
before the segment (``Lk = segment + memory``), query ``i`` sits at key position ``i + memory``
and sees key ``j`` when ``0 <= i + memory - j < w`` or (``j < sinks`` and ``j <= i + memory``);
a full head (``None``) sees every ``j <= i + memory``. The tiles counted are the non-empty blocks
(partial + full) of the block mask torch builds for that ``mask_mod`` (tests/test_tiles.py checks
the equality against ``create_block_mask`` on CPU); a last partial block counts as a whole tile
(the kernel computes it padded).

Memory, as ``mswa_lm`` keeps it: a layer holds ``M`` = its largest window - 1 memory states, and
the Transformer-XL layer computes its window groups in *passes* (runs of consecutive groups,
``modules/xl_attention.py``); a pass's kernel call sees the last ``min(M, reach - 1)`` of them,
``reach`` = the pass's largest window (:func:`pass_memory`). At the paper's shapes the MSWA / SWA
ratios are the same for every partition (memory alignment moves no tile there; the tests check
grouped against merged).

Why MSWA loses on large tiles: with the memory slice ``w - 1`` a head's query block
``[a, a + bq)`` sees the keys ``[a, a + bq + w - 2]``: ``ceil((bq + w - 1) / bk)`` key blocks, so
its work per query is about ``bq + w`` rounded up to the key block, not ``w``. Every head pays
its query block: with 128 x 128 tiles a window of 8 costs as much as a window of 128 (2 tiles),
and no head with ``w >= 2`` costs less than SWA's 128 - the floor that puts MSWA at 1.156 there.

Below: :func:`head_tiles` (one head), :func:`call_tile_work` (one kernel call),
:func:`layer_tile_work` (a layer's passes), :func:`schedule_tile_work` (a model),
:func:`tile_efficiency` and :func:`choose_tiles` (per-pass tile shapes: the plan a GPU run
settles), and the CPU kernel's and the decoder's accounting (:func:`blocked_layer_scores`,
:func:`decode_kv_bytes`). ``python -m fairseq_mswa.cost --tiles`` prints the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..schedule import Window, WindowSchedule, build_schedule

TileShape = Tuple[int, int]  # (q_block, kv_block): FlexAttention's BLOCK_SIZE order
Partition = Tuple[int, ...]  # window groups per pass, in group order: (1, 1, 1, 1) = grouped

# The tile shapes the issue tabulates; (1, 1) is the per-key count (the paper's cost).
PAPER_TILES: Tuple[TileShape, ...] = ((128, 128), (128, 64), (64, 64), (64, 32), (32, 32),
                                      (16, 16), (1, 1))
# Shapes a tensor-core kernel can run: Triton's tl.dot needs every dimension >= 16.
GPU_TILES: Tuple[TileShape, ...] = tuple(t for t in PAPER_TILES if min(t) >= 16)
PAPER_SEGMENTS = (512, 2048)
# The paper's language-model setup (B.2.1): 16,384 tokens per step on Wikitext-103.
PAPER_TOKENS_PER_STEP = 16384
PAPER_SHAPE = dict(num_layers=12, num_heads=8, base_window=128, head_dim=64)


class TileError(ValueError):
    """Arguments the tile model cannot count; the message names the fix."""


def _check_tile(tile: TileShape) -> TileShape:
    if (not isinstance(tile, (tuple, list)) or len(tile) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in tile)):
        raise TileError(f"tile shape {tile!r} must be (q_block, kv_block), two integers >= 1, "
                        "e.g. (128, 64)")
    return int(tile[0]), int(tile[1])


def _check_lengths(segment: int, memory: int) -> None:
    if not isinstance(segment, int) or segment < 1:
        raise TileError(f"segment {segment!r} must be an integer >= 1 (queries per call)")
    if not isinstance(memory, int) or memory < 0:
        raise TileError(f"memory {memory!r} must be an integer >= 0 (keys before the segment)")


# --- counting ------------------------------------------------------------------------------------

def head_tiles(segment: int, memory: int, window: Window, tile: TileShape, sinks: int = 0) -> int:
    """Non-empty (query-block, key-block) tiles of one head.

    ``segment`` queries over ``segment + memory`` keys (query ``i`` at key position
    ``i + memory``), window ``window`` keys ending at the query (None = full causal), the first
    ``sinks`` keys visible to every later query, ``tile = (q_block, kv_block)``. Exact: per query
    block the visible keys are one interval (the windows of consecutive queries overlap) plus the
    sink interval, and a key block is non-empty iff it meets one of them."""
    bq, bk = _check_tile(tile)
    _check_lengths(segment, memory)
    if window is not None and (not isinstance(window, int) or window < 1):
        raise TileError(f"window {window!r} must be an integer >= 1 or None (full attention)")
    lk = segment + memory
    w = lk + 1 if window is None else window
    total = 0
    for a in range(0, segment, bq):
        last = min(a + bq, segment) - 1 + memory  # key position of the block's last query
        lo, hi = max(0, a + memory - w + 1), last
        blocks = hi // bk - lo // bk + 1
        s_hi = min(sinks, lk, last + 1) - 1  # last sink key some query of the block sees
        if s_hi >= 0:
            s_blocks = s_hi // bk + 1
            overlap = max(0, min(hi // bk, s_hi // bk) - lo // bk + 1)
            blocks += s_blocks - overlap
        total += blocks
    return total


def call_tile_work(windows: Sequence[Window], segment: int, memory: int, tile: TileShape,
                   sinks: int = 0) -> int:
    """Tile work (pairs per batch row) of one FlexAttention call over heads with ``windows``
    that share ``memory`` keys before the segment: sum over heads of non-empty tiles x tile area."""
    bq, bk = _check_tile(tile)
    return sum(head_tiles(segment, memory, w, tile, sinks) for w in windows) * bq * bk


def visible_pairs(windows: Sequence[Window], segment: int, memory: int, sinks: int = 0) -> int:
    """Visible (query, key) pairs per batch row of one call: the per-key work (1 x 1 tiles)."""
    return call_tile_work(windows, segment, memory, (1, 1), sinks)


def window_groups(windows: Sequence[Window]) -> List[Tuple[Window, int]]:
    """[(window, heads)] in order of first appearance: the kernels' window groups
    (``kernels.common.window_groups``, which keeps the head indices)."""
    out: Dict[Window, int] = {}
    for w in windows:
        out[w] = out.get(w, 0) + 1
    return list(out.items())


def pass_windows(windows: Sequence[Window], partition: Partition) -> List[List[Window]]:
    """The heads' windows of each pass when ``partition`` cuts the window groups of ``windows``
    (in order of first appearance) into runs of consecutive groups."""
    groups = window_groups(windows)
    if (not partition or sum(partition) != len(groups)
            or any(not isinstance(n, int) or n < 1 for n in partition)):
        raise TileError(f"partition {tuple(partition)} does not cut the {len(groups)} window "
                        f"groups of {list(windows)}: give positive sizes adding up to "
                        f"{len(groups)}, e.g. {(1,) * len(groups)} (grouped) or ({len(groups)},)")
    out, start = [], 0
    for size in partition:
        out.append([w for w, n in groups[start:start + size] for _ in range(n)])
        start += size
    return out


def pass_memory(windows: Sequence[Window], memory: int) -> int:
    """Memory keys a pass's call sees: the last ``reach - 1`` of the layer's ``memory``
    (``reach`` = the pass's largest window; all of it for a full head), as the XL layer slices."""
    if any(w is None for w in windows):
        return memory
    return min(memory, max(windows) - 1)


def _partition(windows: Sequence[Window], partition: Union[str, Partition]) -> Partition:
    n = len(window_groups(windows))
    if partition == "grouped":
        return (1,) * n
    if partition == "merged":
        return (n,)
    if isinstance(partition, str):
        raise TileError(f"unknown partition {partition!r}: use 'grouped', 'merged' or a tuple "
                        "of window groups per pass such as (2, 1, 1)")
    return tuple(partition)


def layer_tile_work(windows: Sequence[Window], segment: int, memory: int,
                    tiles: Union[TileShape, Sequence[TileShape]],
                    partition: Union[str, Partition] = "grouped", sinks: int = 0) -> int:
    """Tile work (pairs per batch row) of one layer whose window groups run in the passes of
    ``partition`` (``'grouped'``, ``'merged'`` or sizes), each pass one call over
    :func:`pass_memory` keys of the layer's ``memory``. ``tiles``: one shape for every pass, or
    one per pass."""
    passes = pass_windows(windows, _partition(windows, partition))
    if len(tiles) == 2 and all(isinstance(x, int) for x in tiles):
        tiles = [tiles] * len(passes)
    if len(tiles) != len(passes):
        raise TileError(f"{len(tiles)} tile shapes for {len(passes)} passes: give one shape, "
                        "or one per pass")
    return sum(call_tile_work(ws, segment, pass_memory(ws, memory), t, sinks)
               for ws, t in zip(passes, tiles))


def layer_memory(schedule: WindowSchedule, layer: int, segment: int) -> int:
    """Memory states ``mswa_lm`` keeps for ``layer``: its largest window - 1 (a layer with a full
    head keeps one segment, Transformer-XL's default)."""
    reach = schedule.max_window(layer)
    return segment if reach is None else reach - 1


def schedule_tile_work(schedule: WindowSchedule, segment: int, tile: TileShape,
                       partition: Union[str, Partition] = "grouped",
                       memory: Optional[int] = None) -> int:
    """Tile work (pairs per batch row) of every layer of ``schedule`` at one tile shape;
    ``memory`` None = each layer's :func:`layer_memory` (``memory=0``: a model without memory)."""
    total = 0
    for i, layer in enumerate(schedule.windows):
        mem = layer_memory(schedule, i, segment) if memory is None else memory
        total += layer_tile_work(layer, segment, mem, tile, partition, schedule.sink_tokens)
    return total


def tile_ratio(schedule: WindowSchedule, reference: WindowSchedule, segment: int,
               tile: TileShape, partition: Union[str, Partition] = "grouped") -> float:
    """Tile work of ``schedule`` over that of ``reference`` at one tile shape (e.g. MSWA / SWA)."""
    return (schedule_tile_work(schedule, segment, tile, partition)
            / schedule_tile_work(reference, segment, tile, partition))


def paper_schedules(base_window: int = 128) -> Tuple[WindowSchedule, WindowSchedule]:
    """(MSWA, SWA) of the paper's 12 x 8 model at ``base_window``."""
    s = PAPER_SHAPE
    return (build_schedule(s["num_layers"], s["num_heads"], base_window, "mswa"),
            build_schedule(s["num_layers"], s["num_heads"], base_window, "swa"))


# --- the rate of a tile shape (assumptions, to be measured) --------------------------------------

# Tile time model: one tile costs  q_block * kv_block + Q_OVERHEAD * kv_block + KV_OVERHEAD *
# q_block  pair-times. The first term is the tensor-core work; Q_OVERHEAD * kv_block is work per
# key row of the tile (loading K and V, amortised over the tile's queries); KV_OVERHEAD * q_block
# is work per query row (the online softmax's row max / rescale of the accumulator, the loop and
# the block-index load per key block).
#   KV_OVERHEAD = 16: the accumulator rescale alone is q_block * head_dim multiplies on CUDA cores
#     per tile against 2 * q_block * kv_block * head_dim tensor-core FLOPs; at H100's 67 TFLOP/s
#     FP32 against 989 TFLOP/s dense BF16 that is worth 7.4 / kv_block of the tile: doubled for
#     the row reductions, the loop and the sparse-index loads (an assumption).
#   Q_OVERHEAD = 64: then fitted to the one public timing of two tile shapes of equal area that
#     we found: flash-attn 2's hdim-64 forward notes "Using block size (64 x 256) is 27% slower
#     for seqlen=2k" than its 128 x 128 (flash_fwd_launch_template.h, run_mha_fwd_hdim64):
#     (1 + 64/64 + 16/256) / (1 + 64/128 + 16/128) = 1.269.
# Anchors read in torch 2.13's source and flash-attn 2's: FlexAttention's Triton forward default
# for bf16, head dim 64 on H100 is BLOCK_M x BLOCK_N = 128 x 128 (128 x 64 for head dim 128;
# torch/_inductor/template_heuristics/triton.py, h100_default_flex_config), its backward
# 64 x 128 / 128 x 64 (sm90); flash-attn 2 runs 128 x 128 (hdim 64) and 128 x 64 (hdim 128)
# forward tiles. Kernels pick the largest tiles their registers allow: the model makes larger
# tiles faster per pair and is capped by the shapes offered (GPU_TILES, none above 128).
# NOT MEASURED: `bench_attention.py --tile-sweep --device cuda` times every shape; refit these.
Q_OVERHEAD = 64
KV_OVERHEAD = 16
REFERENCE_TILE: TileShape = (128, 128)


def tile_efficiency(tile: TileShape) -> float:
    """Modelled rate per pair of ``tile`` relative to 128 x 128 tiles (1.0); see the constants
    above: ``(1 + Q/128 + K/128) / (1 + Q/q_block + K/kv_block)``, Q = ``Q_OVERHEAD``,
    K = ``KV_OVERHEAD``. An assumption to be measured, not a measurement."""
    bq, bk = _check_tile(tile)
    rq, rk = REFERENCE_TILE
    return (1 + Q_OVERHEAD / rq + KV_OVERHEAD / rk) / (1 + Q_OVERHEAD / bq + KV_OVERHEAD / bk)


# Per-pass overhead: a pass is one more set of kernel launches (flex forward; its backward's
# preprocessing and main kernels; the pass's memory K/V projection and position scores, forward
# and backward: about 10 launches) at a few microseconds each. ASSUMPTION, to be settled by a GPU
# measurement (the tile sweep times grouped against merged passes at equal tiles).
PASS_SECONDS = 30e-6
# Attention FLOP rate at 128 x 128 tiles, forward + backward: 40 % of H100 SXM's 989 TFLOP/s dense
# BF16 (an assumption; the sweep measures it).
TILE_FLOPS_PER_SECOND = 400e12
TRAIN_PASSES = 3  # forward + backward = 3 x forward, as cost/flops.py counts a training step


def pair_flops(head_dim: int) -> int:
    """FLOPs of one (query, key) pair in a training step: q.k and p.v (2 x head_dim multiply-adds,
    4 x head_dim FLOPs) forward, x 3 with the backward."""
    return TRAIN_PASSES * 4 * head_dim


@dataclass(frozen=True)
class PassPlan:
    """One pass of a :class:`TilePlan`: its heads' windows, the memory keys its call sees, its tile
    shape, its tile work (pairs per batch row) and modelled seconds (for the whole batch)."""

    windows: Tuple[Window, ...]
    groups: int
    memory: int
    tile: TileShape
    tile_work: int
    seconds: float


@dataclass(frozen=True)
class TilePlan:
    """How a layer's window groups run: passes in group order, each with its tile shape."""

    passes: Tuple[PassPlan, ...]
    assumptions: Dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def partition(self) -> Partition:
        return tuple(p.groups for p in self.passes)

    @property
    def tiles(self) -> Tuple[TileShape, ...]:
        return tuple(p.tile for p in self.passes)

    @property
    def tile_work(self) -> int:
        return sum(p.tile_work for p in self.passes)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)


def choose_tiles(windows: Sequence[Window], segment: int, memory: int,
                 tiles: Sequence[TileShape] = GPU_TILES, *, batch: int = 1, head_dim: int = 64,
                 sinks: int = 0, pass_seconds: float = PASS_SECONDS,
                 flops_per_second: float = TILE_FLOPS_PER_SECOND,
                 efficiency: Callable[[TileShape], float] = tile_efficiency) -> TilePlan:
    """The passes and per-pass tile shapes with the smallest modelled time for one layer.

    Args:
        windows: one window per head (None = full), the layer's heads in any order; its window
            groups (order of first appearance) are cut into passes of consecutive groups.
        segment: queries per call; memory: the layer's memory states (each pass sees
            :func:`pass_memory` of them).
        tiles: allowed ``(q_block, kv_block)`` shapes (default :data:`GPU_TILES`).
        batch, head_dim: a step's batch rows and the head dimension (they scale the tile work
            into seconds against the per-pass overhead).
        sinks: sink keys (FlexAttention's ``kv_idx < sinks``).
        pass_seconds: fixed cost of one pass (:data:`PASS_SECONDS`, an assumption).
        flops_per_second: attention FLOP rate at 128 x 128 tiles (an assumption).
        efficiency: rate per pair of a tile shape relative to 128 x 128 (:func:`tile_efficiency`).

    Model: a pass costs ``pass_seconds + batch * tile_work * pair_flops(head_dim) /
    (flops_per_second * efficiency(tile))``; each pass takes its best allowed shape, and the
    partition minimising the sum wins (fewer passes, then larger tiles on ties). Exhaustive over
    the ``2 ** (groups - 1)`` partitions (8 for MSWA's 4 groups). Returns a :class:`TilePlan`
    (``.partition``, ``.tiles``, ``.tile_work``, ``.seconds``, ``.passes``).
    """
    if not tiles:
        raise TileError("choose_tiles needs at least one allowed tile shape, e.g. GPU_TILES")
    tiles = [_check_tile(t) for t in tiles]
    _check_lengths(segment, memory)
    if batch < 1 or head_dim < 1 or pass_seconds < 0 or flops_per_second <= 0:
        raise TileError(f"need batch >= 1, head_dim >= 1, pass_seconds >= 0 and "
                        f"flops_per_second > 0; got {batch}, {head_dim}, {pass_seconds}, "
                        f"{flops_per_second}")
    seconds_per_pair = batch * pair_flops(head_dim) / flops_per_second
    groups = window_groups(windows)
    n = len(groups)
    best_pass: Dict[Tuple[int, int], PassPlan] = {}

    def best(start: int, stop: int) -> PassPlan:  # groups[start:stop] as one pass
        key = (start, stop)
        if key not in best_pass:
            ws = tuple(w for w, c in groups[start:stop] for _ in range(c))
            mem = pass_memory(ws, memory)
            options = []
            for t in tiles:
                work = call_tile_work(ws, segment, mem, t, sinks)
                secs = pass_seconds + work * seconds_per_pair / efficiency(t)
                options.append((secs, -t[0] * t[1], PassPlan(ws, stop - start, mem, t, work, secs)))
            best_pass[key] = min(options, key=lambda o: o[:2])[2]
        return best_pass[key]

    # shortest path over cut points: plan[i] = best plan of groups[:i]
    plan: List[Optional[Tuple[float, int, Tuple[PassPlan, ...]]]] = [(0.0, 0, ())] + [None] * n
    for stop in range(1, n + 1):
        for start in range(stop):
            secs, count, passes = plan[start]
            p = best(start, stop)
            cand = (secs + p.seconds, count + 1, passes + (p,))
            if plan[stop] is None or cand[:2] < plan[stop][:2]:
                plan[stop] = cand
    assumptions = dict(pass_seconds=pass_seconds, flops_per_second=flops_per_second,
                       q_overhead=Q_OVERHEAD, kv_overhead=KV_OVERHEAD, batch=batch,
                       head_dim=head_dim)
    return TilePlan(plan[n][2], assumptions)


def chosen_schedule_work(schedule: WindowSchedule, segment: int,
                         tiles: Sequence[TileShape] = GPU_TILES, batch: int = 1,
                         head_dim: int = 64, **kwargs) -> Tuple[int, float, List[TilePlan]]:
    """(tile work per batch row, modelled seconds, plan per layer) of ``schedule`` with every
    layer at :func:`choose_tiles`' plan (memory: :func:`layer_memory`)."""
    plans = [choose_tiles(layer, segment, layer_memory(schedule, i, segment), tiles, batch=batch,
                          head_dim=head_dim, sinks=schedule.sink_tokens, **kwargs)
             for i, layer in enumerate(schedule.windows)]
    return sum(p.tile_work for p in plans), sum(p.seconds for p in plans), plans


# --- decoding ------------------------------------------------------------------------------------

def decode_kv_bytes(windows: Sequence[Window], position: int, head_dim: int = 64,
                    dtype_bytes: int = 2, sinks: int = 0) -> int:
    """Bytes of keys and values one decoding step reads from a layer's ``WindowKVCache`` for the
    token at ``position`` (0-based), batch row 1: per head the ``min(w, position + 1)`` keys its
    ring holds (all visible: ``_decode_pieces`` hands over the ring, or its filled prefix, with no
    mask) plus the sinks outside the window, ``min(sinks, position - w + 1)``; a full head reads
    every earlier key. Each key and value is ``head_dim * dtype_bytes`` bytes."""
    if position < 0:
        raise TileError(f"position {position} must be >= 0")
    keys = 0
    for w in windows:
        if w is None:
            keys += position + 1
        else:
            keys += min(w, position + 1) + max(0, min(sinks, position - w + 1))
    return 2 * keys * head_dim * dtype_bytes


# --- tables --------------------------------------------------------------------------------------

def paper_tile_table(segments: Sequence[int] = PAPER_SEGMENTS,
                     tiles: Sequence[TileShape] = PAPER_TILES) -> List[Dict]:
    """MSWA / SWA tile work of the paper's 12 x 8 model (base 128, memory = each layer's largest
    window - 1) per segment and tile shape, with both schedules' tile work (pairs per batch row)."""
    mswa, swa = paper_schedules()
    rows = []
    for seg in segments:
        for t in tiles:
            m, s = schedule_tile_work(mswa, seg, t), schedule_tile_work(swa, seg, t)
            rows.append({"segment": seg, "tile": list(t), "mswa_tile_work": m,
                         "swa_tile_work": s, "mswa_over_swa": m / s})
    return rows


def table_tile_rows(table: int, segment: int = 512,
                    tiles: Sequence[TileShape] = PAPER_TILES) -> List[Dict]:
    """Rows of the paper's Table 2, 5 or 6 (``cost.table_rows``) at tile granularity: tile work
    of each row relative to the reference row (12 x 8 MSWA, base 128) at the same tile shape, at
    ``segment`` with memory (full-attention rows: their ``n`` queries, no memory)."""
    from . import NUM_HEADS, NUM_LAYERS, REFERENCE, table_rows

    if table not in (2, 5, 6):
        raise TileError(f"no tile table {table}: use 2, 5 or 6 (Table 3 has linear layers)")
    ref = build_schedule(NUM_LAYERS, NUM_HEADS, **REFERENCE)
    ref_work = {t: schedule_tile_work(ref, segment, t) for t in tiles}
    out = []
    for r in table_rows(table):
        sched = build_schedule(NUM_LAYERS, NUM_HEADS, r.base_window, r.pattern, r.variation)
        if r.seq_len is not None:
            work = {t: schedule_tile_work(sched, r.seq_len, t, memory=0) for t in tiles}
        else:
            work = {t: schedule_tile_work(sched, segment, t) for t in tiles}
        out.append({"table": table, "row": r.row, "setting": r.setting,
                    "paper_relative_cost": r.paper_relative_cost,
                    "relative_cost": r.relative_cost,
                    "relative_tile_work": {f"{t[0]}x{t[1]}": work[t] / ref_work[t] for t in tiles}})
    return out


def tile_label(tile: TileShape) -> str:
    return f"{tile[0]}x{tile[1]}"


__all__ = [
    "GPU_TILES", "PAPER_TILES", "PASS_SECONDS", "PassPlan", "TileError", "TilePlan",
    "call_tile_work", "choose_tiles",
    "chosen_schedule_work", "decode_kv_bytes", "head_tiles", "layer_memory", "layer_tile_work",
    "paper_schedules", "paper_tile_table", "pass_memory", "pass_windows", "schedule_tile_work",
    "table_tile_rows", "tile_efficiency", "tile_label", "tile_ratio", "visible_pairs",
    "window_groups",
]
