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

Scaled runs (``tableN.sh --scale cpu``): ``python scripts/make_tables.py --scale cpu`` renders
``results/cpu/table<N>.{md,json,png}``: every CPU-scale row (test bpc on the byte-level corpus)
beside the paper's columns, the orderings of both, the run-to-run noise where a second seed ran,
the machine, command, date and wall time; the PNG plots bpc against relative cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_mswa.cost import as_dicts, table_rows
from studies.run_utils import REPO_ROOT as REPO
from studies.run_utils import commit_text, save_figure_atomic, write_text_atomic

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
    save_figure_atomic(fig, path, dpi=120)
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
    write_text_atomic(out, "\n".join(parts))
    written.insert(0, out)
    return written


# --- scaled runs (--scale cpu) ---------------------------------------------------------------

def load_scaled(results_dir: Path, table: int) -> Dict[str, Dict[int, Dict]]:
    """row name -> {seed: result} of one table's scaled runs (any dataset folder)."""
    out: Dict[str, Dict[int, Dict]] = {}
    for path in sorted((Path(results_dir) / f"table{table}").glob("*/*.json")):
        res = json.loads(path.read_text(encoding="utf-8"))
        if res.get("table") != table or "row" not in res:
            continue
        out.setdefault(res["row"], {})[int(res.get("seed", 1))] = res
    return out


def _paper_metric(ptab: Dict) -> Optional[str]:
    """The paper's column to compare orderings with: enwik8 (bpc, like ours) where reported."""
    for d in ("enwik8", "wikitext-103"):
        if any(r.get(d) is not None for r in ptab["rows"]):
            return d
    return None


def _order(values: Dict[str, float]) -> List[str]:
    return sorted(values, key=lambda k: values[k])


def scaled_summary(table: int, paper: Dict, results: Dict[str, Dict[int, Dict]]) -> Dict:
    """Everything the Markdown / JSON / plot of one scaled table need (no rendering)."""
    ptab = paper["tables"][str(table)]
    prow = {r["row"]: r for r in ptab["rows"]}
    costs = as_dicts(table_rows(table))
    rows = []
    for c in costs:
        seeds = results.get(c["row"], {})
        main_seed = min(seeds) if seeds else None
        r = seeds.get(main_seed) if seeds else None
        t = (r or {}).get("train", {})
        rows.append({
            "row": c["row"], "setting_paper": c["setting"],
            "windows_run": ((t.get("cost") or {}).get("windows")),
            "relative_cost_paper": prow.get(c["row"], {}).get("relative_cost"),
            "relative_cost_model": c["relative_cost"],
            "relative_cost_run": (r or {}).get("run_relative_cost"),
            "bpc": r["value"] if r else None, "seed": main_seed,
            "other_seeds": {str(k): v["value"] for k, v in seeds.items() if k != main_seed},
            "paper": {d: prow.get(c["row"], {}).get(d) for d in DATASETS},
            "updates": t.get("updates"), "max_update": t.get("max_update"),
            "train_tokens_per_s": (r or {}).get("train_tokens_per_s"),
            "train_wall_s": t.get("wall_s"), "eval_wall_s": (r or {}).get("eval_wall_s"),
            "loadavg_1min": (r or {}).get("loadavg_1min"),
            "finished": (r or {}).get("finished"),
            "git_commit": (r or {}).get("git_commit"),
            "git_dirty": (r or {}).get("git_dirty"),
            "git_commit_note": (r or {}).get("git_commit_note"),
            "commands": (r or {}).get("commands"),
        })
    pd = _paper_metric(ptab)
    ours = {r["row"]: r["bpc"] for r in rows if r["bpc"] is not None}
    theirs = {r["row"]: r["paper"][pd] for r in rows if pd and r["paper"][pd] is not None}
    both = [k for k in ours if k in theirs]
    pairs = []
    for i, a in enumerate(both):
        for b in both[i + 1:]:
            if theirs[a] == theirs[b]:
                continue
            better, worse = (a, b) if theirs[a] < theirs[b] else (b, a)
            pairs.append({"paper_better": better, "paper_worse": worse,
                          "holds": ours[better] < ours[worse],
                          "cpu_difference": ours[worse] - ours[better]})
    noise = [{"row": r["row"], "seeds": {str(r["seed"]): r["bpc"], **r["other_seeds"]}}
             for r in rows if r["other_seeds"]]
    first = next((results[r["row"]][r["seed"]] for r in rows if r["bpc"] is not None), None)
    t = (first or {}).get("train", {})
    walls = [(r["train_wall_s"] or 0) + (r["eval_wall_s"] or 0) for r in rows if r["bpc"]]
    return {
        "table": table, "title": ptab["title"], "scale": (first or {}).get("scale"),
        "dataset": (first or {}).get("dataset"), "metric": "bpc",
        "corpus": (first or {}).get("data"),
        "test_bytes": ((first or {}).get("test_split") or {}).get("bytes"),
        "shape": {k: t.get(k) for k in ("layers", "heads", "embed_dim", "segment",
                                        "tokens_per_update", "max_update", "factor", "arch")},
        "rows": rows, "paper_ordering_dataset": pd,
        "ordering": {"paper": _order({k: theirs[k] for k in both}),
                     "cpu": _order({k: ours[k] for k in both}),
                     "cpu_all_rows": _order(ours)},
        "pairs": pairs, "noise": noise,
        "rows_wall_s": round(sum(walls), 1),
        "machine": (first or {}).get("machine"),
    }


