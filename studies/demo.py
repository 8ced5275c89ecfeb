"""Offline demo: SWA against MSWA (same base window) on text that ships with Python.

    python scripts/demo.py            # ~10 minutes on 2 CPU cores (README's first command)
    python scripts/demo.py --quick    # a few updates on a slice of the corpus (tests)

1. builds a character-level corpus from CPython's documentation topics (``pydoc_data``; no
   download), split and binarized exactly like enwik8 (data_prep/pydoc_corpus.py);
2. trains a small Transformer-XL with sliding-window attention (SWA) and one with multi-scale
   window attention (MSWA), same base window, through ``fairseq-train``, always the same number
   of updates (:func:`plan_updates`, :func:`train_both`, :func:`check_equal_updates`);
3. evaluates both on the test split with ``fairseq-eval-lm`` (bits per character);
4. prints a table (test bpc, relative cost from fairseq_mswa.schedule, training and evaluation
   tokens/s, and beside them what the shape allows: the FLOPs a training step needs and the KV
   cache a decoded sequence holds, :func:`shape_allows`) and writes ``results/demo/demo.json``
   and ``results/demo/demo.png``.

Equal updates: the update count is fixed once, before training, for both models (``--updates``,
or the largest that fits the time budget); a short speed probe of both models lets the start say
how long training will take on this machine now, and that it takes longer than usual (or trains
fewer updates than usual) when the machine is slow. No wall-clock limit stops the
second model: only the first (SWA) has a safety cap, and when it hits it the second trains
exactly as many updates as the first finished (the table says so). A table of unequal runs is
an error.

The terminal shows one progress bar per fairseq-train run (updates, loss, elapsed, ETA) and the
results; fairseq's full logs go to ``runs/demo/<model>.{probe,train,eval}.log`` (``--verbose``
streams them instead).

Every number printed is measured or computed (the needed FLOPs, the KV cache) in this run;
nothing is copied from anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from studies.run_utils import (
    USER_DIR,
    REPO_ROOT as REPO,
    CommandError,
    parse_eval_lm,
    parse_train_inner,
    parse_train_summary,
    portable_command,
    provenance,
    run_fairseq,
    save_figure_atomic,
    script_command,
    write_json_atomic,
)


# The demo model: small enough for 2 CPU cores, 4 layers x 4 heads so that MSWA's 4 layer groups
# and 4 head groups each get one layer / one head.
# ``updates`` is an upper bound: before training, a short probe of each model measures its speed
# on this machine right now and the demo picks the largest number of updates (the same for both
# models) that fits ``train_minutes`` for the two together, at least ``min_updates`` (a slow
# machine then takes longer than ``train_minutes``, and the demo says so before training).
# ``minutes``: a safety cap on the *first* model's training time (fairseq's --stop-time-hours),
# raised to FIRST_CAP_FACTOR x the probe's estimate when that is longer; if the first model hits
# it, the second trains exactly as many updates as the first finished. The second model has no
# wall-clock cap.
FULL = dict(layers=4, heads=4, embed=128, ffn=512, segment=64, batch=16, updates=2000,
            base_window=32, max_bytes=None, log_interval=10, lr=1e-3, warmup=100,
            eval_batch=8, minutes=6.0, train_minutes=8.0, min_updates=100, probe_updates=30)
QUICK = dict(layers=4, heads=4, embed=32, ffn=64, segment=32, batch=2, updates=3,
             base_window=16, max_bytes=40_000, log_interval=1, lr=1e-3, warmup=1,
             eval_batch=2, minutes=5.0)
FIRST_CAP_FACTOR = 2.0
PAIRS = (("SWA", "swa"), ("MSWA", "mswa"))  # (name, --attn-pattern), trained in this order
# decoding KV cache: float32, as the demo trains and evaluates (CPU)
KV_DTYPE_BYTES = 4


def run(cmd: List[str], log: Path, label: str, verbose: bool,
        total_updates: Optional[int] = None) -> str:
    """run_utils.run_fairseq from the repository root."""
    return run_fairseq(cmd, log, label, verbose=verbose, total_updates=total_updates, cwd=REPO)


def schedule_cost(cfg: Dict, pattern: str) -> int:
    from fairseq_mswa.schedule import build_schedule

    sched = build_schedule(cfg["layers"], cfg["heads"], cfg["base_window"], pattern)
    return sched.cost(), sched.window_range()


def train_command(cfg: Dict, data: Path, pattern: str, save_dir: Path, tb: Path,
                  stop_minutes: Optional[float] = None) -> List[str]:
    """fairseq-train for ``cfg["updates"]`` updates; ``stop_minutes``: a wall-clock cap
    (--stop-time-hours), given to the first model of the comparison only (:func:`train_both`)."""
    cap = [] if stop_minutes is None else ["--stop-time-hours", f"{stop_minutes / 60:.4f}"]
    return [
        sys.executable, "-m", "fairseq_cli.train", str(data),
        "--user-dir", str(USER_DIR), "--task", "mswa_lm",
        "--arch", "transformer_xl_mswa_tiny",
        "--decoder-layers", str(cfg["layers"]),
        "--decoder-attention-heads", str(cfg["heads"]),
        "--decoder-embed-dim", str(cfg["embed"]),
        "--decoder-ffn-embed-dim", str(cfg["ffn"]),
        "--attn-pattern", pattern, "--base-window", str(cfg["base_window"]),
        "--tokens-per-sample", str(cfg["segment"]), "--batch-size", str(cfg["batch"]),
        "--criterion", "cross_entropy",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01",
        # inverse_sqrt: the learning rate depends on the update number only, so a first model
        # stopped early by its time cap has followed the same schedule as the second one trained
        # to that update count
        "--clip-norm", "0.25", "--lr", str(cfg["lr"]), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(cfg["warmup"]),
        "--warmup-init-lr", "1e-7",
        "--max-update", str(cfg["updates"]), "--seed", "1", *cap,
        "--cpu", "--num-workers", "0", "--log-format", "simple",
        "--log-interval", str(cfg["log_interval"]),
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--save-interval-updates", "0",
        "--disable-validation", "--tensorboard-logdir", str(tb),
    ]


def eval_command(cfg: Dict, data: Path, save_dir: Path) -> List[str]:
    """The demo trains with --disable-validation (a fixed update budget, no model selection), so
    the last checkpoint is the only one; no DataLoader worker (its shutdown costs ~5 s here)."""
    return [
        sys.executable, "-m", "fairseq_cli.eval_lm", str(data),
        "--user-dir", str(USER_DIR), "--task", "mswa_lm",
        "--path", str(save_dir / "checkpoint_last.pt"), "--gen-subset", "test",
        "--tokens-per-sample", str(cfg["segment"]), "--batch-size", str(cfg["eval_batch"]),
        "--cpu", "--log-format", "simple", "--num-workers", "0",
    ]


def probe_seconds_per_update(name: str, pattern: str, cfg: Dict, data: Path,
                             work: Path, verbose: bool = False) -> float:
    """Seconds per update of this model on this machine now (a short fairseq-train run, the
    first logged interval left out)."""
    n = cfg["probe_updates"]
    probe = dict(cfg, updates=n, log_interval=max(1, n // 3), warmup=1)
    cmd = train_command(probe, data, pattern, work / "probe" / name, work / "probe" / "tb")
    cmd += ["--no-save"]
    out = run(cmd, work / f"{name}.probe.log", f"{name} speed probe", verbose,
              total_updates=n)
    wps = [w for _, _, w in curve(out)[1:]]
    if not wps:
        raise CommandError(f"the {name} probe logged no speed; see {work / (name + '.probe.log')}")
    return cfg["batch"] * cfg["segment"] / statistics.median(wps)


def curve(train_log: str):
    """[(update, train loss in bits, tokens/s)] of every train_inner line."""
    return [(r["update"], r["loss"], r["wps"]) for r in parse_train_inner(train_log)
            if "loss" in r and "wps" in r]


# --- equal updates: one count for both models, fixed before training ---------------------------

def plan_updates(seconds_per_update: Dict[str, float], budget_s: float, max_updates: int,
                 min_updates: int) -> Dict:
    """The one update count every model trains, from the probe's seconds per update: the largest
    that fits ``budget_s`` for all models together, within ``[min_updates, max_updates]``.
    ``train_s``: the training time this predicts on this machine now (over ``budget_s`` when even
    ``min_updates`` does not fit); ``fit``: the count the budget alone allows."""
    if not 1 <= min_updates <= max_updates:
        raise ValueError(f"need 1 <= min_updates ({min_updates}) <= max_updates ({max_updates}): "
                         "lower min_updates or raise --updates")
    bad = {k: v for k, v in seconds_per_update.items() if not v > 0}
    if not seconds_per_update or bad:
        raise ValueError(f"seconds per update must be > 0 for every model, got "
                         f"{seconds_per_update}: rerun the speed probe")
    per_update = sum(seconds_per_update.values())
    fit = int(budget_s / per_update)
    updates = max(min_updates, min(max_updates, fit))
    return {"updates": updates, "fit": fit, "train_s": updates * per_update,
            "budget_s": budget_s, "min_updates": min_updates, "max_updates": max_updates}


def plan_message(plan: Dict) -> str:
    """What the start of the demo says about ``plan_updates``' plan: the count, how long it takes
    on this machine now, and whether that is fewer updates or a longer wait than usual (a count
    fixed by --updates: min_updates == max_updates)."""
    n, minutes, usual = plan["updates"], plan["train_s"] / 60, plan["budget_s"] / 60
    if plan["fit"] >= n == plan["max_updates"]:
        return (f"{n} updates each, about {minutes:.1f} minutes of training on this machine now "
                "(plus evaluation)")
    if plan["fit"] >= n:
        return (f"this machine is slower than usual now: {n} updates each instead of "
                f"{plan['max_updates']} (the same count for both), about {minutes:.1f} minutes of "
                "training (plus evaluation)")
    if plan["min_updates"] == plan["max_updates"]:
        return (f"{n} updates each (--updates) take about {minutes:.1f} minutes of training on "
                f"this machine now, longer than the usual {usual:.0f} (plus evaluation)")
    return (f"this machine is slow now: {n} updates each (the fewest the demo compares) take about "
            f"{minutes:.1f} minutes of training, longer than the usual {usual:.0f} (plus "
            "evaluation)")


def first_run_cap(minutes: float, first_estimate_s: Optional[float]) -> float:
    """The safety cap (minutes) on the first model's training: ``minutes``, or FIRST_CAP_FACTOR x
    the probe's estimate of that training when longer (a slow machine is told it takes longer,
    so the cap must not cut what was announced)."""
    if first_estimate_s is None:
        return minutes
    return max(minutes, FIRST_CAP_FACTOR * first_estimate_s / 60)


def check_equal_updates(models: List[Dict]) -> int:
    """The update count all ``models`` trained; an error when they differ (or one is unknown):
    the demo never compares unequal runs."""
    counts = {m["name"]: m["updates"] for m in models}
    known = [c for c in counts.values() if isinstance(c, int) and c > 0]
    if not models or len(known) != len(counts) or len(set(known)) != 1:
        fix = f"--updates {min(known)}" if known else "--updates N"
        raise CommandError(f"unequal runs ({', '.join(f'{k} {v}' for k, v in counts.items())} "
                           f"updates): the demo compares models at equal updates only; rerun with "
                           f"{fix} to train each model exactly that many")
    return known[0]


def train_both(pairs, updates: int, first_cap_minutes: Optional[float],
               train_one: Callable[[str, str, int, Optional[float]], Dict]):
    """Train the two models of ``pairs`` ((name, pattern), ...) at equal updates:
    ``train_one(name, pattern, updates, stop_minutes)`` trains the first for ``updates`` under the
    wall-clock cap ``first_cap_minutes`` (None: none), then the second, with no cap, for exactly
    as many updates as the first finished. Returns (results, cut): ``cut`` is None, or what the
    first model's cap cut ({model, cap_minutes, planned, trained})."""
    (first_name, first_pattern), (second_name, second_pattern) = pairs
    first = train_one(first_name, first_pattern, updates, first_cap_minutes)
    done = first["updates"]
    if not isinstance(done, int) or not 1 <= done <= updates:
        raise CommandError(f"{first_name} reports {done} updates of {updates}: see its train log; "
                           "rerun (with --minutes larger than the cap it hit, or fewer --updates)")
    cut = None
    if done < updates:
        cut = {"model": first_name, "cap_minutes": first_cap_minutes, "planned": updates,
               "trained": done}
        print(f"  note: {first_name} stopped at its {first_cap_minutes:.1f}-minute safety cap "
              f"after {done} of {updates} updates (the machine got slower than planned): "
              f"{second_name} trains exactly {done} updates too", flush=True)
    second = train_one(second_name, second_pattern, done, None)
    models = [first, second]
    check_equal_updates(models)
    return models, cut


