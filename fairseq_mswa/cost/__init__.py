"""Relative cost of the rows of the MSWA paper's Tables 2, 3, 5 and 6; in ``flops`` the needed
FLOPs of a training step, in ``tiles`` the work of tiled GPU kernels and the tile shapes to run
(the tables' compute at paper scale is a study: ``studies/plan.py``).

    python -m fairseq_mswa.cost --table 2          # Markdown-ish table
    python -m fairseq_mswa.cost --table 5 --json   # JSON list of {row, relative_cost, ...}
    python -m fairseq_mswa.cost --tiles            # MSWA / SWA work on tiled kernels per tile shape

Cost of a model = sum over all softmax-attention heads of all layers of the keys a query attends
to (``WindowSchedule.cost``; full attention counts the sequence length ``n``) plus, for hybrid
models, ``linear_attention_layer_cost()`` per linear-attention layer. Relative cost = cost / cost of
the reference row (the 12-layer, 8-head MSWA with base window 128: 10800).

How the paper's two-decimal values are read (checked by tests/test_cost.py):

* Tables 2, 5, 6 are *rounded*: SWA w=128 is 12288 / 10800 = 1.1378 -> "1.14" (truncation would
  give 1.13), MSWA-h 11520 / 10800 = 1.0667 -> "1.07".
* Table 3 is *truncated*: with one linear layer costing C, rounding would need
  C in [616.5, 625.5) for "Linear Attention 0.69" (12 C / 10800) but C in [584.5, 611.5) for
  "Linear Attention + SWA 0.98" ((4 C + 8192) / 10800): no C fits both. Truncation needs
  C in [621, 625); the derived C = 8 x 153 x 65 / 128 = 621.6 gives 0.6906, 0.9887, 0.8969 ->
  0.69, 0.98, 0.89.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from ..schedule import WindowSchedule, build_schedule
from ..taylor import taylor_feature_count  # noqa: F401  (public here too: cost.taylor_feature_count)

NUM_LAYERS = 12
NUM_HEADS = 8
HEAD_DIM = 64
FEATURE_DIM = 16
REFERENCE = dict(pattern="mswa", base_window=128)  # the paper's "1.00" row of Tables 2, 3, 5


# --- cost of non-softmax layers --------------------------------------------------------------

def linear_attention_layer_cost(
    num_heads: int = 8, head_dim: int = 64, feature_dim: int = 16
) -> float:
    """Cost of one linear-attention layer in the unit of ``WindowSchedule.cost`` (KV-cache tokens).

    A softmax head keeps one key and one value (2 x head_dim numbers) per attended token. A
    linear-attention head keeps a recurrent state of F x head_dim numbers plus an F-entry
    normaliser, with F the compact Taylor feature count. Per layer:
    ``num_heads * F * (head_dim + 1) / (2 * head_dim)`` token-equivalents = 621.6 for 8 heads,
    d = 16, head_dim = 64. Time per token scales the same way (F x (head_dim + 1) multiply-adds
    against 2 x head_dim per attended key), so one number serves both as in Table 2.
    """
    f = taylor_feature_count(feature_dim, compact=True)
    return num_heads * f * (head_dim + 1) / (2 * head_dim)


@dataclass
class Row:
    table: int
    row: str
    setting: str  # the paper's "Length Setting" column, derived from the schedule
    cost: float
    relative_cost: float
    paper_relative_cost: Optional[float]
    pattern: str
    base_window: Optional[int]
    variation: str = "geometric"
    layer_pattern: Optional[str] = None  # Table 3: L = linear attention, A = softmax attention
    seq_len: Optional[int] = None  # for full attention rows


def hybrid_cost(
    layer_pattern: str,
    schedule: Optional[WindowSchedule],
    seq_len: Optional[int] = None,
    num_heads: int = NUM_HEADS,
    head_dim: int = HEAD_DIM,
    feature_dim: int = FEATURE_DIM,
) -> float:
    """Cost of a model whose layers are ``L`` (linear attention) or ``A`` (softmax attention,
    windowed by ``schedule``, which has one layer per ``A``)."""
    n_local = layer_pattern.count("A")
    n_linear = layer_pattern.count("L")
    if n_local + n_linear != len(layer_pattern):
        raise ValueError(f"layer pattern {layer_pattern!r} may only hold 'L' and 'A'")
    if n_local and (schedule is None or schedule.num_layers != n_local):
        raise ValueError(f"the schedule must have one layer per 'A' ({n_local})")
    local = schedule.cost(seq_len) if n_local else 0
    return local + n_linear * linear_attention_layer_cost(num_heads, head_dim, feature_dim)


def reference_cost() -> int:
    return build_schedule(NUM_LAYERS, NUM_HEADS, **REFERENCE).cost()


def _setting(schedule: WindowSchedule, seq_len: Optional[int]) -> str:
    lo, hi = schedule.window_range()
    if lo is None:
        return f"n = {seq_len}"
    if lo == hi:
        return f"w = {lo}"
    return f"w_ij from {lo} to {hi}"


def _row(table, name, pattern, base_window=None, variation="geometric", seq_len=None,
         layer_pattern=None, paper=None, head_variation=None) -> Row:
    n_layers = layer_pattern.count("A") if layer_pattern else NUM_LAYERS
    if n_layers:
        schedule = build_schedule(n_layers, NUM_HEADS, base_window, pattern, variation,
                                  head_variation=head_variation)
        setting = _setting(schedule, seq_len)
    else:
        schedule, setting = None, "linear only"
    if layer_pattern:
        cost = hybrid_cost(layer_pattern, schedule, seq_len)
    else:
        cost = schedule.cost(seq_len)
    return Row(table, name, setting, cost, cost / reference_cost(), paper, pattern,
               base_window, variation, layer_pattern, seq_len)


LAA = "LAA" * 4


def table_rows(table: int) -> List[Row]:
    """Rows of the paper's table ``table`` with our cost model and the paper's Relative Cost."""
    if table == 2:
        return [
            _row(2, "Standard Self-Attention (n=1024)", "full", seq_len=1024, paper=9.10),
            _row(2, "Standard Self-Attention (n=2048)", "full", seq_len=2048, paper=18.20),
            _row(2, "SWA", "swa", 128, paper=1.14),
            _row(2, "MSWA-h", "mswa-h", 128, paper=1.07),
            _row(2, "MSWA-l", "mswa-l", 128, paper=1.07),
            _row(2, "MSWA", "mswa", 128, paper=1.00),
        ]
    if table == 3:
        return [
            _row(3, "Transformer", "full", seq_len=2048, layer_pattern="A" * 12, paper=18.20),
            _row(3, "Linear Attention", "full", layer_pattern="L" * 12, paper=0.69),
            _row(3, "Linear Attention + SWA", "swa", 128, layer_pattern=LAA, paper=0.98),
            _row(3, "Linear Attention + MSWA", "mswa", 128, layer_pattern=LAA, paper=0.89),
            _row(3, "MSWA", "mswa", 128, layer_pattern="A" * 12, paper=1.00),
        ]
    if table == 5:
        rows = []
        for w, swa_paper, mswa_paper in ((512, 4.55, 4.00), (256, 2.28, 2.00),
                                         (128, 1.14, 1.00), (64, 0.57, 0.50)):
            rows.append(_row(5, f"SWA (w={w})", "swa", w, paper=swa_paper))
            rows.append(_row(5, f"MSWA (base {w})", "mswa", w, paper=mswa_paper))
        return rows
    if table == 6:
        # The copy of the paper in shared/ lacks Table 6's values: the paper's column is unknown.
        return [
            _row(6, "MSWA (geometric)", "mswa", 128, "geometric"),
            _row(6, "Decreasing for Deeper Layer", "mswa", 128, "decreasing"),
            _row(6, "Arithmetic Progression", "mswa", 128, "arithmetic"),
        ]
    raise ValueError(f"no table {table}: use 2, 3, 5 or 6")


# The paper's arithmetic example (Table 6) gives the layer windows only (base 128 -> 64, 96, 128,
# 160). Two readings of how the heads of a layer split its window; the first is what
# --window-variation arithmetic builds (and what table_rows(6) runs).
ARITHMETIC_READINGS = (
    ("layers+heads x 1/2..5/4 (used)", None),
    ("layers x 1/2..5/4, heads x 1/4..2", "geometric"),
)


def arithmetic_reading_rows() -> List[Row]:
    """Cost of both readings of Table 6's arithmetic progression (MSWA, base 128)."""
    return [_row(6, f"  {label}", "mswa", 128, "arithmetic", head_variation=heads)
            for label, heads in ARITHMETIC_READINGS]