def _num(v, digits=3) -> str:
    return "-" if v is None else ("unknown" if v == "unknown" else f"{v:.{digits}f}")


def _scaled_row(r: Dict, s: Dict) -> str:
    sh = s["shape"]
    w = r["windows_run"]
    wtxt = ("-" if not w else f"full (n = {sh['segment']})" if w[0] is None
            else f"{w[0]}..{w[1]}" if w[0] != w[1] else f"{w[0]}")
    seeds = ", ".join(f"seed {k}: {v:.3f}" for k, v in r["other_seeds"].items()) or "-"
    paper_cost = "unknown" if r["relative_cost_paper"] is None else \
        f"{r['relative_cost_paper']:.2f}"
    pw = r["paper"]["wikitext-103"]
    pe = r["paper"]["enwik8"]
    unk = "unknown" if s["table"] == 6 else "-"
    wall = (None if r["train_wall_s"] is None
            else (r["train_wall_s"] or 0) + (r["eval_wall_s"] or 0))
    tps = r["train_tokens_per_s"]
    cells = [r["row"], wtxt, _num(r["relative_cost_run"], 2), paper_cost,
             _num(r["bpc"], 3), seeds, unk if pw is None else f"{pw:.2f}",
             unk if pe is None else f"{pe:.2f}", str(r["updates"] or "-"),
             "-" if not tps else f"{tps:,.0f}", "-" if wall is None else f"{wall:.0f}"]
    return "| " + " | ".join(cells) + " |"


def _scaled_ordering(s: Dict) -> List[str]:
    """The paper's order against the CPU-scale order, pair by pair; the CPU order alone where
    the paper's values are unknown."""
    o = s["ordering"]
    lines = [""]
    if s["paper_ordering_dataset"] and o["paper"]:
        lines += [f"Order, best first: paper ({s['paper_ordering_dataset']}): "
                  + " < ".join(o["paper"]) + "; CPU scale: " + " < ".join(o["cpu"]) + ".", ""]
        held = sum(p["holds"] for p in s["pairs"])
        lines.append(f"Pairwise orderings of the paper that hold at CPU scale: {held} of "
                     f"{len(s['pairs'])}.")
        for p in s["pairs"]:
            lines.append(f"- {p['paper_better']} < {p['paper_worse']}: "
                         f"{'holds' if p['holds'] else 'does not hold'} "
                         f"(CPU bpc difference {p['cpu_difference']:+.3f})")
    elif o["cpu_all_rows"]:
        lines.append("Paper values unknown (our copy lacks them). CPU-scale order, best first: "
                     + " < ".join(o["cpu_all_rows"]) + ".")
    if s["noise"]:
        lines += ["", "Run-to-run noise (same rows, other seeds):"]
        for n in s["noise"]:
            vals = list(n["seeds"].values())
            lines.append(f"- {n['row']}: " + ", ".join(f"seed {k} {v:.3f}"
                                                        for k, v in n["seeds"].items())
                         + f" (spread {max(vals) - min(vals):.3f})")
    return lines


