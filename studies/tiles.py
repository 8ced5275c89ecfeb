"""The tile report: MSWA against SWA on tiled GPU kernels, the chosen tiles, and the same
accounting for the CPU blocked kernel and for decoding.

    python scripts/tiles.py --json results/tiles/tiles.json --md results/tiles/tiles.md

The counting and the chooser are the plugin's cost model (``fairseq_mswa/cost/tiles.py``, pure
Python); this study adds what the CPU path computes (it reads the kernels' block-size rules) and
the measured attention-core time of ``results/bench/train_cpu.json``, and writes the record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from fairseq_mswa.cost.tiles import (  # noqa: F401
    GPU_TILES, KV_OVERHEAD, PAPER_SEGMENTS, PAPER_SHAPE, PAPER_TILES, PAPER_TOKENS_PER_STEP,
    PASS_SECONDS, Q_OVERHEAD, TILE_FLOPS_PER_SECOND, TRAIN_PASSES, Partition, TileError,
    TilePlan, TileShape, _check_lengths, _partition, choose_tiles, chosen_schedule_work,
    decode_kv_bytes, layer_memory, pass_memory, pass_windows, paper_schedules, paper_tile_table,
    schedule_tile_work, table_tile_rows, tile_efficiency, tile_label, visible_pairs,
    window_groups,
)
from fairseq_mswa.schedule import Window
from studies.run_utils import REPO_ROOT, portable_command, provenance, write_result


# --- the CPU blocked kernel ----------------------------------------------------------------------

def blocked_pass_scores(windows: Sequence[Window], segment: int, memory: int,
                        sinks: int = 0) -> int:
    """Scores (pairs per batch row, summed over heads) the CPU path computes for one pass of
    heads with ``windows`` over ``memory`` + ``segment`` keys, following
    ``window_attention(backend='auto', merge_heads=...)`` on CPU as the XL layer calls it:
    ``dense`` when ``segment * keys <= DENSE_MAX_SCORES`` (every (query, key) pair); else
    ``blocked``: per window group its own layout (blocks of ``default_block_size(w)`` queries,
    span ``bq + w - 1`` keys, the last block padded), several windows merged into the largest
    window's layout (``merged_block_size``); a block that would span every query runs dense in
    query blocks of ``FULL_BLOCK`` (each over the keys up to its last query). Imports the kernels'
    block-size rules (torch) when called."""
    from fairseq_mswa.kernels.blocked import FULL_BLOCK, default_block_size, merged_block_size
    from fairseq_mswa.kernels.common import effective_window
    from fairseq_mswa.kernels.window_attention import DENSE_MAX_SCORES

    _check_lengths(segment, memory)
    lk = segment + memory
    h = len(windows)
    if segment * lk <= DENSE_MAX_SCORES:
        return h * segment * lk

    def dense(heads: int) -> int:
        return heads * sum((min(segment, s + FULL_BLOCK) - s) * (memory + min(segment, s + FULL_BLOCK))
                           for s in range(0, segment, FULL_BLOCK))

    def windowed(heads: int, w: int, bq: int, smallest: int) -> int:
        # blocks of bq queries (the last padded) x span bq + w - 1 (+ the sink keys, appended
        # once the last query is past the smallest window: blocked's use_sinks)
        use_sinks = sinks > 0 and memory + segment - 1 >= smallest
        return heads * -(-segment // bq) * bq * (bq + w - 1 + (sinks if use_sinks else 0))

    eff = [effective_window(w, lk) for w in windows]
    if None not in eff and len(set(eff)) > 1:  # merge_heads: the largest window's layout
        bq = merged_block_size(eff)
        return dense(h) if bq >= segment else windowed(h, max(eff), bq, min(eff))
    total = 0
    for w, count in window_groups(eff):
        bq = segment if w is None else default_block_size(w)
        total += dense(count) if (w is None or bq >= segment) else windowed(count, w, bq, w)
    return total


def blocked_layer_scores(windows: Sequence[Window], segment: int, memory: int,
                         partition: Union[str, Partition] = "auto", batch: int = 1,
                         head_dim: int = 64, sinks: int = 0) -> Tuple[int, Partition]:
    """(scores per batch row, partition) of one XL layer on the CPU path; ``partition='auto'`` is
    the layer's own choice (``kernels.plan.best_partition``, imported when called)."""
    if partition == "auto":
        if len(window_groups(windows)) == 1:
            partition = (1,)
        else:
            from fairseq_mswa.kernels.plan import best_partition

            partition = best_partition(tuple(windows), batch, segment, memory, head_dim)
    part = _partition(windows, partition)
    return (sum(blocked_pass_scores(ws, segment, pass_memory(ws, memory), sinks)
                for ws in pass_windows(windows, part)), part)