def display(value: float, table: int) -> str:
    """Two decimals the way the paper prints them: truncated in Table 3, rounded elsewhere."""
    if table == 3:
        return f"{math.floor(value * 100 + 1e-9) / 100:.2f}"
    return f"{value:.2f}"


def as_dicts(rows: List[Row]) -> List[Dict]:
    out = []
    for r in rows:
        d = asdict(r)
        d["relative_cost_display"] = display(r.relative_cost, r.table)
        out.append(d)
    return out


def format_table(rows: List[Row]) -> str:
    lines = [
        f"Table {rows[0].table} (reference: 12-layer MSWA, base 128, cost {reference_cost()})",
        f"{'row':36s} {'setting':24s} {'cost':>10s} {'relative':>9s} {'paper':>7s}",
    ]
    for r in rows:
        paper = "unknown" if r.paper_relative_cost is None else f"{r.paper_relative_cost:.2f}"
        lines.append(f"{r.row:36s} {r.setting:24s} {r.cost:10.1f} "
                     f"{display(r.relative_cost, r.table):>9s} {paper:>7s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_mswa.cost",
        description="Relative cost (sum of attention windows) of the MSWA paper's table rows "
                    "(their training compute at paper scale: python scripts/plan.py).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=int, choices=(2, 3, 5, 6))
    what.add_argument("--tiles", action="store_true",
                      help="MSWA / SWA attention work on tiled GPU kernels per tile shape at the "
                           "paper's shape, and Tables 2, 5 and 6's rows (fairseq_mswa/cost/"
                           "tiles.py; the full report with the chooser: python scripts/tiles.py)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.tiles:
        return _tiles_main(args.json)
    rows = table_rows(args.table)
    readings = arithmetic_reading_rows() if args.table == 6 else []
    if args.json:
        print(json.dumps(as_dicts(rows) + [dict(d, row="Arithmetic Progression: " + d["row"].strip(),
                        reading_of="Arithmetic Progression") for d in as_dicts(readings)],
                         indent=2))
    else:
        print(format_table(rows))
        if readings:
            print("\nArithmetic Progression, two readings (the paper's example fixes only the "
                  "layer windows\n64, 96, 128, 160; 'used' is what --window-variation arithmetic "
                  "builds and the row above):")
            for r in readings:
                print(f"{r.row:36s} {r.setting:24s} {r.cost:10.1f} "
                      f"{display(r.relative_cost, 6):>9s}")
    return 0


def _tiles_main(as_json: bool) -> int:
    from . import tiles

    rows = tiles.paper_tile_table()
    tables = {t: tiles.table_tile_rows(t) for t in (2, 5, 6)}
    if as_json:
        print(json.dumps({"paper_shape": rows, "tables": tables}, indent=1))
        return 0
    mswa, swa = tiles.paper_schedules()
    print("MSWA / SWA attention work on tiled kernels, the paper's 12 x 8 model (base 128, memory = "
          "each layer's largest window - 1);\na tile (queries x keys) with one visible key costs "
          "the whole tile. Per key (1x1): "
          f"{mswa.cost() / swa.cost():.3f}.\n")
    print(f"{'segment':>8s} " + " ".join(f"{tiles.tile_label(t):>8s}" for t in tiles.PAPER_TILES))
    for seg in sorted({r["segment"] for r in rows}):
        print(f"{seg:8d} " + " ".join(f"{r['mswa_over_swa']:8.3f}" for r in rows
                                      if r["segment"] == seg))
    for t, trs in tables.items():
        print(f"\nTable {t}: tile work relative to MSWA base 128 at the same tile shape (segment 512)")
        for r in trs:
            print(f"  {r['row']:36s} " + " ".join(f"{v:7.3f}" for v in r["relative_tile_work"].values()))
    return 0
