"""The evidence study: rows of the MSWA paper's Tables 2, 5 and 6 at a CPU scale where the models
can use their context, several seeds per row, learning curves, and every paper ordering judged
against the run-to-run noise.

    python scripts/evidence.py                 # run the queue (resumable), then the report
    python scripts/evidence.py --report-only   # the report from whatever has finished
    python scripts/evidence.py --dry-run       # the plan: every run, shared runs, commands

The study (``configs/tables/evidence.yaml``) is a queue of (table, rows, seeds) blocks, most
important first. Every run is a row of ``configs/tables/table<N>.yaml`` at setup.yaml's
``evidence`` scale, planned, trained and evaluated by scripts/reproduce.py's runner
(``plan_runs`` / ``execute``: fairseq-train with a progress bar, fairseq-eval-lm of the best
validation checkpoint on the test split, one JSON per run). Runs that would train the same model on
the same data with the same flags (Table 2's SWA and Table 5's SWA w = 128, ...) are trained once.

Resumable: a (row, seed) with a result JSON is kept and skipped; an unfinished one (killed
mid-run) starts again from scratch (its checkpoints are removed first, so that its learning curve
is whole). Runs go one at a time; fairseq's output goes to ``<runs-dir>/table<N>/<dataset>/<run>/``.
Nothing here times out, so pausing the process group (SIGSTOP / SIGCONT) only delays it.

The report (``results/evidence/evidence.{json,md,png}``) works on partial results: each row says
how many of its planned seeds finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

from studies.stats import judge, mean_and_std
from studies.run_utils import (
    machine_info, save_figure_atomic, write_json_atomic, write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "tables" / "evidence.yaml"


class EvidenceError(RuntimeError):
    """The study cannot be planned or run; the message names the fix."""


def _reproduce():
    """The tables' runner (plan_runs, execute, load_setup): studies.reproduce."""
    from . import reproduce

    return reproduce


# --- plan -------------------------------------------------------------------------------------

def load_study(path: Path = STUDY) -> Dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        study = yaml.safe_load(f)
    for key in ("scale", "tables", "queue"):
        if key not in study:
            raise EvidenceError(f"{path}: missing key {key!r}")
    for i, block in enumerate(study["queue"]):
        missing = [k for k in ("table", "rows", "seeds") if k not in block]
        if missing:
            raise EvidenceError(f"{path}: queue entry {i + 1} lacks {', '.join(missing)}")
    return study


class Item:
    """One (table, row, seed) of the study; ``shared`` is the item whose run it reuses."""

    def __init__(self, table: int, row: Dict, seed: int, run, block: int, why: str, opts=None):
        self.table, self.row, self.seed, self.run = table, row, seed, run
        self.block, self.why = block, why
        self.opts = opts  # the reproduce options it was planned with (paths for the record)
        self.shared: Optional["Item"] = None

    @property
    def name(self) -> str:
        return f"table {self.table} / {self.row['row']} / seed {self.seed}"

    @property
    def result(self) -> Path:
        return (self.shared or self).run.result


def _flag_values(cmd: Sequence[str]) -> Dict[str, object]:
    """``--key value`` / bare ``--key`` pairs of a fairseq command line."""
    out, i = {}, 0
    while i < len(cmd):
        tok = str(cmd[i])
        if tok.startswith("--"):
            nxt = str(cmd[i + 1]) if i + 1 < len(cmd) else "--"
            if nxt.startswith("--"):
                out[tok[2:]] = True
                i += 1
            else:
                out[tok[2:]] = nxt
                i += 2
        else:
            i += 1
    return out


def run_key(run) -> Tuple:
    """What decides a run's outcome: the data, the training flags other than the row's own, the
    resolved model's window schedule and memory (so equal models given by different flags, e.g.
    an explicit default, are one run). Paths (save / log folders) do not count."""
    rep = _reproduce()
    fl = _flag_values(run.train_cmd)
    for k in ("save-dir", "tensorboard-logdir"):
        fl.pop(k, None)
    ns = rep.resolve_model(run.meta["arch"], fl)
    _, sched = rep.model_schedule(ns)
    for k in run.meta["args"]:
        fl.pop(k, None)
    sched_json = sched.to_json() if sched is not None else None
    return (str(run.data), run.meta["max_memory"], sched_json, tuple(sorted(fl.items())))


