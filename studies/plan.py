"""Compute of the paper's Tables 2, 3, 5 and 6 at paper scale, on paper: an estimate.

    python scripts/plan.py --json results/plan/compute.json --md results/plan/compute.md

Per row (and dataset) of a table: training FLOPs = needed FLOPs of one update (:mod:`.flops`,
at the row's model, segment and tokens per update) x the updates; GPU-hours = FLOPs / (peak x
MFU). Every input comes from the files the runs use: the training setup
(``configs/tables/setup.yaml``: updates, tokens per update, segment per family; the paper's
Appendix B.2.1), each table's rows and datasets (``configs/tables/table<N>.yaml``), the model
shapes (``configs/model/<arch>.yaml``) and the row windows (:func:`fairseq_mswa.cost.table_rows`).
The hardware numbers are assumptions, stated in the output: 8 x A100 at 312 bf16 TFLOP/s each
and a model-FLOPs utilisation (MFU) of 40 % by default (``--mfu``); hours scale as 1 / MFU.
Evaluation and validation passes are not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_mswa.schedule import build_schedule
from fairseq_mswa.cost import display, table_rows
from fairseq_mswa.cost.flops import (
    adaptive_io_macs,
    linear_mswa_forward_macs,
    train_flops,
    xl_forward_macs,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TABLES = (2, 3, 5, 6)
A100_BF16_TFLOPS = 312.0  # dense bf16 tensor-core peak of one A100
GPUS = 8
MFU = 0.40
# vocabularies: Wikitext-103's 267,735 words (Merity et al. 2016), enwik8's bytes (at most 256
# symbols: an upper bound), each with fairseq's 4 special symbols
VOCAB = {"wikitext-103": 267_735 + 4, "enwik8": 256 + 4}


class PlanError(ValueError):
    """The configuration the plan reads is missing or inconsistent; the message names the fix."""


def _load_yaml(path: Path) -> Dict:
    import yaml

    if not path.is_file():
        raise PlanError(f"{path} not found: run from a checkout of the repository (the plan reads "
                        "configs/tables/ and configs/model/) or pass --configs DIR")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _model(configs: Path, arch: str) -> Dict:
    cfg = _load_yaml(configs / "model" / f"{arch}.yaml")
    for key in ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim",
                "decoder_attention_heads"):
        if key not in cfg:
            raise PlanError(f"configs/model/{arch}.yaml lacks {key}")
    return cfg


def _output_macs(dim: int, dataset: str, adaptive_cutoff: Optional[str]) -> float:
    """Per-token multiply-adds of the output layer (and adaptive input)."""
    if adaptive_cutoff:
        cutoffs = [int(c) for c in str(adaptive_cutoff).split(",")]
        return adaptive_io_macs(dim, cutoffs, VOCAB[dataset])
    return dim * VOCAB[dataset]


def _cost_row(table: int, name: str):
    for row in table_rows(table):
        if row.row == name:
            return row
    raise PlanError(f"configs/tables/table{table}.yaml row {name!r} is not a row of "
                    f"fairseq_mswa.cost.table_rows({table})")


def row_estimates(table: int, configs: Path = CONFIGS) -> List[Dict]:
    """One entry per (dataset, row) of ``table``: shape, tokens, FLOPs."""
    setup = _load_yaml(configs / "tables" / "setup.yaml")
    spec = _load_yaml(configs / "tables" / f"table{table}.yaml")
    family = setup["families"][spec["family"]]
    updates = int(setup["train"]["max-update"])
    seg = int(family["segment"])
    out = []
    for dataset in spec["datasets"]:
        ds = family["datasets"][dataset]
        tokens_per_update = int(ds["tokens_per_update"])
        if tokens_per_update % seg:
            raise PlanError(f"setup.yaml: {dataset} tokens_per_update {tokens_per_update} is not "
                            f"a multiple of the segment {seg}")
        for spec_row in spec["rows"]:
            cost_row = _cost_row(table, spec_row["row"])
            args = spec_row.get("args", {})
            arch = spec_row.get("arch") or ds.get("arch")
            model = _model(configs, arch)
            layers, dim = model["decoder_layers"], model["decoder_embed_dim"]
            ffn, heads = model["decoder_ffn_embed_dim"], model["decoder_attention_heads"]
            if spec["family"] == "xl":
                pattern = args.get("attn-pattern", model.get("attn_pattern"))
                base = int(args.get("base-window", model.get("base_window")))
                variation = args.get("window-variation", "geometric")
                sched = build_schedule(layers, heads, base, pattern, variation)
                body = xl_forward_macs(sched, dim, ffn, seg)
                cutoff = model.get("adaptive_softmax_cutoff")
                windows = f"{pattern}, base {base}" + ("" if variation == "geometric" else f", {variation}")
            else:
                kinds = (model["layer_pattern"] * layers)[:layers]
                n_local = kinds.count("A")
                base = args.get("base-window", model.get("base_window"))
                sched = None
                if n_local:
                    pattern = model["attn_pattern"]
                    sched = build_schedule(n_local, heads, None if pattern == "full" else int(base),
                                           pattern)
                body = linear_mswa_forward_macs(kinds, sched, dim, ffn, heads, seg,
                                                model.get("feature_dim", 16))
                cutoff = (ds.get("train") or {}).get("adaptive-softmax-cutoff")
                windows = (f"{model['layer_pattern']} x {layers // len(model['layer_pattern'])}, "
                           + ("linear only" if not n_local else
                              "full" if model["attn_pattern"] == "full" else
                              f"{model['attn_pattern']}, base {base}"))
            out_macs = _output_macs(dim, dataset, cutoff)
            per_segment = train_flops(body, out_macs, seg)
            per_update = per_segment * tokens_per_update / seg
            out.append({
                "table": table, "dataset": dataset, "row": spec_row["row"], "id": spec_row["id"],
                "arch": arch, "layers": layers, "dim": dim, "ffn": ffn, "heads": heads,
                "windows": windows, "segment": seg, "tokens_per_update": tokens_per_update,
                "updates": updates, "train_tokens": tokens_per_update * updates,
                "relative_cost": round(cost_row.relative_cost, 4),
                "relative_cost_display": display(cost_row.relative_cost, table),
                "flops_per_token": per_segment / seg,
                "output_layer_share": out_macs * seg / (body + out_macs * seg),
                "flops_per_update": per_update,
                "train_flops": per_update * updates,
            })
    return out


def plan(tables=TABLES, mfu: float = MFU, peak_tflops: float = A100_BF16_TFLOPS, gpus: int = GPUS,
         configs: Path = CONFIGS) -> Dict:
    if not 0 < mfu <= 1:
        raise PlanError(f"--mfu {mfu}: give a fraction in (0, 1], e.g. 0.4")
    rate = peak_tflops * 1e12 * mfu  # FLOP/s of one GPU
    rows = []
    for table in tables:
        for r in row_estimates(table, configs):
            r["gpu_hours"] = r["train_flops"] / rate / 3600
            r["hours_on_cluster"] = r["gpu_hours"] / gpus
            rows.append(r)
    totals = {}
    for table in tables:
        mine = [r for r in rows if r["table"] == table]
        totals[str(table)] = {"runs": len(mine), "train_flops": sum(r["train_flops"] for r in mine),
                              "gpu_hours": sum(r["gpu_hours"] for r in mine),
                              "hours_on_cluster": sum(r["hours_on_cluster"] for r in mine)}
    all_flops = sum(t["train_flops"] for t in totals.values())
    return {
        "estimate": True,
        "assumptions": {
            "gpu": f"A100, {peak_tflops:g} dense bf16 TFLOP/s peak", "gpus": gpus, "mfu": mfu,
            "sustained_tflops_per_gpu": peak_tflops * mfu,
            "flops_model": "fairseq_mswa.cost.flops: needed FLOPs (2 x multiply-adds) of the "
                           "matrix products and of attention over the visible keys, forward x 3 "
                           "for a training step; elementwise work, optimizer and evaluation not "
                           "counted",
            "adaptive_softmax": "Wikitext-103 rows count every token through every tail cluster "
                                "of the adaptive softmax (an upper bound: training runs a tail "
                                "only for the tokens whose target is in it)",
            "vocab": VOCAB,
        },
        "rows": rows,
        "totals": totals,
        "all_tables": {"runs": len(rows), "train_flops": all_flops,
                       "gpu_hours": all_flops / rate / 3600,
                       "hours_on_cluster": all_flops / rate / 3600 / gpus},
    }


def _sci(x: float) -> str:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def markdown(result: Dict) -> str:
    a = result["assumptions"]
    lines = [
        "# Compute of the paper's tables at paper scale (estimate)",
        "",
        "**An estimate, not a measurement**: needed FLOPs from `fairseq_mswa.cost.flops` times the "
        "tokens of each run; hours assume "
        f"{a['gpus']} x {a['gpu']} at {100 * a['mfu']:.0f} % model-FLOPs utilisation "
        f"({a['sustained_tflops_per_gpu']:.1f} TFLOP/s sustained per GPU). Hours scale as 1 / MFU.",
        f"Command: `{result['command']}`; commit {result['git_commit']}; {result['date']}.",
        "",
        f"FLOPs model: {a['flops_model']}. {a['adaptive_softmax']}.",
        "",
        "| table | dataset | row | windows | tokens/update | tokens | GFLOP/token | output share "
        "| rel. cost | training FLOPs | GPU-hours | hours on 8 GPUs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['table']} | {r['dataset']} | {r['row']} | {r['windows']} | "
            f"{r['tokens_per_update']:,} | {r['train_tokens'] / 1e9:.2f}e9 | "
            f"{r['flops_per_token'] / 1e9:.3f} | {100 * r['output_layer_share']:.0f} % | "
            f"{r['relative_cost_display']} | {_sci(r['train_flops'])} | {r['gpu_hours']:.1f} | "
            f"{r['hours_on_cluster']:.2f} |")
    lines += ["", "| table | runs | training FLOPs | GPU-hours | hours on 8 GPUs |",
              "|---|---|---|---|---|"]
    for table, t in result["totals"].items():
        lines.append(f"| {table} | {t['runs']} | {_sci(t['train_flops'])} | {t['gpu_hours']:.1f} "
                     f"| {t['hours_on_cluster']:.1f} |")
    t = result["all_tables"]
    lines += [f"| all | {t['runs']} | {_sci(t['train_flops'])} | {t['gpu_hours']:.1f} | "
              f"{t['hours_on_cluster']:.1f} |", ""]
    return "\n".join(lines)


def write(result: Dict, json_path: Optional[str], md_path: Optional[str], command: str) -> str:
    """Stamp ``result`` with the command, commit, date and machine; write JSON / Markdown."""
    from .run_utils import git_commit, machine_info, write_result

    result.update(command=command, git_commit=git_commit(REPO),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  machine=machine_info("cpu"))
    md = markdown(result)
    write_result(result, json_path, md_path, md, echo=False)
    return md


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/plan.py",
        description="Training FLOPs and GPU-hours of every row of the MSWA paper's Tables 2, 3, 5 "
                    "and 6 at paper scale (an estimate).")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the JSON here")
    parser.add_argument("--md", default=None, metavar="PATH", help="write the Markdown here")
    parser.add_argument("--mfu", type=float, default=None,
                        help="model-FLOPs utilisation assumed (default 0.4)")
    parser.add_argument("--configs", default=None, metavar="DIR",
                        help="the configs/ folder to read (default: this checkout's)")
    args = parser.parse_args(argv)
    kwargs = {} if args.mfu is None else {"mfu": args.mfu}
    if args.configs:
        kwargs["configs"] = Path(args.configs)
    try:
        result = plan(**kwargs)
    except PlanError as e:
        raise SystemExit(f"python scripts/plan.py: {e}")
    command = "python scripts/plan.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write(result, args.json, args.md, command))
    return 0
