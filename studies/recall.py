"""Recall at distance: how far back can each window schedule retrieve, at what cost?

    python scripts/recall.py                 # the study (resumable), then the report
    python scripts/recall.py --report-only   # the report from whatever has finished
    python scripts/recall.py --dry-run       # the plan: every run and its commands

Every run trains one model on the ``recall`` task (multi-query associative recall with the
distance under control, ``fairseq_mswa/tasks/recall.py``) with fairseq-train, then scores its last
checkpoint on the test split with fairseq-validate (accuracy of every distance bucket, exact
counts). Models: ``transformer_xl_mswa`` with full attention, SWA, MSWA, MSWA-h and MSWA-l at equal
layers and width; ``linear_mswa`` with linear attention + SWA and + MSWA (Table 3's pair). Three
seeds each (the seed of the model and of the data order; the data are the same sequences).

Stages: :func:`plan` (the runs), :func:`run_one` (train + test, one JSON per run; a run with a
JSON is skipped, an unfinished one starts again), :func:`summarize` (mean, seed spread, paired
verdicts MSWA vs SWA per bucket), :func:`render_markdown` and :func:`plot`. Full logs go to
``<runs-dir>/<run>/{train,test}.log``; one run at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_mswa.cost import hybrid_cost
from fairseq_mswa.models.linear_mswa import expand_layer_pattern
from fairseq_mswa.schedule import build_schedule
from studies.run_utils import (
    REPO_ROOT, USER_DIR, commit_text, git_commit, git_dirty, provenance, run_fairseq,
    save_figure_atomic, script_command, utc_now, write_json_atomic, write_text_atomic,
)
from studies.stats import judge, mean_and_std

OUT = REPO_ROOT / "results" / "recall"
RUNS = REPO_ROOT / "runs" / "recall"

# The task: 128 input tokens, 8 pairs (keys and values from 16 symbols each, chance 1/16),
# distances drawn evenly over (1, 4], (4, 8], ..., (64, 128] (the last bucket holds 65..127).
TASK = {"tokens_per_sample": 128, "num_pairs": 8, "num_keys": 16, "num_values": 16,
        "num_fillers": 16, "distance_buckets": "1,4,8,16,32,64,128",
        "train_sequences": 100000, "valid_sequences": 500, "test_sequences": 2000, "data_seed": 1}
TRAIN = {"batch_size": 32, "lr": 3e-3, "warmup_updates": 100, "max_update": 1000,
         "validate_interval_updates": 250}
BASE_WINDOW = 16
XL = {"decoder_layers": 4, "decoder_embed_dim": 64, "decoder_ffn_embed_dim": 128,
      "decoder_attention_heads": 4}
LINEAR = {"decoder_layers": 6, "layer_pattern": "LAA", "decoder_embed_dim": 64,
          "decoder_ffn_embed_dim": 128, "decoder_attention_heads": 4, "feature_dim": 16,
          "linear_chunk_size": 32}
SEEDS = (1, 2, 3)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Model:
    name: str
    arch: str
    pattern: str
    shape: Dict = field(hash=False)

    @property
    def label(self) -> str:
        family = "XL" if self.arch == "transformer_xl_mswa" else "linear +"
        return f"{family} {self.pattern.upper() if self.pattern != 'full' else 'full'}"


MODELS = [
    Model("xl_full", "transformer_xl_mswa", "full", XL),
    Model("xl_swa", "transformer_xl_mswa", "swa", XL),
    Model("xl_mswa", "transformer_xl_mswa", "mswa", XL),
    Model("xl_mswa-h", "transformer_xl_mswa", "mswa-h", XL),
    Model("xl_mswa-l", "transformer_xl_mswa", "mswa-l", XL),
    Model("linear_swa", "linear_mswa", "swa", LINEAR),
    Model("linear_mswa", "linear_mswa", "mswa", LINEAR),
]
PAIRS = [("xl_mswa", "xl_swa"), ("xl_mswa-h", "xl_swa"), ("xl_mswa-l", "xl_swa"),
         ("linear_mswa", "linear_swa")]


class RecallStudyError(RuntimeError):
    """The study cannot be run or reported; the message names the fix."""


# --- what each model can reach ---------------------------------------------------------------

def schedule_of(model: Model):
    """The window schedule of the model's softmax layers (the local layers of a hybrid)."""
    layers = model.shape["decoder_layers"]
    if model.arch == "linear_mswa":
        layers = expand_layer_pattern(model.shape["layer_pattern"], layers).count("A")
    return build_schedule(layers, model.shape["decoder_attention_heads"], BASE_WINDOW,
                          pattern=model.pattern)