def plan_study(study: Dict, setup: Dict, data_dir: Path, results_dir: Path, runs_dir: Path,
               max_update: Optional[int] = None, train_args: str = "") -> List[Item]:
    """Every (table, row, seed) of the queue, in queue order (seed by seed within a block, so
    that the pairs of a block complete one seed at a time), shared runs linked."""
    rep = _reproduce()
    items: List[Item] = []
    seen: Dict[Tuple, Item] = {}
    for b, block in enumerate(study["queue"]):
        table = int(block["table"])
        if table not in study["tables"]:
            raise EvidenceError(f"queue entry {b + 1}: table {table} is not in tables "
                                f"{study['tables']}")
        for seed in block["seeds"]:
            opts = SimpleNamespace(
                scale=study["scale"], smoke=False, datasets=None, rows=",".join(block["rows"]),
                data_dir=str(data_dir), results_dir=str(results_dir), runs_dir=str(runs_dir),
                save_root=str(Path(runs_dir) / "checkpoints"), gpus=1, batch_per_gpu=None,
                max_update=max_update, seed=int(seed), train_args=train_args, eval_args="",
                verbose=False)
            try:
                runs = rep.plan_runs(table, opts, setup)
            except rep.ReproError as e:
                raise EvidenceError(f"queue entry {b + 1}: {e}") from None
            for run in runs:
                item = Item(table, run.row, int(seed), run, b, block.get("why", ""), opts)
                key = run_key(run)
                if key in seen:
                    item.shared = seen[key]
                else:
                    seen[key] = item
                if any(i.table == table and i.row["id"] == run.row["id"] and i.seed == seed
                       for i in items):
                    raise EvidenceError(f"table {table} row {run.row['id']} seed {seed} is "
                                        f"queued twice")
                items.append(item)
    return items


# --- running ----------------------------------------------------------------------------------