# --- the report (python scripts/tiles.py) ---------------------------------------------

TARGET = 0.95  # issue 29: MSWA's tile work at most 0.95 of SWA's


def _plan_dict(plan: TilePlan) -> Dict:
    return {"partition": list(plan.partition), "tiles": [tile_label(t) for t in plan.tiles],
            "pass_windows": [list(p.windows) for p in plan.passes],
            "pass_memory": [p.memory for p in plan.passes], "tile_work": plan.tile_work,
            "seconds": plan.seconds}


def chooser_report(segments: Sequence[int] = PAPER_SEGMENTS,
                   tiles: Sequence[TileShape] = GPU_TILES) -> List[Dict]:
    """Per segment: :func:`choose_tiles`' plan of every distinct layer of the paper's MSWA and
    SWA (batch = the paper's 16,384 tokens per step / segment), and the MSWA / SWA ratios of tile
    work and modelled seconds, each at its own chosen tiles."""
    mswa, swa = paper_schedules()
    out = []
    for seg in segments:
        batch = max(1, PAPER_TOKENS_PER_STEP // seg)
        entry = {"segment": seg, "batch": batch}
        for name, sched in (("mswa", mswa), ("swa", swa)):
            work, secs, plans = chosen_schedule_work(sched, seg, tiles, batch=batch,
                                                     head_dim=PAPER_SHAPE["head_dim"])
            layers, seen = [], set()
            for i, (layer, plan) in enumerate(zip(sched.windows, plans)):
                if layer not in seen:
                    seen.add(layer)
                    layers.append({"layers": [j for j, l in enumerate(sched.windows) if l == layer],
                                   "windows": list(layer),
                                   "memory": layer_memory(sched, i, seg), **_plan_dict(plan)})
            entry[name] = {"tile_work": work, "seconds": secs, "layers": layers}
        entry["mswa_over_swa_tile_work"] = entry["mswa"]["tile_work"] / entry["swa"]["tile_work"]
        entry["mswa_over_swa_seconds"] = entry["mswa"]["seconds"] / entry["swa"]["seconds"]
        out.append(entry)
    return out


def chooser_sensitivity(pass_seconds: Sequence[float] = (0.0, 5e-6, PASS_SECONDS, 100e-6),
                        segment: int = 512) -> List[Dict]:
    """How the chooser's plan for the paper's MSWA and its MSWA / SWA ratios move with the assumed
    per-pass overhead (the constant a GPU measurement must settle)."""
    mswa, swa = paper_schedules()
    batch = max(1, PAPER_TOKENS_PER_STEP // segment)
    out = []
    for ps in pass_seconds:
        wm, sm, plans = chosen_schedule_work(mswa, segment, batch=batch, pass_seconds=ps)
        ws, ss, _ = chosen_schedule_work(swa, segment, batch=batch, pass_seconds=ps)
        seen, layers = set(), []
        for layer, plan in zip(mswa.windows, plans):
            if layer not in seen:
                seen.add(layer)
                layers.append("+".join(map(str, plan.partition)) + " @ "
                              + ", ".join(tile_label(t) for t in plan.tiles))
        out.append({"pass_seconds": ps, "segment": segment, "mswa_plans": layers,
                    "mswa_over_swa_tile_work": wm / ws, "mswa_over_swa_seconds": sm / ss})
    return out


def blocked_report(segments: Sequence[int] = PAPER_SEGMENTS, batch: int = 1) -> List[Dict]:
    """The CPU blocked kernel's computed scores at the paper's shape, MSWA / SWA, per layout
    (``auto`` = ``kernels.plan.best_partition``, ``grouped``, ``merged``) beside the visible
    keys (0.879). Imports torch (the kernels' block-size rules)."""
    mswa, swa = paper_schedules()
    out = []
    for seg in segments:
        row = {"segment": seg, "batch": batch}
        for layout in ("auto", "grouped", "merged"):
            totals, parts = {}, {}
            for name, sched in (("mswa", mswa), ("swa", swa)):
                total, ps = 0, []
                for i, layer in enumerate(sched.windows):
                    mem = layer_memory(sched, i, seg)
                    scores, part = blocked_layer_scores(layer, seg, mem, layout, batch,
                                                        PAPER_SHAPE["head_dim"])
                    total += scores
                    ps.append(list(part))
                totals[name], parts[name] = total, ps
            row[layout] = {"mswa_scores": totals["mswa"], "swa_scores": totals["swa"],
                           "mswa_over_swa": totals["mswa"] / totals["swa"],
                           "mswa_partitions": parts["mswa"]}
        vis = {n: sum(visible_pairs(l, seg, layer_memory(s, i, seg))
                      for i, l in enumerate(s.windows)) for n, s in (("mswa", mswa), ("swa", swa))}
        row["visible_mswa_over_swa"] = vis["mswa"] / vis["swa"]
        row["auto_scores_over_visible"] = {"mswa": row["auto"]["mswa_scores"] / vis["mswa"],
                                           "swa": row["auto"]["swa_scores"] / vis["swa"]}
        out.append(row)
    return out


def decode_report(positions: Sequence[int] = (127, 511, 2047, 8191), head_dim: int = 64,
                  dtype_bytes: int = 2, ramp: int = 2048) -> Dict:
    """K/V bytes one decoding step reads per layer (mean over the 12 layers) for MSWA and SWA at
    several positions, and the ratio summed over the first ``ramp`` steps."""
    mswa, swa = paper_schedules()

    def step(s, p):
        return sum(decode_kv_bytes(l, p, head_dim, dtype_bytes, s.sink_tokens) for l in s.windows)

    rows = [{"position": p, "mswa_bytes_per_layer": step(mswa, p) / mswa.num_layers,
             "swa_bytes_per_layer": step(swa, p) / swa.num_layers,
             "mswa_over_swa": step(mswa, p) / step(swa, p)} for p in positions]
    ramp_ratio = (sum(step(mswa, p) for p in range(ramp)) / sum(step(swa, p) for p in range(ramp)))
    return {"head_dim": head_dim, "dtype_bytes": dtype_bytes, "batch": 1, "rows": rows,
            f"mswa_over_swa_first_{ramp}_steps": ramp_ratio,
            "per_key_cost": mswa.cost() / swa.cost()}


def tiles_report(train_bench: Optional[Dict] = None, with_blocked: bool = True) -> Dict:
    """Everything ``python -m fairseq_mswa.cost --tiles`` prints: the paper-shape tile table,
    Tables 2, 5, 6 at tiles, the chooser's plans, the targets, the CPU blocked kernel's and the
    decoder's accounting. ``train_bench``: ``results/bench/train_cpu.json``'s record (its
    attention-core time ratio is set beside the blocked kernel's count), or None."""
    mswa, swa = paper_schedules()
    table = paper_tile_table()
    chooser = chooser_report()
    same = {}
    for r in table:
        if tuple(r["tile"]) in GPU_TILES:
            same.setdefault(tile_label(tuple(r["tile"])), []).append(r["mswa_over_swa"])
    met_same = sorted((t for t, v in same.items() if max(v) <= TARGET),
                      key=lambda t: -int(t.split("x")[0]) * int(t.split("x")[1]))
    report = {
        "shape": dict(PAPER_SHAPE, segments=list(PAPER_SEGMENTS),
                      memory="each layer's largest window - 1"),
        "per_key_mswa_over_swa": mswa.cost() / swa.cost(),
        "paper_tiles": table,
        "tables": {t: table_tile_rows(t) for t in (2, 5, 6)},
        "efficiency": {tile_label(t): tile_efficiency(t) for t in PAPER_TILES},
        "assumptions": {"q_overhead": Q_OVERHEAD, "kv_overhead": KV_OVERHEAD,
                        "pass_seconds": PASS_SECONDS,
                        "tile_flops_per_second": TILE_FLOPS_PER_SECOND,
                        "pair_flops": f"{TRAIN_PASSES} x 4 x head_dim (forward + backward)",
                        "status": "assumptions from public tile shapes, not measured: "
                                  "bench_attention.py --tile-sweep --device cuda settles them"},
        "chooser": chooser,
        "chooser_sensitivity": chooser_sensitivity(),
        "targets": {
            "threshold": TARGET,
            "same_tiles": {t: {"mswa_over_swa": max(v), "met": max(v) <= TARGET}
                           for t, v in same.items()},
            "same_tiles_met_at": met_same,
            "same_tiles_met_at_every_gpu_tile": len(met_same) == len(same),
            "chosen_tile_work": {str(c["segment"]): {"mswa_over_swa": c["mswa_over_swa_tile_work"],
                                                     "met": c["mswa_over_swa_tile_work"] <= TARGET}
                                 for c in chooser},
            "chosen_modelled_seconds": {str(c["segment"]): c["mswa_over_swa_seconds"]
                                        for c in chooser},
        },
        "decode": decode_report(),
    }
    if with_blocked:
        report["blocked"] = blocked_report()
        if train_bench and train_bench.get("attention_layers"):
            a = train_bench["attention_layers"]
            report["blocked_measured"] = {
                "source": "results/bench/train_cpu.json", "git_commit": train_bench.get("git_commit"),
                "segment": a.get("segment"),
                "attn_core_mswa_over_swa_time": a.get("core_mswa_over_swa_time"),
                "attn_layers_mswa_over_swa_time": a.get("mswa_over_swa_time"),
                "attn_layers_mswa_over_swa_flops": train_bench.get("attn_layers_mswa_over_swa_flops")}
    return report


def _f(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _md_work(r: Dict, tiles: List[str]) -> List[str]:
    """MSWA / SWA tile work at the paper's shape, and Tables 2, 5, 6 at every tile shape."""
    lines = ["# MSWA / SWA attention work at tile granularity",
             "",
             f"Paper shape: 12 layers x 8 heads, head dim 64, base window 128, memory = each "
             f"layer's largest window - 1. Per-key cost (the paper's): "
             f"{r['per_key_mswa_over_swa']:.3f}. Tile work = non-empty (query-block x key-block) "
             "tiles of FlexAttention's block mask x tile area, counted exactly.",
             "",
             "| segment | " + " | ".join(tiles) + " |", "|---|" + "---|" * len(tiles)]
    for seg in PAPER_SEGMENTS:
        cells = [_f(x["mswa_over_swa"]) for x in r["paper_tiles"] if x["segment"] == seg]
        lines.append(f"| {seg} | " + " | ".join(cells) + " |")
    lines += ["", "Tables 2, 5, 6 at tiles (segment 512 with memory; full rows: n queries, no "
              "memory): tile work relative to the reference row (MSWA base 128) at the same "
              "tile shape; `per key` is the paper's Relative Cost.", "",
              "| table | row | per key | " + " | ".join(tiles[:-1]) + " |",
              "|---|---|---|" + "---|" * (len(tiles) - 1)]
    for t, rows in r["tables"].items():
        for x in rows:
            cells = [_f(x["relative_tile_work"][k]) for k in tiles[:-1]]
            lines.append(f"| {t} | {x['row']} | {x['relative_cost']:.3f} | " + " | ".join(cells)
                         + " |")
    return lines


def _md_chooser(r: Dict) -> List[str]:
    """The chosen tiles per layer group, under the stated model, and their sensitivity."""
    a = r["assumptions"]
    lines = ["", "## Chosen tiles (model; assumptions, not measurements)", "",
             f"Tile rate relative to 128x128 (`tile_efficiency`, Q = {a['q_overhead']}, "
             f"K = {a['kv_overhead']}): "
             + ", ".join(f"{k} {v:.3f}" for k, v in r["efficiency"].items()) + ".",
             f"Per-pass overhead {a['pass_seconds'] * 1e6:.0f} us; attention rate at 128x128 "
             f"{a['tile_flops_per_second'] / 1e12:.0f} TFLOP/s; batch = 16,384 tokens / segment.",
             "", "| segment | schedule | layers | windows | passes | tiles |",
             "|---|---|---|---|---|---|"]
    for c in r["chooser"]:
        for name in ("mswa", "swa"):
            for L in c[name]["layers"]:
                lines.append(f"| {c['segment']} | {name} | {L['layers'][0]}-{L['layers'][-1]} | "
                             f"{L['windows'][0]}..{L['windows'][-1]} | "
                             f"{'+'.join(map(str, L['partition']))} | {', '.join(L['tiles'])} |")
    lines += ["", "Sensitivity to the per-pass overhead (segment 512; MSWA's distinct layers, "
              "windows 8..64, 16..128, 32..256, 64..512):", "",
              "| pass overhead | MSWA plans | tile work MSWA / SWA | modelled s MSWA / SWA |",
              "|---|---|---|---|"]
    for x in r["chooser_sensitivity"]:
        lines.append(f"| {x['pass_seconds'] * 1e6:.0f} us | {'; '.join(x['mswa_plans'])} | "
                     f"{_f(x['mswa_over_swa_tile_work'])} | {_f(x['mswa_over_swa_seconds'])} |")
    return lines


def _md_targets(r: Dict) -> List[str]:
    tg = r["targets"]
    lines = ["", "## Targets (MSWA / SWA <= 0.95)", "",
             "| comparison | 512 | 2048 | met |", "|---|---|---|---|"]
    for t, v in tg["same_tiles"].items():
        per = [x["mswa_over_swa"] for x in r["paper_tiles"] if tile_label(tuple(x["tile"])) == t]
        lines.append(f"| same tiles {t} | {_f(per[0])} | {_f(per[1])} | "
                     f"{'yes' if v['met'] else 'no'} |")
    ct, cs = tg["chosen_tile_work"], tg["chosen_modelled_seconds"]
    lines.append(f"| each at its chosen tiles: tile work | {_f(ct['512']['mswa_over_swa'])} | "
                 f"{_f(ct['2048']['mswa_over_swa'])} | "
                 f"{'yes' if all(v['met'] for v in ct.values()) else 'no'} |")
    lines.append(f"| each at its chosen tiles: modelled seconds | {_f(cs['512'])} | "
                 f"{_f(cs['2048'])} | (model) |")
    return lines


def _md_blocked(r: Dict) -> List[str]:
    """Scores the CPU blocked kernel computes, and the measured attention time beside them."""
    lines = ["", "## CPU blocked kernel (scores computed, batch 1)", "",
             "| segment | visible keys | auto | grouped | merged |", "|---|---|---|---|---|"]
    for b in r["blocked"]:
        lines.append(f"| {b['segment']} | {_f(b['visible_mswa_over_swa'])} | "
                     f"{_f(b['auto']['mswa_over_swa'])} | {_f(b['grouped']['mswa_over_swa'])}"
                     f" | {_f(b['merged']['mswa_over_swa'])} |")
    m = r.get("blocked_measured")
    if m:
        lines.append(f"\nMeasured ({m['source']}, commit {m['git_commit']}, segment "
                     f"{m['segment']}): attention core time MSWA / SWA "
                     f"{_f(m['attn_core_mswa_over_swa_time'])}, attention layers "
                     f"{_f(m['attn_layers_mswa_over_swa_time'])} (needed FLOPs "
                     f"{_f(m['attn_layers_mswa_over_swa_flops'])}).")
    return lines


def _md_decode(d: Dict) -> List[str]:
    lines = ["", "## Decoding: K/V bytes read per step per layer (batch 1, bf16, head dim 64)", "",
             "| position | MSWA | SWA | MSWA / SWA |", "|---|---|---|---|"]
    for x in d["rows"]:
        lines.append(f"| {x['position']} | {x['mswa_bytes_per_layer']:.0f} | "
                     f"{x['swa_bytes_per_layer']:.0f} | {_f(x['mswa_over_swa'])} |")
    ramp = next(k for k in d if k.startswith("mswa_over_swa_first_"))
    return lines + [f"\nSummed over the first {ramp.split('_')[-2]} steps: {_f(d[ramp])}."]


def tiles_markdown(r: Dict) -> str:
    """The report as Markdown (what the CLI prints): tile work, chosen tiles, targets, the CPU
    blocked kernel (when measured) and decoding."""
    lines = (_md_work(r, [tile_label(t) for t in PAPER_TILES]) + _md_chooser(r) + _md_targets(r)
             + (_md_blocked(r) if "blocked" in r else []) + _md_decode(r["decode"]))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/tiles.py",
        description="MSWA / SWA attention work on tiled GPU kernels per tile shape, the chosen "
                    "tiles, the CPU blocked kernel's and decoding's accounting.")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the JSON here")
    parser.add_argument("--md", default=None, metavar="PATH", help="write the Markdown here")
    parser.add_argument("--train-bench", default=None, metavar="PATH",
                        help="bench_train's record whose attention-core time is set beside the "
                             "CPU kernel's count (default: results/bench/train_cpu.json, when "
                             "present)")
    args = parser.parse_args(argv)
    bench_path = (Path(args.train_bench) if args.train_bench
                  else REPO_ROOT / "results" / "bench" / "train_cpu.json")
    if args.train_bench and not bench_path.is_file():
        raise SystemExit(f"python scripts/tiles.py: --train-bench {bench_path} does not exist "
                         "(give bench_train's --json output)")
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    report = tiles_report(train_bench=bench)
    text = tiles_markdown(report)
    if args.json or args.md:
        given = list(argv if argv is not None else sys.argv[1:])
        command = " ".join(["python", "scripts/tiles.py"] + portable_command(given))
        prov = provenance(command)
        report = {**prov, **report}
        text = (text + f"\nCommand: `{command}`; commit {prov['git_commit']}"
                + (" + uncommitted changes" if prov.get("git_dirty") else "")
                + f"; {prov['date']}; {prov['machine'].get('cpu_model')}, python "
                f"{prov['machine'].get('python')}, torch {prov['machine'].get('torch')}.\n")
        write_result(report, args.json, args.md, text, echo=False)
    print(text)
    return 0