def _scaled_footer(s: Dict, info: Dict, extra_runs) -> List[str]:
    """Machine, measured commits, wall times and the commands that made the table."""
    m = s.get("machine") or {}
    commits = sorted({commit_text(r) for r in s["rows"] if r["bpc"] is not None})
    lines = ["", f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs, "
             f"torch threads {m.get('torch_threads')}, torch {m.get('torch', '?')}, Python "
             f"{m.get('python', '?')}. Measured commit: {'; '.join(commits)}. "
             f"Rows' train + eval wall time: {s['rows_wall_s']:.0f} s"
             + (f"; this invocation {info['invocation_wall_s']:.0f} s "
                f"({info['rows_run_now']} rows run)" if info.get("invocation_wall_s") else "")
             + f". Finished {max((r['finished'] or '') for r in s['rows']) or '?'}."]
    if info.get("command"):
        lines.append(f"Command: `{info['command']}` (the arguments scripts/table{s['table']}.sh "
                     f"passed; per-row fairseq commands in table{s['table']}.json)")
    for e in extra_runs or ():
        lines.append(f"Also run: `{e.get('command')}` ({e.get('rows_run_now')} rows, "
                     f"{e.get('invocation_wall_s', 0):.0f} s)")
    return lines


def scaled_markdown(summary: Dict, run_info: Optional[Dict] = None,
                    extra_runs: Optional[List[Dict]] = None) -> str:
    """table<N>.md at CPU scale: the rows beside the paper's, the orderings, provenance."""
    s, sh = summary, summary["shape"]
    lines = [f"### CPU scale: {s['title']}", "",
             f"**CPU scale, not the paper's setup.** Every row: {sh['layers']} layers x "
             f"{sh['heads']} heads, d {sh['embed_dim']}, segment {sh['segment']}, windows and "
             f"full-attention lengths divided by {sh['factor']}, {sh['tokens_per_update']} tokens "
             f"per update, {sh['max_update']} updates, test bits per byte on `{s['dataset']}` "
             f"({s['test_bytes'] or '?'} test bytes; CPython's documentation topics). The "
             f"paper's columns are the paper's (Wikitext-103 PPL, enwik8 bpc, full scale).", "",
             "| Row | Windows (CPU run) | Rel. cost (CPU run) | Rel. cost (paper) | "
             "CPU-scale test bpc | other seeds | Paper WT103 PPL | Paper enwik8 bpc | "
             "updates | train tok/s | train + eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_scaled_row(r, s) for r in s["rows"]]
    lines += _scaled_ordering(s) + _scaled_footer(s, run_info or {}, extra_runs)
    return "\n".join(lines) + "\n"


def plot_scaled(summary: Dict, path: Path) -> Path:
    """Left: CPU-scale test bpc against relative cost; right: the paper's numbers."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    t = summary["table"]
    pd = summary["paper_ordering_dataset"]
    for ax, key, cost_key, label in (
            (a, "bpc", "relative_cost_run", "CPU scale: test bpc (pydoc-chars)"),
            (b, pd, "relative_cost_paper", f"paper: {pd} {METRIC.get(pd, '')}")):
        pts = []
        for r in summary["rows"]:
            y = r["bpc"] if key == "bpc" else (r["paper"].get(key) if key else None)
            x = r[cost_key] if r[cost_key] is not None else r["relative_cost_model"]
            if y is not None and x is not None:
                pts.append((x, y, r["row"]))
        if t == 5:
            for fam, color in (("SWA", "tab:blue"), ("MSWA", "tab:red")):
                sel = sorted((x, y) for x, y, r in pts if r.split(" ")[0] == fam)
                if sel:
                    ax.plot([x for x, _ in sel], [y for _, y in sel], marker="o", color=color,
                            label=fam)
            ax.legend(fontsize=8)
        else:
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], "o", color="tab:red")
        labels: Dict[tuple, List[str]] = {}
        for x, y, r in pts:  # rows on the same point share one label
            labels.setdefault((x, y), []).append(r)
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
        for r in summary["rows"] if key == "bpc" else ():
            x = r["relative_cost_run"]
            for v in r["other_seeds"].values():
                ax.plot([x], [v], "x", color="k", label=None)
        if not pts:
            ax.text(0.5, 0.5, "paper values unknown", ha="center", transform=ax.transAxes)
        else:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("relative cost (sum of windows, MSWA base = 1)")
        ax.set_ylabel(label + " (lower is better)")
        ax.grid(True, which="both", alpha=0.3)
    sh = summary["shape"]
    a.set_title(f"CPU scale (x = other seeds): {sh['layers']}x{sh['heads']}, "
                f"{sh['max_update']} updates", fontsize=9)
    b.set_title("paper (full scale)", fontsize=9)
    fig.suptitle(f"Table {t}", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    return path


def render_scaled(table: int, results_dir: Path, paper_path: Path,
                  run_info: Optional[Dict] = None) -> List[Path]:
    """results_dir/table<N>.{json,md,png} from results_dir/table<N>/<dataset>/*.json."""
    results = load_scaled(results_dir, table)
    if not results:
        raise FileNotFoundError(f"no results under {Path(results_dir) / f'table{table}'}: run "
                                f"scripts/table{table}.sh --scale <name> first")
    summary = scaled_summary(table, load_paper(paper_path), results)
    old = Path(results_dir) / f"table{table}.json"
    prev = json.loads(old.read_text(encoding="utf-8")) if old.is_file() else {}
    extra = list(prev.get("extra_runs") or [])
    if run_info is None:  # re-rendering keeps the runs' own information
        run_info = prev.get("run_info")
    elif prev.get("run_info") and prev["run_info"].get("rows_run_now", 0) > 0 and \
            run_info.get("rows_run_now", 0) < len(summary["rows"]):
        # a partial invocation (e.g. --seed 2 --rows a,b) beside the table's main run
        extra.append(run_info)
        run_info = prev["run_info"]
    summary["run_info"] = run_info or {}
    summary["extra_runs"] = extra
    base = Path(results_dir) / f"table{table}"
    write_text_atomic(base.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    write_text_atomic(base.with_suffix(".md"), scaled_markdown(summary, run_info, extra))
    png = plot_scaled(summary, base.with_suffix(".png"))
    return [base.with_suffix(".json"), base.with_suffix(".md"), png]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results-dir", type=Path, default=REPO / "results",
                    help="where table<N>/<dataset>/<row>.json live (default: results)")
    ap.add_argument("--paper", type=Path, default=REPO / "results" / "paper.json")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown output (default: <results-dir>/tables.md)")
    ap.add_argument("--tables", type=int, nargs="+", default=list(TABLES), choices=TABLES)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--scale", default=None,
                    help="render the scaled runs: <results-dir or results/SCALE>/table<N>.{md,json,png}")
    args = ap.parse_args(argv)
    if args.scale:
        rdir = args.results_dir if "--results-dir" in (argv or sys.argv) else \
            REPO / "results" / args.scale
        for t in args.tables:
            if not (rdir / f"table{t}").is_dir():
                print(f"table {t}: no {args.scale}-scale results under {rdir}: skipped")
                continue
            for p in render_scaled(t, rdir, args.paper):
                print(f"wrote {p}")
        return 0
    out = args.out or args.results_dir / "tables.md"
    written = render(args.results_dir, args.paper, out, args.tables, not args.no_plots)
    for p in written:
        print(f"wrote {p}")
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