def reach(model: Model) -> Dict:
    """The largest window (one head's direct reach), the receptive field (the sum over layers
    of each layer's largest window - 1: what stacked windows could relay; a hybrid's linear
    layers see the whole sequence, so its field is all of it) and the cost relative to the same
    family's SWA at the sequence length (``WindowSchedule.cost``; a hybrid's linear layers
    counted by ``fairseq_mswa.cost.hybrid_cost``)."""
    sched = schedule_of(model)
    n = TASK["tokens_per_sample"]
    maxes = [sched.max_window(i) for i in range(sched.num_layers)]
    full = any(m is None for m in maxes)
    swa = build_schedule(sched.num_layers, sched.num_heads, BASE_WINDOW, pattern="swa")
    if model.arch == "linear_mswa":
        shape = model.shape
        pattern = expand_layer_pattern(shape["layer_pattern"], shape["decoder_layers"])
        heads, dim = shape["decoder_attention_heads"], shape["decoder_embed_dim"]

        def cost(s):
            return hybrid_cost(pattern, s, n, heads, dim // heads, shape["feature_dim"])
        field = None
    else:
        def cost(s):
            return s.cost(n)
        field = None if full else sum(m - 1 for m in maxes)
    return {"largest_window": None if full else max(maxes), "receptive_field": field,
            "relative_cost": round(cost(sched) / cost(swa), 4), "windows": sched.to_json()}


# --- plan and run ----------------------------------------------------------------------------

def _flags(options: Dict) -> List[str]:
    out = []
    for key, value in options.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def train_command(model: Model, seed: int, save_dir: Path, train: Dict = TRAIN) -> List[str]:
    return ([sys.executable, "-m", "fairseq_cli.train", "--user-dir", str(USER_DIR),
             "--task", "recall", "--criterion", "recall_cross_entropy", "--arch", model.arch]
            + _flags(model.shape) + _flags(TASK) + _flags(train)
            + ["--attn-pattern", model.pattern, "--base-window", str(BASE_WINDOW),
               "--dropout", "0", "--optimizer", "adam", "--lr-scheduler", "inverse_sqrt",
               "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "json",
               "--log-interval", "100", "--cpu", "--num-workers", "0", "--seed", str(seed)])


def test_command(save_dir: Path) -> List[str]:
    return [sys.executable, "-m", "fairseq_cli.validate", "--user-dir",
            str(USER_DIR), "--task", "recall", "--criterion",
            "recall_cross_entropy", "--path", str(save_dir / "checkpoint_last.pt"),
            "--valid-subset", "test", "--batch-size", "64", "--log-format", "json", "--cpu",
            "--num-workers", "0"]


def plan(models: Sequence[Model], seeds: Sequence[int], runs_dir: Path,
         train: Dict = TRAIN) -> List[Dict]:
    """Seed-major: every model's first seed before any second seed, so a partial study is
    balanced."""
    return [{"model": m, "seed": s, "name": f"{m.name}_seed{s}", "dir": runs_dir / f"{m.name}_seed{s}",
             "train": train} for s in seeds for m in models]


def parse_counts(text: str, tag: str) -> Dict[str, List[int]]:
    """{'lo_hi': [hits, queries]} from the last JSON stats line of ``tag`` (fairseq's json log
    format prefixes every key with the subset: ``test_hits_1_4``)."""
    stats = None
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or f'"{tag}_queries' not in line:
            continue
        stats = json.loads(line[start:])
    if stats is None:
        raise RecallStudyError(f"no '{tag}' accuracy in the log: was the run scored with "
                               "--criterion recall_cross_entropy?")
    out = {}
    for key, value in stats.items():
        if key.startswith(f"{tag}_queries_"):
            b = key[len(f"{tag}_queries_"):]
            out[b] = [int(float(stats[f"{tag}_hits_{b}"])), int(float(value))]
    return out


def valid_curve(text: str) -> List[List[float]]:
    """[[update, overall valid accuracy %], ...] from fairseq-train's json log."""
    pts = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0 or '"valid_acc"' not in line:
            continue
        stats = json.loads(line[start:])
        pts.append([int(float(stats["valid_num_updates"])), float(stats["valid_acc"])])
    return pts


def run_one(item: Dict, verbose: bool = False) -> Dict:
    """Train and test one (model, seed); returns and writes its result JSON."""
    run_dir, model = item["dir"], item["model"]
    if run_dir.exists():  # an unfinished run starts again from scratch
        shutil.rmtree(run_dir)
    save_dir = run_dir / "checkpoints"
    stamp = {"git_commit": git_commit(), "git_dirty": git_dirty(), "date": utc_now()}  # at start
    t0 = time.time()
    train = item["train"]
    out = run_fairseq(train_command(model, item["seed"], save_dir, train), run_dir / "train.log",
                      item["name"], verbose=verbose, total_updates=train["max_update"])
    train_s = time.time() - t0
    test = run_fairseq(test_command(save_dir), run_dir / "test.log", f"{item['name']} test",
                       verbose=verbose)
    result = {"model": model.name, "seed": item["seed"], "train_seconds": round(train_s, 1),
              "updates": train["max_update"], "test": parse_counts(test, "test"),
              "valid_curve": valid_curve(out), **stamp}
    write_json_atomic(run_dir / "result.json", result)
    for ck in save_dir.glob("*.pt"):  # the study keeps counts, not weights
        ck.unlink()
    return result


def run_queue(items: List[Dict], verbose: bool = False, log=print) -> None:
    todo = [it for it in items if not (it["dir"] / "result.json").exists()]
    log(f"[recall] {len(items) - len(todo)} of {len(items)} runs done, {len(todo)} to run")
    for k, item in enumerate(todo, 1):
        log(f"[recall] run {k}/{len(todo)}: {item['name']}")
        res = run_one(item, verbose)
        acc = _overall(res["test"])
        log(f"[recall] {item['name']}: test accuracy {acc:.1f} % in {res['train_seconds']:.0f} s")


def _overall(counts: Dict[str, List[int]]) -> float:
    hits = sum(h for h, _ in counts.values())
    n = sum(q for _, q in counts.values())
    return 100.0 * hits / max(n, 1)


# --- summary ---------------------------------------------------------------------------------

def bucket_keys() -> List[str]:
    edges = [int(x) for x in TASK["distance_buckets"].split(",")]
    return [f"{lo}_{hi}" for lo, hi in zip(edges, edges[1:])]


def summarize(items: List[Dict]) -> Dict:
    """Per model: per-bucket accuracy of every seed, mean and sample std; per pair and bucket:
    the paired differences (same seed) and the verdict (holds: MSWA better beyond noise)."""
    results = {}
    for it in items:
        path = it["dir"] / "result.json"
        if path.exists():
            results.setdefault(it["model"].name, {})[it["seed"]] = json.loads(path.read_text())
    models = {}
    for m in {it["model"] for it in items}:
        runs = results.get(m.name, {})
        per_bucket = {}
        for b in bucket_keys():
            accs = {s: 100.0 * r["test"][b][0] / r["test"][b][1]
                    for s, r in runs.items() if b in r["test"]}
            mean, std = mean_and_std(list(accs.values()))
            per_bucket[b] = {"seeds": {str(s): round(a, 2) for s, a in sorted(accs.items())},
                             "mean": _r(mean), "std": _r(std),
                             "queries": sum(r["test"][b][1] for r in runs.values() if b in r["test"])}
        models[m.name] = {"label": m.label, "arch": m.arch, "pattern": m.pattern,
                          "seeds_done": sorted(runs), **reach(m), "buckets": per_bucket,
                          "train_seconds": [runs[s]["train_seconds"] for s in sorted(runs)],
                          "trained_at": sorted({runs[s].get("git_commit") or "not recorded"
                                                for s in runs}),
                          "valid_curves": {str(s): runs[s]["valid_curve"] for s in sorted(runs)}}
    pairs = []
    for a, b in PAIRS:
        if a not in models or b not in models:
            continue
        for key in bucket_keys():
            sa, sb = models[a]["buckets"][key]["seeds"], models[b]["buckets"][key]["seeds"]
            diffs = [sa[s] - sb[s] for s in sa if s in sb]
            verdict, lo, hi, basis = judge(diffs, CONFIDENCE)
            pairs.append({"a": a, "b": b, "bucket": key, "diffs": [round(d, 2) for d in diffs],
                          "mean_diff": _r(mean_and_std(diffs)[0]), "interval": [_r(lo), _r(hi)],
                          "verdict": verdict, "basis": basis})
    train = items[0]["train"] if items else TRAIN
    return {"task": TASK, "train": train, "base_window": BASE_WINDOW, "confidence": CONFIDENCE,
            "models": models, "pairs": pairs}


def _r(v, digits=2):
    return None if v is None else round(v, digits)


def _bucket_label(key: str) -> str:
    lo, hi = key.split("_")
    return f"({lo}, {hi}]"


def render_markdown(s: Dict) -> str:
    keys = bucket_keys()
    lines = ["# Recall at distance", "",
             "Multi-query associative recall (`--task recall`): test accuracy (%) per distance "
             "bucket (distance = query position - pair position), mean +- sample std over seeds; "
             f"chance {100 / TASK['num_values']:.1f} %.", "",
             "| model | windows | largest window | receptive field | cost vs SWA | seeds | "
             + " | ".join(_bucket_label(k) for k in keys) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(keys)]
    order = [m.name for m in MODELS if m.name in s["models"]]
    for name in order:
        m = s["models"][name]
        cells = []
        for k in keys:
            b = m["buckets"][k]
            cells.append("-" if b["mean"] is None else
                         f"{b['mean']:.1f}" + ("" if b["std"] is None else f" +- {b['std']:.1f}"))
        lw = "all" if m["largest_window"] is None else m["largest_window"]
        rf = "all" if m["receptive_field"] is None else m["receptive_field"]
        lines.append(f"| {m['label']} | {_windows_brief(m['windows'])} | {lw} | {rf} | "
                     f"{m['relative_cost']:.3f} | {len(m['seeds_done'])} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired by seed (same seed, same data), {int(100 * s['confidence'])} % Student-t "
              "interval of the mean difference: holds = the first model better beyond noise, "
              "reversed = worse beyond noise.", "",
              "| pair | " + " | ".join(_bucket_label(k) for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for a, b in PAIRS:
        rows = {p["bucket"]: p for p in s["pairs"] if p["a"] == a and p["b"] == b}
        if not rows:
            continue
        cells = [f"{rows[k]['verdict']} ({rows[k]['mean_diff']:+.1f})"
                 if k in rows and rows[k]["mean_diff"] is not None else "-" for k in keys]
        lines.append(f"| {s['models'][a]['label']} vs {s['models'][b]['label']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Setup: " + ", ".join(f"{k} {v}" for k, v in TASK.items()) + "; "
              + ", ".join(f"{k} {v}" for k, v in s["train"].items()) + f"; base window {BASE_WINDOW}.",
              "", f"Command: `{s['command']}`  ", f"Commit: {commit_text(s)} (report); runs trained at "
              f"{', '.join(sorted({c for m in s['models'].values() for c in m['trained_at']}))}  ",
              f"Date: {s['date']}  ", f"Machine: {json.dumps(s['machine'])}", ""]
    return "\n".join(lines)


def _windows_brief(windows_json: str) -> str:
    rows = json.loads(windows_json)
    return " / ".join(",".join("full" if w is None else str(w) for w in sorted(set(r), key=lambda w: w or 1e9))
                      for r in rows)


def plot(s: Dict, path: Path) -> Path:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    keys = bucket_keys()
    mids = [(int(k.split("_")[0]) * int(k.split("_")[1])) ** 0.5 for k in keys]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, family in zip(axes, ("transformer_xl_mswa", "linear_mswa")):
        for i, m in enumerate(mm for mm in MODELS if mm.arch == family and mm.name in s["models"]):
            rec = s["models"][m.name]
            mean = [rec["buckets"][k]["mean"] for k in keys]
            std = [rec["buckets"][k]["std"] or 0.0 for k in keys]
            color = f"C{i}"
            ax.errorbar(mids, [v if v is not None else float("nan") for v in mean], yerr=std,
                        marker="o", capsize=3, color=color,
                        label=f"{m.label} (cost {rec['relative_cost']:.3f} x SWA)")
            if rec["receptive_field"] is not None:
                ax.axvline(rec["receptive_field"], color=color, ls=":", lw=1)
            if rec["largest_window"] is not None:
                ax.axvline(rec["largest_window"], color=color, ls="--", lw=0.8, alpha=0.6)
        ax.axhline(100 / TASK["num_values"], color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance (bucket's geometric middle); dashed: largest window, dotted: receptive field")
        ax.set_title("Transformer-XL" if family == "transformer_xl_mswa" else "linear attention + local")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test recall accuracy (%)")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def report(items: List[Dict], out_dir: Path, argv: Sequence[str]) -> Dict:
    """The study's record: provenance of the report (command, commit, date, machine) at the top,
    the commit(s) each model's runs were trained at in ``models[*].trained_at``."""
    s = {**provenance(script_command("recall.py", argv), threads=None), **summarize(items)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "recall.json", s)
    write_text_atomic(out_dir / "recall.md", render_markdown(s))
    plot(s, out_dir / "recall.png")
    return s


# --- command line ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=RUNS, help="fairseq's logs and run JSONs")
    p.add_argument("--out-dir", type=Path, default=OUT, help="the report's folder")
    p.add_argument("--models", default=",".join(m.name for m in MODELS),
                   help="comma-separated models to run (default: all)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--max-update", type=int, default=TRAIN["max_update"],
                   help="updates per run (smaller for a smoke run)")
    p.add_argument("--lr", type=float, default=TRAIN["lr"],
                   help="peak learning rate (Adam, inverse-sqrt schedule); give another --runs-dir "
                        "and --out-dir for a sweep, finished runs are not redone")
    p.add_argument("--warmup-updates", type=int, default=TRAIN["warmup_updates"],
                   help="linear warm-up updates before the inverse-sqrt decay")
    p.add_argument("--report-only", action="store_true", help="only the report from finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands")
    p.add_argument("--verbose", action="store_true", help="fairseq's raw log on screen")
    return p


def select_models(spec: str) -> List[Model]:
    known = {m.name: m for m in MODELS}
    names = [n for n in spec.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RecallStudyError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    return [known[n] for n in names]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    train = {**TRAIN, "lr": args.lr, "warmup_updates": args.warmup_updates,
             "max_update": args.max_update,
             "validate_interval_updates": min(TRAIN["validate_interval_updates"], args.max_update)}
    try:
        items = plan(select_models(args.models), seeds, args.runs_dir, train)
    except RecallStudyError as e:
        raise SystemExit(str(e)) from None
    if args.dry_run:
        for it in items:
            print(it["name"], " ".join(train_command(it["model"], it["seed"], it["dir"] / "checkpoints",
                                                     train)))
        return 0
    if not args.report_only:
        run_queue(items, args.verbose)
    s = report(items, args.out_dir, argv)
    print(render_markdown(s))
    return 0