def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def portable(obj):
    """A result with the repository's absolute paths made relative and the interpreter written as
    plain ``python`` (committed files name no machine's paths)."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str):
        if obj == sys.executable:
            return "python"
        return obj.replace(str(REPO) + os.sep, "")
    return obj


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_queue(items: List[Item], setup: Dict, force: bool = False, log=print) -> int:
    """Train + evaluate every unshared item that has no result yet, one at a time, in order.
    Returns the number of runs done now."""
    rep = _reproduce()
    todo = [i for i in items if i.shared is None and (force or not i.run.result.is_file())]
    owners = [i for i in items if i.shared is None]
    log(f"[evidence] {len(owners)} runs planned ({len(items)} table rows x seeds), "
        f"{len(owners) - len(todo)} finished, {len(todo)} to run")
    opts = SimpleNamespace(smoke=False, verbose=False)
    walls: List[float] = []
    commit = git_commit()
    for n, item in enumerate(todo, 1):
        eta = (f", queue ETA {_fmt_s(sum(walls) / len(walls) * (len(todo) - n + 1))}"
               if walls else "")
        log(f"[evidence] run {n}/{len(todo)}: {item.name} ({item.why}){eta}")
        if item.run.save_dir.exists():  # an interrupted run: start it over (a whole curve)
            log(f"[evidence] {item.run.save_dir} holds an unfinished run: starting it again")
            shutil.rmtree(item.run.save_dir)
        t0 = time.time()
        try:
            res = rep.execute(item.run, setup, item.opts if item.opts is not None else opts)
        except rep.ReproError as e:
            raise EvidenceError(str(e)) from None
        res = portable({**res, "git_commit": commit, "study": "evidence"})
        write_json_atomic(item.run.result, res)
        walls.append(time.time() - t0)
    return len(todo)


def valid_curve_bpc(res: Dict, valid_split: Dict) -> List[List[float]]:
    """[[update, validation bits per byte], ...] of one run (fairseq's validation loss is bits
    per symbol; the split's symbols / bytes convert it), one point per update."""
    ratio = valid_split["symbols"] / valid_split["bytes"] if valid_split else 1.0
    pts = {int(p["updates"]): float(p["loss_base2"]) * ratio for p in res.get("valid_curve", [])}
    return [[u, round(pts[u], 5)] for u in sorted(pts)]


def tail_change(curve: List[List[float]], fraction: float = 0.1) -> Optional[Dict]:
    """Least-squares slope of the curve over its last ``fraction`` of updates: bpc per 1,000
    updates and the change it makes over that stretch (None with fewer than 2 points there)."""
    if not curve:
        return None
    last = curve[-1][0]
    start = last * (1 - fraction)
    pts = [(u, y) for u, y in curve if u >= start - 1e-9]
    if len(pts) < 2:
        return None
    mu = sum(u for u, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((u - mu) ** 2 for u, _ in pts)
    slope = sum((u - mu) * (y - my) for u, y in pts) / var
    return {"from_update": pts[0][0], "to_update": last, "points": len(pts),
            "slope_bpc_per_1k_updates": round(slope * 1000, 5),
            "change_bpc": round(slope * (last - start), 5)}


def _paper_claims(table: int, paper: Dict, study: Dict) -> List[Dict]:
    """The paper's orderings [better, worse] among a table's rows: by enwik8 bpc where both are
    reported and differ (our corpus is byte level), else by Wikitext-103 perplexity; Table 6 from
    the paper's text (study's text_claims)."""
    rows = paper["tables"][str(table)]["rows"]
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            for d in ("enwik8", "wikitext-103"):
                va, vb = a.get(d), b.get(d)
                if va is None or vb is None or va == vb:
                    continue
                better, worse = (a, b) if va < vb else (b, a)
                out.append({"a": better["row"], "b": worse["row"],
                            "paper": f"{d} {better[d]} < {worse[d]}"})
                break
    for better, worse in (study.get("text_claims") or {}).get(table, []):
        out.append({"a": better, "b": worse, "paper": "paper's text (no values in our copy)"})
    return out


def summarize(items: List[Item], study: Dict, paper: Dict, data_dir: Path) -> Dict:
    """Rows (per-seed bpc and curves, mean and std), pairs (paired differences and verdicts) and
    the study's status, from the result JSONs that exist."""
    confidence = float(study.get("confidence", 0.95))
    flat = float(study.get("flat_bpc", 0.01))
    dataset = items[0].run.dataset if items else None
    corpus_info = load_corpus_info(data_dir, dataset)
    splits = corpus_info.get("splits", {})
    results = load_results(items)
    rows = summarize_rows(items, study, results, splits, flat)
    pairs, pooled = judge_pairs(paper_pairs(rows, study, paper), confidence)
    owners = [i for i in items if i.shared is None]
    m = owners[0].run.meta if owners else {}
    return {
        "corpus": corpus_record(dataset, corpus_info, m),
        "setup": {k: m.get(k) for k in ("layers", "heads", "embed_dim", "segment",
                                         "tokens_per_update", "max_update", "arch", "scale",
                                         "factor")},
        "rows": rows, "pairs": pairs,
        "run_torch_threads": sorted({str((r.get("machine") or {}).get("torch_threads"))
                                     for r in results.values()}),
        "statistics": {
            "diff": "bpc[b] - bpc[a] at the same seed; a is the paper's better row, so a "
                    "positive difference agrees with the paper",
            "confidence": confidence,
            "verdict": "holds: the confidence interval of the mean difference lies above 0; "
                       "reversed: below 0; within noise: it contains 0",
            **pooled,
            "flat_bpc": flat,
            "tail": "least-squares slope of the validation curve over the last 10 % of updates",
        },
        "status": study_status(items, study, rows),
    }


def load_corpus_info(data_dir: Path, dataset: Optional[str]) -> Dict:
    """The corpus's ``prepared.json`` (source, plays, splits' bytes and symbols) under
    ``data_dir``; {} when there is none."""
    prepared = Path(data_dir) / dataset / "prepared.json" if dataset else None
    return (json.loads(prepared.read_text(encoding="utf-8"))
            if prepared and prepared.is_file() else {})


def load_results(items: List[Item]) -> Dict[Path, Dict]:
    """{result path: its JSON} of every item whose run has finished (a shared run once)."""
    results: Dict[Path, Dict] = {}
    for it in items:
        p = it.result
        if p not in results and p.is_file():
            results[p] = json.loads(p.read_text(encoding="utf-8"))
    return results


def seed_record(it: Item, res: Dict, splits: Dict, flat: float) -> Dict:
    """One finished seed of a row: its test bpc, validation curve and the curve's tail (``flat``
    when it changes by less than ``flat`` bpc), updates, times and where it came from."""
    curve = valid_curve_bpc(res, splits.get("valid", {}))
    tail = tail_change(curve)
    tr = res.get("train", {})
    return {
        "seed": it.seed, "bpc": round(res["value"], 5), "curve": curve,
        "tail": tail, "flat": None if tail is None else abs(tail["change_bpc"]) < flat,
        "updates": tr.get("updates"), "train_wall_s": tr.get("wall_s"),
        "eval_wall_s": res.get("eval_wall_s"), "train_tokens_per_s":
            res.get("train_tokens_per_s"), "finished": res.get("finished"),
        "git_commit": res.get("git_commit"),
        "run": str(portable(str(it.result))),
    }


def row_record(table: int, name: str, its: List[Item], seeds: List[Dict]) -> Dict:
    """One (table, row) of the report from its items (seed order) and finished ``seeds``
    (:func:`seed_record`): cost, status, mean and std of the bpc, the mean tail change."""
    mean, std = mean_and_std([s["bpc"] for s in seeds])
    first = its[0]
    shared = sorted({f"Table {i.shared.table} / {i.shared.row['row']}" for i in its
                     if i.shared is not None})
    planned = len(its)
    done = len(seeds)
    status = ("complete" if done == planned else "not run" if done == 0
              else f"partial: {done} of {planned} seeds")
    tails = [s["tail"]["change_bpc"] for s in seeds if s["tail"]]
    w = first.run.meta["cost"]["windows"]
    return {
        "table": table, "row": name, "row_id": first.row["id"],
        "windows": None if not w else ("full" if w[0] is None else w),
        "relative_cost": round(first.run.meta["cost"]["relative_cost"], 4),
        "planned_seeds": [i.seed for i in its], "n_seeds": done, "status": status,
        "label": ("one seed (no spread)" if planned == 1 else f"{planned} seeds planned"),
        "same_run_as": shared[0] if shared else None,
        "mean_bpc": None if mean is None else round(mean, 5),
        "std_bpc": None if std is None else round(std, 5),
        "mean_tail_change_bpc": None if not tails else round(sum(tails) / len(tails), 5),
        "seeds": seeds,
    }


def summarize_rows(items: List[Item], study: Dict, results: Dict[Path, Dict], splits: Dict,
                   flat: float) -> List[Dict]:
    """Every (table, row) of the study as :func:`row_record`, in the tables' own row order
    (the study's tables first to last), its seeds from ``results``."""
    by_row: Dict[Tuple[int, str], List[Item]] = {}
    for it in items:
        by_row.setdefault((it.table, it.row["row"]), []).append(it)
    order = {}
    for t in study["tables"]:
        for k, r in enumerate(_reproduce().load_table(int(t))["rows"]):
            order[(int(t), r["row"])] = (study["tables"].index(t), k)
    rows = []
    for (table, name) in sorted(by_row, key=lambda k: order.get(k, (99, 99))):
        its = sorted(by_row[(table, name)], key=lambda i: i.seed)
        seeds = [seed_record(it, results[it.result], splits, flat) for it in its
                 if results.get(it.result) is not None]
        rows.append(row_record(table, name, its, seeds))
    return rows


def paper_pairs(rows: List[Dict], study: Dict, paper: Dict) -> List[Tuple]:
    """The paper's orderings (:func:`_paper_claims`) between rows of the study, paired by seed:
    (table, claim, common seeds, bpc[b] - bpc[a] per seed, (a's runs, b's runs))."""
    index = {(r["table"], r["row"]): r for r in rows}
    raw_pairs = []
    for t in study["tables"]:
        for c in _paper_claims(int(t), paper, study):
            ra, rb = index.get((int(t), c["a"])), index.get((int(t), c["b"]))
            if ra is None or rb is None:
                continue
            sa = {s["seed"]: s["bpc"] for s in ra["seeds"]}
            sb = {s["seed"]: s["bpc"] for s in rb["seeds"]}
            common = sorted(set(sa) & set(sb))
            diffs = [sb[s] - sa[s] for s in common]
            runs = (tuple(x["run"] for x in ra["seeds"]), tuple(x["run"] for x in rb["seeds"]))
            raw_pairs.append((int(t), c, common, diffs, runs))
    return raw_pairs


def judge_pairs(raw_pairs: List[Tuple], confidence: float) -> Tuple[List[Dict], Dict]:
    """Each pair of :func:`paper_pairs` judged (:func:`studies.stats.judge`: its own Student-t
    interval, a one-seed pair against the pooled spread), and the pooled spread itself
    ({pooled_std_diff, pooled_df, pooled_pairs}), which counts each pair of runs once (Table
    2's MSWA vs SWA is Table 5's)."""
    once = {runs: d for _, _, _, d, runs in raw_pairs if len(d) >= 2}
    multi = [(len(d) - 1, mean_and_std(d)[1]) for d in once.values()]
    pooled_df = sum(df for df, _ in multi)
    pooled_sd = (math.sqrt(sum(df * s * s for df, s in multi) / pooled_df) if pooled_df else None)
    pairs = []
    for t, c, common, diffs, _ in raw_pairs:
        mean, std = mean_and_std(diffs)
        verdict, lo, hi, basis = judge(diffs, confidence, pooled_sd, pooled_df, len(multi))
        pairs.append({
            "table": t, "a": c["a"], "b": c["b"], "paper": c["paper"], "n_seeds": len(diffs),
            "seeds": common, "diffs": [round(d, 5) for d in diffs],
            "mean_diff": None if mean is None else round(mean, 5),
            "std_diff": None if std is None else round(std, 5),
            "ci": None if lo is None else [round(lo, 5), round(hi, 5)],
            "verdict": verdict, "basis": basis,
        })
    return pairs, {"pooled_std_diff": None if pooled_sd is None else round(pooled_sd, 5),
                   "pooled_df": pooled_df, "pooled_pairs": len(multi)}


def corpus_record(dataset: Optional[str], corpus_info: Dict, meta: Dict) -> Dict:
    """The corpus as the report states it: name, source, split sizes and the epochs a run
    trains (``meta``: a run's plan, its updates and tokens per update)."""
    splits = corpus_info.get("splits", {})
    train_bytes = splits.get("train", {}).get("bytes")
    max_update = meta.get("max_update")
    return {
        "name": dataset, "train_bytes": train_bytes, "source": corpus_info.get("source"),
        "plays": corpus_info.get("plays"), "source_sha256": corpus_info.get("archive_sha256"),
        "valid_bytes": splits.get("valid", {}).get("bytes"),
        "test_bytes": splits.get("test", {}).get("bytes"),
        "epochs": (None if not (train_bytes and max_update) else
                   round(max_update * meta["tokens_per_update"] / train_bytes, 3)),
    }


def study_status(items: List[Item], study: Dict, rows: List[Dict]) -> Dict:
    """How far the study is: runs planned and finished (shared runs counted once), rows
    complete / partial / not run, and the same per queue block."""
    owners = [i for i in items if i.shared is None]
    done_runs = sum(1 for i in owners if i.run.result.is_file())
    blocks = []
    for b, block in enumerate(study["queue"]):
        mine = [i for i in items if i.block == b]
        own = [i for i in mine if i.shared is None]
        blocks.append({"why": block.get("why", ""), "table": int(block["table"]),
                       "rows": list(block["rows"]), "seeds": list(block["seeds"]),
                       "planned_runs": len(own),
                       "finished_runs": sum(1 for i in own if i.run.result.is_file()),
                       "shared_runs": len(mine) - len(own)})
    return {
        "planned_runs": len(owners), "finished_runs": done_runs,
        "planned_rows": len(rows),
        "complete_rows": sum(r["status"] == "complete" for r in rows),
        "partial_rows": sum(r["status"].startswith("partial") for r in rows),
        "rows_not_run": sum(r["status"] == "not run" for r in rows),
        "complete": done_runs == len(owners),
        "queue": blocks,
    }


def compare_with_baseline(s: Dict, baseline: Dict, source: str) -> Dict:
    """Every row of this study (run with extra training flags, e.g. ``--learned-sinks``) against
    the same (table, row) of a baseline study's ``evidence.json``, paired by seed:
    d = bpc[baseline] - bpc[this] (d > 0: the flags help). Verdicts as the paper's orderings:
    the Student-t interval of the mean d, one-seed pairs against the baseline's pooled spread."""
    stats = baseline.get("statistics", {})
    pooled_sd, pooled_df = stats.get("pooled_std_diff"), int(stats.get("pooled_df") or 0)
    confidence = float(s["statistics"]["confidence"])
    base = {(r["table"], r["row"]): {x["seed"]: x["bpc"] for x in r["seeds"]}
            for r in baseline.get("rows", [])}
    pairs = []
    for r in s["rows"]:
        sb = base.get((r["table"], r["row"]))
        if sb is None:
            continue
        sa = {x["seed"]: x["bpc"] for x in r["seeds"]}
        common = sorted(set(sa) & set(sb))
        diffs = [sb[k] - sa[k] for k in common]
        verdict, lo, hi, basis = judge(diffs, confidence, pooled_sd, pooled_df,
                                       stats.get("pooled_pairs", 0))
        mean, std = mean_and_std(diffs)
        pairs.append({
            "table": r["table"], "row": r["row"], "n_seeds": len(diffs), "seeds": common,
            "baseline_bpc": [round(sb[k], 5) for k in common],
            "bpc": [round(sa[k], 5) for k in common], "diffs": [round(d, 5) for d in diffs],
            "mean_diff": None if mean is None else round(mean, 5),
            "std_diff": None if std is None else round(std, 5),
            "ci": None if lo is None else [round(lo, 5), round(hi, 5)],
            "verdict": {"holds": "better", "reversed": "worse"}.get(verdict, verdict),
            "basis": basis,
        })
    return {"results": source, "diff": "bpc[baseline] - bpc[this study] at the same seed "
                                       "(> 0: this study's training flags help)",
            "pooled_std_diff": pooled_sd, "pooled_df": pooled_df, "pairs": pairs}


# --- report -----------------------------------------------------------------------------------

def _f(v, digits=3, signed=False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


def _md_header(s: Dict) -> List[str]:
    """Title, status, corpus and model, and the run queue."""
    c, st, su = s["corpus"], s["status"], s["setup"]
    lines = [
        "# Evidence study: the MSWA paper's orderings against run-to-run noise", "",
        f"**Status: {st['finished_runs']} of {st['planned_runs']} planned runs finished** "
        f"({st['complete_rows']} rows complete, {st['partial_rows']} partial, "
        f"{st['rows_not_run']} not run){'' if st['complete'] else ' - partial results'}.", "",
        f"Corpus `{c['name']}`: {_n(c['train_bytes'])} train bytes, {_n(c['valid_bytes'])} "
        f"valid, {_n(c['test_bytes'])} test bytes ({c['plays']} Shakespeare plays: {c['source']}); "
        f"every run sees "
        f"{_f(c['epochs'], 2)} epochs of it. Model: Transformer-XL {su['layers']} layers x "
        f"{su['heads']} heads, d {su['embed_dim']}, segment {su['segment']}, windows and "
        f"full-attention lengths = the paper's / {su['factor']}, {su['tokens_per_update']} tokens "
        f"per update, {su['max_update']} updates, cosine schedule. Test bits per byte from "
        f"fairseq-eval-lm (best validation checkpoint).", "",
        "Run queue, most important first (a later invocation resumes it):", "",
        "| # | Block | Table | Rows | Seeds | Runs finished |", "|---|---|---|---|---|---|",
    ]
    for k, b in enumerate(st["queue"], 1):
        runs = (f"{b['finished_runs']} of {b['planned_runs']}" if b["planned_runs"]
                else f"shared ({b['shared_runs']} rows run elsewhere)")
        lines.append(f"| {k} | {b['why']} | {b['table']} | {', '.join(b['rows'])} | "
                     f"{', '.join(map(str, b['seeds']))} | {runs} |")
    return lines


def _md_row(r: Dict) -> str:
    w = r["windows"]
    wtxt = "-" if w is None else "full" if w == "full" else (
        f"{w[0]}..{w[1]}" if w[0] != w[1] else str(w[0]))
    per = ", ".join(f"{x['seed']}: {x['bpc']:.3f}" for x in r["seeds"]) or "-"
    flats = [x["flat"] for x in r["seeds"] if x["flat"] is not None]
    flat = "-" if not flats else ("yes" if all(flats) else "no" if not any(flats)
                                  else f"{sum(flats)} of {len(flats)}")
    status = r["status"] + (f"; same runs as {r['same_run_as']}" if r["same_run_as"] else "")
    return (f"| {r['table']} | {r['row']} | {wtxt} | {r['relative_cost']:.2f} | "
            f"{r['n_seeds']}/{len(r['planned_seeds'])} | {status} | "
            f"{_f(r['mean_bpc'])} | {_f(r['std_bpc'])} | {per} | "
            f"{_f(r['mean_tail_change_bpc'], 3, True)} | {flat} |")


def _md_rows(s: Dict) -> List[str]:
    """Every row: seeds, mean and std test bpc, whether its curves ended flat."""
    stt = s["statistics"]
    return ["", "## Rows", "",
            "| Table | Row | Windows | Rel. cost | Seeds | Status | Mean test bpc | Std | Per seed "
            "| Last-10% valid change | Flat? |",
            "|---|---|---|---|---|---|---|---|---|---|---|"] + [_md_row(r) for r in s["rows"]] + [
        "", "Last-10% valid change: the least-squares slope of the validation bpc over the last "
        f"10 % of updates times that stretch (flat = less than {stt['flat_bpc']} bpc). The cosine "
        "schedule takes the learning rate to 0 at the end, which flattens every curve; a curve that "
        "still falls there has not converged."]


def _md_interval(p: Dict) -> str:
    return "-" if p["ci"] is None else f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]"


def _md_pairs(s: Dict) -> List[str]:
    """The paper's orderings: paired differences and verdicts, and their tally."""
    stt = s["statistics"]
    lines = [
        "", "## The paper's orderings", "",
        f"Paired difference d = bpc[b] - bpc[a] per seed (a = the paper's better row; d > 0 agrees "
        f"with the paper). Verdict from the {stt['confidence']:.0%} Student-t interval of the mean "
        f"d: holds (above 0), reversed (below 0), within noise (contains 0). One-seed pairs use the "
        f"spread of d pooled over the multi-seed pairs (std {_f(stt['pooled_std_diff'], 4)}, "
        f"{stt['pooled_df']} degrees of freedom).", "",
        "| Table | a (paper: better) | b | Paper | Seeds | Mean d | Std d | Interval | Verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in s["pairs"]:
        lines.append(f"| {p['table']} | {p['a']} | {p['b']} | {p['paper']} | {p['n_seeds']} | "
                     f"{_f(p['mean_diff'], 3, True)} | {_f(p['std_diff'])} | {_md_interval(p)} | "
                     f"**{p['verdict']}**{'' if p['n_seeds'] != 1 else ' (1 seed)'} |")
    counts: Dict[str, int] = {}
    for p in s["pairs"]:
        counts[p["verdict"]] = counts.get(p["verdict"], 0) + 1
    return lines + ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."]


def _md_baseline(s: Dict) -> List[str]:
    """This study against a baseline study (same runs but for the extra flags); [] without one."""
    bl, stt = s.get("baseline"), s["statistics"]
    if not bl:
        return []
    lines = [
        "", f"## Against the baseline study (`{bl['results']}`)", "",
        f"Paired difference d = bpc[baseline] - bpc[this study] per seed (same data, model and "
        f"seed; only the extra flags differ; d > 0: they help). Verdict: better / worse / "
        f"within noise from the {stt['confidence']:.0%} interval of the mean d; one-seed pairs "
        f"use the baseline's pooled spread (std {_f(bl['pooled_std_diff'], 4)}).", "",
        "| Table | Row | Seeds | Baseline bpc | This study | Mean d | Std d | Interval | "
        "Verdict |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in bl["pairs"]:
        lines.append(
            f"| {p['table']} | {p['row']} | {p['n_seeds']} | "
            f"{', '.join(f'{x:.3f}' for x in p['baseline_bpc']) or '-'} | "
            f"{', '.join(f'{x:.3f}' for x in p['bpc']) or '-'} | "
            f"{_f(p['mean_diff'], 3, True)} | {_f(p['std_diff'])} | {_md_interval(p)} | "
            f"**{p['verdict']}** |")
    return lines


def render_markdown(s: Dict, info: Dict) -> str:
    """evidence.md: header and queue, rows, the paper's orderings, the baseline comparison (when
    there is one), the plot and the provenance."""
    lines = _md_header(s) + _md_rows(s) + _md_pairs(s)
    if s.get("train_args"):
        lines += ["", f"Every run of this study trains with the extra flags `{s['train_args']}`."]
    lines += _md_baseline(s)
    m = info["machine"]
    lines += ["", "![learning curves and test bpc](evidence.png)", "",
              f"Command: `{info['command']}`. Measured at commit {info['git_commit']}, report "
              f"{info['date']}. Machine: {m.get('cpu_model')}, {m.get('cpu_count')} CPUs shared "
              f"with other work, {m.get('torch_threads')} torch thread(s) per run, torch "
              f"{m.get('torch')}; wall times include time the study was paused."]
    return "\n".join(lines) + "\n"


def plot(s: Dict, tables: Sequence[int], path: Path) -> Path:
    """One learning-curve panel per table (validation bpc against updates; thin lines = seeds,
    thick = their mean) and a panel of test bpc per row (dots = seeds, bar = mean)."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tables) + 1
    cols = 2
    fig, axes = plt.subplots((n + 1) // cols, cols, figsize=(12, 4.2 * ((n + 1) // cols)),
                             squeeze=False)
    axes = axes.ravel()
    cmap = plt.get_cmap("tab10")
    for ax, t in zip(axes, tables):
        rows = [r for r in s["rows"] if r["table"] == t and r["seeds"]]
        lows, highs = [], []
        for k, r in enumerate(rows):
            color = cmap(k % 10)
            curves = [x["curve"] for x in r["seeds"] if x["curve"]]
            for cv in curves:
                ax.plot([u for u, _ in cv], [y for _, y in cv], color=color, lw=0.6, alpha=0.5)
            common = sorted(set.intersection(*[{u for u, _ in cv} for cv in curves])) \
                if curves else []
            if common:
                mean = [sum(dict(map(tuple, cv))[u] for cv in curves) / len(curves)
                        for u in common]
                ax.plot(common, mean, color=color, lw=1.8,
                        label=f"{r['row']} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
                lows.append(min(mean))
                highs.append(mean[min(len(mean) - 1, max(1, len(mean) // 4))])
        if lows:
            ax.set_ylim(min(lows) - 0.03, max(highs) + 0.03)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", transform=ax.transAxes)
        ax.set_title(f"Table {t}: validation bpc", fontsize=10)
        ax.set_xlabel("updates")
        ax.set_ylabel("validation bits per byte")
        ax.grid(True, alpha=0.3)
    ax = axes[len(tables)]
    done = [r for r in s["rows"] if r["seeds"] and not r["same_run_as"]]  # each run once
    for k, r in enumerate(done):
        ys = [x["bpc"] for x in r["seeds"]]
        color = cmap(tables.index(r["table"]) % 10) if r["table"] in tables else "k"
        ax.plot([k] * len(ys), ys, "o", color=color, ms=4, alpha=0.6)
        ax.errorbar([k], [r["mean_bpc"]], yerr=[r["std_bpc"] or 0], fmt="_", color="k", ms=14,
                    capsize=4)
    ax.set_xticks(range(len(done)))
    also: Dict[str, List[str]] = {}
    for r in s["rows"]:
        if r["same_run_as"]:
            also.setdefault(r["same_run_as"], []).append(f"T{r['table']} {r['row']}")
    ax.set_xticklabels([" = ".join([f"T{r['table']} {r['row']}"]
                                   + also.get(f"Table {r['table']} / {r['row']}", []))
                        for r in done], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("test bits per byte")
    ax.set_title("Test bpc per run row (dots = seeds, bar = mean +- std)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(tables) + 1:]:
        ax.axis("off")
    c = s["corpus"]
    fig.suptitle(f"Evidence study on {c['name']} ({s['status']['finished_runs']} of "
                 f"{s['status']['planned_runs']} runs finished)", fontsize=11)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi=110)


def report(items: List[Item], study: Dict, data_dir: Path, out_dir: Path,
           command: str, train_args: str = "", baseline: Optional[Path] = None) -> List[Path]:
    """results/evidence/evidence.{json,md,png} from the finished runs (``baseline``: a study's
    results folder to pair every row with, :func:`compare_with_baseline`)."""
    paper = json.loads((REPO / "results" / "paper.json").read_text(encoding="utf-8"))
    s = summarize(items, study, paper, data_dir)
    s["train_args"] = train_args
    if baseline is not None:
        path = Path(baseline) / "evidence.json"
        if not path.is_file():
            raise EvidenceError(f"--baseline {baseline}: no evidence.json there; run that study "
                                "(or its --report-only) first, or leave --baseline out")
        s["baseline"] = compare_with_baseline(s, json.loads(path.read_text(encoding="utf-8")),
                                              str(portable(str(Path(baseline).resolve()))))
    threads = s["run_torch_threads"][0] if len(s["run_torch_threads"]) == 1 else None
    info = {"command": command, "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": machine_info(threads=int(threads) if threads and threads.isdigit()
                                    else None)}
    s.update(info)
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "evidence.json", portable(s))
    write_text_atomic(out_dir / "evidence.md", render_markdown(s, info))
    png = plot(s, [int(t) for t in study["tables"]], out_dir / "evidence.png")
    return [out_dir / "evidence.json", out_dir / "evidence.md", png]


# --- CLI --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python scripts/evidence.py",
        description="The evidence study: Tables 2, 5, 6 at CPU scale, several seeds, learning "
                    "curves, the paper's orderings against the noise.")
    ap.add_argument("--study", type=Path, default=STUDY, help="the study's queue (YAML)")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data-bin",
                    help="folder holding the corpus (prepared on first use)")
    ap.add_argument("--results-dir", type=Path, default=REPO / "results" / "evidence",
                    help="per-run JSONs (table<N>/...) and evidence.{json,md,png}")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "evidence",
                    help="fairseq logs and checkpoints")
    ap.add_argument("--max-update", type=int, default=None,
                    help="override the scale's updates (quick tests only: results then differ "
                         "from the study's)")
    ap.add_argument("--train-args", default="",
                    help="extra fairseq-train flags of every run (a variant study, e.g. "
                         "--train-args=--learned-sinks; tests)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="results folder of a study without the extra flags (its evidence.json): "
                         "every row is paired with its row there, seed by seed")
    ap.add_argument("--report-only", action="store_true", help="run nothing; report what exists")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--force", action="store_true", help="re-run runs that have a result")
    return ap


def _command(argv: Sequence[str]) -> str:
    parts = ["python", "scripts/evidence.py"]
    for a in argv:
        parts.append(str(portable(str(a))))
    return " ".join(shlex.quote(p) for p in parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rep = _reproduce()
    try:
        study = load_study(args.study)
        setup = rep.load_setup()
        items = plan_study(study, setup, args.data_dir, args.results_dir, args.runs_dir,
                           args.max_update, args.train_args)
        if args.dry_run:
            for it in items:
                if it.shared is not None:
                    print(f"{it.name}: same run as {it.shared.name}")
                else:
                    done = "done" if it.run.result.is_file() else "to run"
                    print(f"{it.name} [{done}]: "
                          + " ".join(shlex.quote(str(c)) for c in it.run.train_cmd))
            return 0
        if not args.report_only:
            dataset = items[0].run.dataset
            if dataset != "shakespeare-chars":
                raise EvidenceError(f"the study knows how to prepare shakespeare-chars only, "
                                    f"not {dataset!r}")
            if not (args.data_dir / dataset / "prepared.json").is_file():
                from data_prep.shakespeare import prepare_shakespeare

                prepare_shakespeare(args.data_dir)
            run_queue(items, setup, force=args.force)
        written = report(items, study, args.data_dir, args.results_dir, _command(argv),
                         args.train_args, args.baseline)
    except EvidenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # data_prep's DataPrepError (the corpus could not be prepared)
        if type(e).__name__ != "DataPrepError":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(f"wrote {p}")
    return 0