# --- what the shape allows: needed FLOPs of a training step, the decoding KV cache -------------

def shape_allows(cfg: Dict, vocab: int, pairs=(("SWA", "swa"), ("MSWA", "mswa"))) -> Dict:
    """What the demo's shape allows each model, whatever the machine: the FLOPs one training
    update needs (``fairseq_mswa.cost.flops.step_flops`` x batch: the layers with their memory,
    visible keys only, and the ``vocab``-word output layer) and the keys/values one decoded
    sequence holds at steady state (``fairseq_mswa.cost.tiles.decode_kv_bytes`` over the layers,
    float32). Their MSWA / SWA ratios bound what MSWA's tokens/s can be against SWA's here."""
    from fairseq_mswa.cost.flops import step_flops
    from fairseq_mswa.cost.tiles import decode_kv_bytes
    from fairseq_mswa.schedule import build_schedule

    shape = dict(layers=cfg["layers"], dim=cfg["embed"], ffn=cfg["ffn"], heads=cfg["heads"],
                 base_window=cfg["base_window"])
    head_dim = cfg["embed"] // cfg["heads"]
    per_model = {}
    for name, pattern in pairs:
        sched = build_schedule(cfg["layers"], cfg["heads"], cfg["base_window"], pattern)
        _, top = sched.window_range()
        position = top - 1 + sched.sink_tokens  # every ring full: steady state
        per_model[name] = {
            "train_flops_per_update": cfg["batch"] * step_flops("xl_" + pattern, shape,
                                                                cfg["segment"], vocab),
            "decode_kv_cache_bytes": sum(decode_kv_bytes(layer, position, head_dim,
                                                         KV_DTYPE_BYTES, sched.sink_tokens)
                                         for layer in sched.windows),
        }
    m, s = per_model["MSWA"], per_model["SWA"]
    flops = m["train_flops_per_update"] / s["train_flops_per_update"]
    return {"per_model": per_model, "vocab": vocab, "head_dim": head_dim,
            "kv_dtype_bytes": KV_DTYPE_BYTES,
            "flops_mswa_over_swa": flops,
            "tokens_per_s_mswa_over_swa_at_most": 1 / flops,
            "kv_cache_mswa_over_swa": m["decode_kv_cache_bytes"] / s["decode_kv_cache_bytes"]}


