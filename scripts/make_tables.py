#!/usr/bin/env python
"""Render Tables 2, 3, 5 and 6 as Markdown, our numbers next to the paper's, plus PNG plots.

    python scripts/make_tables.py [--results-dir results] [--out results/tables.md]

Inputs:
* ``results/paper.json``: the paper's reported values (null = not reported / unknown);
* ``<results-dir>/table<N>/<dataset>/<row_id>.json``: one file per trained and evaluated row,
  written by ``scripts/reproduce.py`` (``table2.sh`` ... ``table6.sh``);
* ``fairseq_mswa.cost``: our relative cost of every row (never typed in here).

Outputs: the Markdown file and, next to it, ``table<N>_<dataset>.png`` (metric against relative
cost; Table 5 joins the SWA and the MSWA points into two lines). Rows not run yet show "-"; the
paper's unknown values show "unknown". Smoke runs (a few updates on a tiny corpus) are marked
with "(smoke)": they test the pipeline and mean nothing as numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fairseq_mswa.cost import as_dicts, table_rows  # noqa: E402

TABLES = (2, 3, 5, 6)
DATASETS = ("wikitext-103", "enwik8")
METRIC = {"wikitext-103": "PPL", "enwik8": "bpc"}


def load_paper(path: Path) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_results(results_dir: Path, table: int) -> Dict[tuple, Dict]:
    """(row name, dataset) -> result dict, from ``table<N>/<dataset>/*.json``."""
    out = {}
    base = Path(results_dir) / f"table{table}"
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*/*.json")):
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        if res.get("table") != table or "row" not in res or "dataset" not in res:
            continue
        out[(res["row"], res["dataset"])] = res
    return out


def _fmt(value: Optional[float], digits: int) -> str:
    return "unknown" if value is None else f"{value:.{digits}f}"


def _ours(res: Optional[Dict], digits: int) -> str:
    if res is None:
        return "-"
    text = f"{res['value']:.{digits}f}"
    return text + " (smoke)" if res.get("smoke") else text


def table_markdown(table: int, paper: Dict, results: Dict[tuple, Dict]) -> str:
    ptab = paper["tables"][str(table)]
    prow = {r["row"]: r for r in ptab["rows"]}
    costs = as_dicts(table_rows(table))
    datasets = [d for d in DATASETS
                if (ptab["datasets"] is None or d in ptab["datasets"])
                or any(k[1] == d for k in results)]
    head = ["Row", "Setting", "Rel. cost (ours)", "Rel. cost (paper)"]
    for d in datasets:
        head += [f"{d} {METRIC[d]} (ours)", f"{d} {METRIC[d]} (paper)"]
    lines = [f"### {ptab['title']}", ""]
    if ptab.get("note"):
        lines += [f"*{ptab['note']}*", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in costs:
        p = prow.get(c["row"], {})
        cells = [c["row"], c["setting"], c["relative_cost_display"],
                 _fmt(p.get("relative_cost"), 2)]
        for d in datasets:
            digits = 2
            cells += [_ours(results.get((c["row"], d)), digits), _fmt(p.get(d), digits)]
        lines.append("| " + " | ".join(cells) + " |")
    order = {c["row"]: i for i, c in enumerate(costs)}
    runs = [results[k] for k in sorted(results, key=lambda k: (k[1], order.get(k[0], 99)))]
    if runs:
        lines += ["", "Runs:"]
        for r in runs:
            t = r.get("train", {})
            extra = []
            if r.get("eval_symbols") is not None:
                extra.append(f"{r['eval_symbols']:,} test symbols")
            if r.get("train_tokens_per_s"):
                extra.append(f"{r['train_tokens_per_s']:,.0f} train tokens/s")
            lines.append(
                f"- {r['row']} / {r['dataset']}: {METRIC[r['dataset']]} {r['value']:.4f} after "
                f"{t.get('updates', '?')} updates x {t.get('tokens_per_update', '?')} tokens"
                + (f" ({', '.join(extra)})" if extra else "")
                + (" - smoke run on a tiny corpus, not comparable" if r.get("smoke") else "")
            )
    return "\n".join(lines) + "\n"


def plot_table(table: int, dataset: str, paper: Dict, results: Dict[tuple, Dict],
               path: Path) -> Optional[Path]:
    """Metric against relative cost (log scale), paper hollow, ours filled."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib


    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ptab = paper["tables"][str(table)]
    prow = {r["row"]: r for r in ptab["rows"]}
    costs = as_dicts(table_rows(table))
    pts_paper = [(p["relative_cost"], p[dataset], p["row"]) for p in ptab["rows"]
                 if p.get(dataset) is not None and p.get("relative_cost") is not None]
    pts_ours = [(c["relative_cost"], results[(c["row"], dataset)]["value"], c["row"])
                for c in costs if (c["row"], dataset) in results]
    if not pts_paper and not pts_ours:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    smoke = any(results[k].get("smoke") for k in results if k[1] == dataset)
    for pts, label, style in ((pts_paper, "paper", dict(mfc="none", ls="--")),
                              (pts_ours, "ours" + (" (smoke)" if smoke else ""), dict(ls="-"))):
        if not pts:
            continue
        if table == 5:
            for fam, color in (("SWA", "tab:blue"), ("MSWA", "tab:red")):
                sel = sorted((x, y) for x, y, r in pts if r.split(" ")[0] == fam)
                if sel:
                    ax.plot([x for x, _ in sel], [y for _, y in sel], marker="o", color=color,
                            label=f"{fam} ({label})", **style)
        else:
            color = "tab:gray" if label == "paper" else "tab:red"
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", ls="none",
                    color=color, mfc="none" if label == "paper" else color, label=label)
            for x, y, r in pts:
                ax.annotate(r, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("relative cost (sum of attention windows, MSWA base 128 = 1)")
    ax.set_ylabel(f"{dataset} test {METRIC[dataset]} (lower is better)")
    ax.set_title(f"Table {table}: {dataset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def render(results_dir: Path, paper_path: Path, out: Path, tables=TABLES,
           plots: bool = True) -> List[Path]:
    paper = load_paper(paper_path)
    parts = ["# MSWA paper tables: our runs next to the paper's numbers", "",
             "Relative cost = sum of the attention windows of all heads of all layers "
             "(`python -m fairseq_mswa.cost --table N`), the 12-layer MSWA with base window 128 "
             "being 1.00. '-' = not run yet; 'unknown' = not in our copy of the paper.", ""]
    written = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for t in tables:
        results = load_results(results_dir, t)
        parts.append(table_markdown(t, paper, results))
        if plots:
            for d in DATASETS:
                png = plot_table(t, d, paper, results, out.parent / f"table{t}_{d}.png")
                if png is not None:
                    parts.append(f"![Table {t} {d}]({png.name})\n")
                    written.append(png)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out)
    written.insert(0, out)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results-dir", type=Path, default=REPO / "results",
                    help="where table<N>/<dataset>/<row>.json live (default: results)")
    ap.add_argument("--paper", type=Path, default=REPO / "results" / "paper.json")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown output (default: <results-dir>/tables.md)")
    ap.add_argument("--tables", type=int, nargs="+", default=list(TABLES), choices=TABLES)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or args.results_dir / "tables.md"
    written = render(args.results_dir, args.paper, out, args.tables, not args.no_plots)
    for p in written:
        print(f"wrote {p}")
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