def _ratio(models: List[Dict], key: str) -> Optional[float]:
    by = {m["name"]: m.get(key) for m in models}
    return by["MSWA"] / by["SWA"] if by.get("MSWA") and by.get("SWA") else None


def shape_lines(allows: Dict, models: List[Dict]) -> List[str]:
    """Two sentences under the table: MSWA's needed FLOPs against SWA's (and what that makes the
    best tokens/s ratio it can show here, beside the measured ones) and the decoding KV cache."""
    r, best = allows["flops_mswa_over_swa"], allows["tokens_per_s_mswa_over_swa_at_most"]
    g = {k: v["train_flops_per_update"] / 1e9 for k, v in allows["per_model"].items()}
    kv = {k: v["decode_kv_cache_bytes"] / 1024 for k, v in allows["per_model"].items()}
    measured = [f"{label} {x:.2f}x" for label, x in
                (("training", _ratio(models, "train_tokens_per_s")),
                 ("evaluation", _ratio(models, "eval_tokens_per_s"))) if x]
    bound = ("; it cannot be as fast as SWA here" if best < 1 else
             "; equal speed is the best it can show here" if best < 1.05 else "")
    return [
        f"What the shape allows: MSWA needs {r:.2f}x SWA's FLOPs per training step here "
        f"({g['MSWA']:.4g} vs {g['SWA']:.4g} GFLOP per update), so at equal hardware efficiency "
        f"its tokens/s can be at most {best:.2f}x SWA's{bound}"
        + (f" (measured: {', '.join(measured)})." if measured else "."),
        f"Decoding: MSWA's window caches hold {kv['MSWA']:.1f} KiB of keys/values per sequence "
        f"against SWA's {kv['SWA']:.1f} KiB ({allows['kv_cache_mswa_over_swa']:.2f}x; float32, "
        f"head dim {allows['head_dim']}, every layer and head at its window).",
    ]


def run_model(name: str, pattern: str, cfg: Dict, data: Path, split: Dict, work: Path,
              step: str, verbose: bool = False, stop_minutes: Optional[float] = None) -> Dict:
    """Train ``cfg["updates"]`` updates (``stop_minutes``: a wall-clock cap, the first model's
    only), evaluate on the test split; the updates made are read from fairseq's log."""
    cost, (lo, hi) = schedule_cost(cfg, pattern)
    save_dir = work / "checkpoints" / name
    if save_dir.exists():
        import shutil
        shutil.rmtree(save_dir)
    cmd = train_command(cfg, data, pattern, save_dir, work / "tb" / name, stop_minutes)
    cap = "" if stop_minutes is None else f" (safety cap {stop_minutes:.1f} minutes)"
    print(f"{step} training {name} ({pattern}, windows {lo}..{hi}, memory {hi - 1}) for "
          f"{cfg['updates']} updates{cap}", flush=True)
    t0 = time.time()
    out = run(cmd, work / f"{name}.train.log", name, verbose, total_updates=cfg["updates"])
    train_s = time.time() - t0
    print(f"{step} evaluating {name} on the test split ({split['bytes']:,} bytes)", flush=True)
    eval_log = work / f"{name}.eval.log"
    eout = run(eval_command(cfg, data, save_dir), eval_log, f"{name} eval", verbose)
    try:
        ev = parse_eval_lm(eout)
    except CommandError as e:
        raise CommandError(f"{e}; see {eval_log}") from None
    if ev["eval_symbols"] != split["symbols"]:
        raise CommandError(f"eval scored {ev['eval_symbols']} symbols, the test split has "
                           f"{split['symbols']}; see {eval_log}")
    test_bpc = ev["loss_base2"] * ev["eval_symbols"] / split["bytes"]
    print(f"  {name}: {test_bpc:.4f} test bits per character ({ev['eval_seconds']:.0f} s)",
          flush=True)
    pts = curve(out)
    updates = parse_train_summary(out).get("updates", pts[-1][0] if pts else None)
    # tokens/s of training: fairseq's per-interval wps, the first interval (warm-up) left out
    wps = [w for _, _, w in pts[1:]] or [w for _, _, w in pts]
    return {
        "name": name, "pattern": pattern, "windows": [lo, hi], "max_memory": hi - 1,
        "updates": updates,
        "cost": cost,
        "test_bpc": test_bpc,
        "eval_symbols": ev["eval_symbols"], "eval_tokens_per_s": ev["eval_tokens_per_s"],
        "train_tokens_per_s": statistics.median(wps) if wps else None,
        "train_wall_s": round(train_s, 1),
        "curve": [{"update": u, "train_loss_base2": l} for u, l, _ in pts],
        "commands": {"train": portable_command(cmd, {"work": work})},
    }


def plot(res: Dict, path: Path) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"SWA": "tab:blue", "MSWA": "tab:red"}
    for m in res["models"]:
        xs = [p["update"] for p in m["curve"]]
        ys = [p["train_loss_base2"] for p in m["curve"]]
        a.plot(xs, ys, color=colors.get(m["name"]), label=m["name"])
    a.set_xlabel("update")
    a.set_ylabel("training loss (bits per symbol)")
    a.set_title("training")
    a.grid(alpha=0.3)
    a.legend()
    for m in res["models"]:
        b.scatter([m["relative_cost"]], [m["test_bpc"]], s=60, color=colors.get(m["name"]),
                  label=f"{m['name']}: {m['test_bpc']:.3f} bpc")
    b.set_xlabel("relative cost (sum of windows, MSWA = 1)")
    b.set_ylabel("test bits per character")
    b.set_title("test (fairseq-eval-lm)")
    b.grid(alpha=0.3)
    b.legend()
    ups = check_equal_updates(res["models"])
    fig.suptitle(f"SWA vs MSWA, base window {res['config']['base_window']}, {ups} updates each, "
                 f"{res['corpus']['source']}", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def report_lines(res: Dict, threads: int, work: Path, out: Path) -> List[str]:
    """The results as printed: the table (only of runs at equal updates: an error otherwise), what
    the shape allows, and where everything went."""
    models, cfg = res["models"], res["config"]
    updates = check_equal_updates(models)
    allows = res["shape_allows"]
    lines = ["| model | windows | updates | test bpc | relative cost | needed GFLOP / update | "
             "train tokens/s | eval tokens/s | decode KV cache / sequence |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        tps = f"{m['train_tokens_per_s']:,.0f}" if m["train_tokens_per_s"] else "-"
        a = allows["per_model"][m["name"]]
        lines.append(
            f"| {m['name']} | {m['windows'][0]}..{m['windows'][1]} | {m['updates']} | "
            f"{m['test_bpc']:.4f} | {m['relative_cost']:.2f} | "
            f"{a['train_flops_per_update'] / 1e9:.4g} | {tps} | {m['eval_tokens_per_s']:,.0f} | "
            f"{a['decode_kv_cache_bytes'] / 1024:.1f} KiB |")
    cut = res["cut"]
    if cut:
        others = " and ".join(m["name"] for m in models if m["name"] != cut["model"])
        equal = (f"Equal updates: {cut['model']} stopped at its {cut['cap_minutes']:.1f}-minute "
                 f"safety cap after {cut['trained']} of the {cut['planned']} planned updates, "
                 f"and {others} then trained exactly {updates}, so both compare at {updates} "
                 "updates.")
    else:
        equal = f"Equal updates: both models trained {updates} updates, as planned."
    lines += ["", equal, *shape_lines(allows, models), "",
              f"{cfg['batch'] * cfg['segment']} tokens per update; relative cost = sum of the "
              f"windows of all heads of all layers, MSWA = 1.00; needed GFLOP = the arithmetic an "
              f"update needs (fairseq_mswa.cost.flops.step_flops x batch); tokens/s measured on "
              f"this machine ({threads} threads). Total {res['total_wall_s']:.0f} s. Wrote "
              f"{out / 'demo.json'} and {out / 'demo.png'}.",
              f"Full fairseq logs: {work}/{{SWA,MSWA}}.{{train,eval}}.log"
              + (f" (speed probes: {work}/*.probe.log)" if "probe_seconds_per_update" in cfg
                 else "")]
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a few updates of a tiny model on a slice of the corpus (for tests)")
    ap.add_argument("--updates", type=int, default=None,
                    help="training updates per model, the same for both (default: as many as "
                         "fit the time budget, measured by a short probe, at most 2000)")
    ap.add_argument("--base-window", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None,
                    help="safety cap on the first model's (SWA's) training time, in minutes "
                         f"(default {FULL['minutes']:g}, raised to {FIRST_CAP_FACTOR:g} x the "
                         "speed probe's estimate when that is longer); if SWA hits it, MSWA "
                         "trains exactly as many updates as SWA finished. MSWA has no time cap")
    ap.add_argument("--out", type=Path, default=None,
                    help="where demo.json and demo.png go (default results/demo; --quick: "
                         "runs/demo-quick/results)")
    ap.add_argument("--work", type=Path, default=None,
                    help="corpus, checkpoints and logs (default runs/demo or runs/demo-quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores)")
    ap.add_argument("--verbose", action="store_true",
                    help="stream fairseq's full logs instead of one progress bar per run")
    return ap


def resolve_config(args) -> Dict:
    """The run's settings: QUICK or FULL with the command line's overrides."""
    cfg = dict(QUICK if args.quick else FULL)
    for key, value in (("updates", args.updates), ("base_window", args.base_window),
                       ("minutes", args.minutes)):
        if value is not None:
            cfg[key] = value
    return cfg


def stage_corpus(cfg: Dict, work: Path) -> Dict:
    """Stage 1a: the character-level corpus from pydoc_data.topics (fairseq-preprocess'd)."""
    from data_prep.pydoc_corpus import prepare_pydoc_chars

    print("[1/4] building the character-level corpus from pydoc_data.topics", flush=True)
    return prepare_pydoc_chars(work / "data-bin", max_bytes=cfg["max_bytes"], workers=1,
                               name="pydoc-chars" if cfg["max_bytes"] is None
                               else f"pydoc-chars-{cfg['max_bytes']}")


def stage_plan(cfg: Dict, args, data: Path, work: Path) -> None:
    """Stage 1b: fix, before training and the same for both models, the update count (from a
    speed probe unless --quick or --updates), the warm-up and the first model's safety cap."""
    first_estimate_s = None
    if not args.quick:
        print("[1/4] measuring the speed of both models on this machine", flush=True)
        spu = {name: probe_seconds_per_update(name, pattern, cfg, data, work, args.verbose)
               for name, pattern in PAIRS}
        # --updates fixes the count; otherwise the largest that fits the time budget
        fewest = cfg["updates"] if args.updates is not None else cfg["min_updates"]
        plan = plan_updates(spu, cfg["train_minutes"] * 60, cfg["updates"], fewest)
        cfg["updates"] = plan["updates"]
        cfg["probe_seconds_per_update"] = spu
        cfg["estimated_train_s"] = round(plan["train_s"], 1)
        first_estimate_s = plan["updates"] * spu[PAIRS[0][0]]
        print(f"[1/4] {', '.join(f'{k} {v:.3f} s/update' for k, v in spu.items())}: "
              f"{plan_message(plan)}", flush=True)
    else:
        print(f"[1/4] {cfg['updates']} updates each (--quick: no speed probe, so no time "
              "estimate)", flush=True)
    cfg["updates_planned"] = cfg["updates"]
    cfg["warmup"] = min(cfg["warmup"], max(1, cfg["updates"] // 10))
    cfg["first_run_cap_minutes"] = round(first_run_cap(cfg["minutes"], first_estimate_s), 2)


def stage_train(cfg: Dict, args, data: Path, split: Dict, work: Path):
    """Stages 2 and 3: SWA, then MSWA for exactly as many updates; returns (models, cut)."""
    steps = dict(zip((name for name, _ in PAIRS), ("[2/4]", "[3/4]")))

    def train_one(name, pattern, updates, stop_minutes):
        return run_model(name, pattern, dict(cfg, updates=updates), data, split, work,
                         steps[name], args.verbose, stop_minutes)

    models, cut = train_both(PAIRS, cfg["updates"], cfg["first_run_cap_minutes"], train_one)
    cfg["updates"] = check_equal_updates(models)
    return models, cut


def assemble(cfg: Dict, info: Dict, models: List[Dict], cut, allows: Dict, prov: Dict,
             t_start: float) -> Dict:
    """The demo's record: settings, both models (cost relative to MSWA, what the shape allows),
    the corpus and the provenance."""
    ref = next(m["cost"] for m in models if m["name"] == "MSWA")
    for m in models:
        m["relative_cost"] = m["cost"] / ref
        m.update(allows["per_model"][m["name"]])
    return {
        "config": cfg,
        "cut": cut,
        "shape_allows": allows,
        "corpus": {k: info[k] for k in ("source", "source_sha256", "dict_types")}
                  | {"train_bytes": info["splits"]["train"]["bytes"],
                     "test_bytes": info["splits"]["test"]["bytes"]},
        "models": models,
        **prov,  # command, git_commit, git_dirty, date (of the start), machine
        "total_wall_s": round(time.time() - t_start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.updates is not None and args.updates < 1:
        ap.error(f"--updates {args.updates}: give at least 1 (the count both models train)")
    cfg = resolve_config(args)
    work = args.work or REPO / "runs" / ("demo-quick" if args.quick else "demo")
    out = args.out or (work / "results" if args.quick else REPO / "results" / "demo")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    prov = provenance(script_command("demo.py", argv, {"work": work, "out": out}), "cpu", threads)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    try:
        info = stage_corpus(cfg, work)
        data = Path(work / "data-bin" / info["dataset"])
        stage_plan(cfg, args, data, work)
        models, cut = stage_train(cfg, args, data, info["splits"]["test"], work)
        from fairseq.data import Dictionary

        allows = shape_allows(cfg, len(Dictionary.load(str(data / "dict.txt"))), PAIRS)
        res = assemble(cfg, info, models, cut, allows, prov, t_start)
        lines = report_lines(res, threads, work, out)  # unequal runs: an error, nothing written
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json_atomic(out / "demo.json", res)
    plot(res, out / "demo.png")
    print("[4/4] results (test split, fairseq-eval-lm)\n")
    print("\n".join(lines))
    return 0

if __name__ == "__main__":
    sys.exit(main())
