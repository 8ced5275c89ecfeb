"""Offline demo: SWA against MSWA (same base window) on text that ships with Python.

    python scripts/demo.py            # ~10 minutes on 2 CPU cores (README's first command)
    python scripts/demo.py --quick    # a few updates on a slice of the corpus (tests)

1. builds a character-level corpus from CPython's documentation topics (``pydoc_data``; no
   download), split and binarized exactly like enwik8 (data_prep/pydoc_corpus.py);
2. trains a small Transformer-XL with sliding-window attention (SWA) and one with multi-scale
   window attention (MSWA), same base window, same updates, through ``fairseq-train``;
3. evaluates both on the test split with ``fairseq-eval-lm`` (bits per character);
4. prints a table (test bpc, relative cost from fairseq_mswa.schedule, training and evaluation
   tokens/s) and writes ``results/demo/demo.json`` and ``results/demo/demo.png``.

The terminal shows one progress bar per fairseq-train run (updates, loss, elapsed, ETA) and the
results; fairseq's full logs go to ``runs/demo/<model>.{probe,train,eval}.log`` (``--verbose``
streams them instead).

Every number printed is measured in this run; nothing is copied from anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from studies.run_utils import (
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

USER_DIR = REPO / "fairseq_mswa"

# The demo model: small enough for 2 CPU cores, 4 layers x 4 heads so that MSWA's 4 layer groups
# and 4 head groups each get one layer / one head.
# ``minutes``: a per-model cap on training time (fairseq's --stop-time-hours) so that the whole demo
# stays within 15 minutes on a slow or busy machine; the updates actually made are reported.
# ``updates`` is an upper bound: before training, a short probe of each model measures its speed
# on this machine right now and the demo picks the largest number of updates (the same for both
# models, a complete cosine schedule each) that fits ``train_minutes`` for the two together.
FULL = dict(layers=4, heads=4, embed=128, ffn=512, segment=64, batch=16, updates=2000,
            base_window=32, max_bytes=None, log_interval=10, lr=1e-3, warmup=100,
            eval_batch=8, minutes=6.0, train_minutes=8.0, min_updates=100, probe_updates=30)
QUICK = dict(layers=4, heads=4, embed=32, ffn=64, segment=32, batch=2, updates=3,
             base_window=16, max_bytes=40_000, log_interval=1, lr=1e-3, warmup=1,
             eval_batch=2, minutes=5.0)

def run(cmd: List[str], log: Path, label: str, verbose: bool,
        total_updates: Optional[int] = None) -> str:
    """run_utils.run_fairseq from the repository root."""
    return run_fairseq(cmd, log, label, verbose=verbose, total_updates=total_updates, cwd=REPO)


def schedule_cost(cfg: Dict, pattern: str) -> int:
    from fairseq_mswa.schedule import build_schedule

    sched = build_schedule(cfg["layers"], cfg["heads"], cfg["base_window"], pattern)
    return sched.cost(), sched.window_range()


def train_command(cfg: Dict, data: Path, pattern: str, save_dir: Path, tb: Path) -> List[str]:
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
        # inverse_sqrt: the learning rate depends on the update number only, so a model stopped
        # early by the time cap has followed the same schedule as the other one
        "--clip-norm", "0.25", "--lr", str(cfg["lr"]), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(cfg["warmup"]),
        "--warmup-init-lr", "1e-7",
        "--max-update", str(cfg["updates"]), "--seed", "1",
        "--stop-time-hours", f"{cfg['minutes'] / 60:.4f}",
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


def run_model(name: str, pattern: str, cfg: Dict, data: Path, split: Dict, work: Path,
              step: str, verbose: bool = False) -> Dict:
    cost, (lo, hi) = schedule_cost(cfg, pattern)
    save_dir = work / "checkpoints" / name
    if save_dir.exists():
        import shutil
        shutil.rmtree(save_dir)
    cmd = train_command(cfg, data, pattern, save_dir, work / "tb" / name)
    print(f"{step} training {name} ({pattern}, windows {lo}..{hi}, memory {hi - 1}) for "
          f"{cfg['updates']} updates", flush=True)
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
    if updates != cfg["updates"]:
        print(f"  note: {name} stopped after {updates} of {cfg['updates']} updates (the "
              f"{cfg['minutes']:g}-minute cap)", flush=True)
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
    ups = "/".join(str(m["updates"]) for m in res["models"])
    fig.suptitle(f"SWA vs MSWA, base window {res['config']['base_window']}, {ups} updates, "
                 f"{res['corpus']['source']}", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a few updates of a tiny model on a slice of the corpus (for tests)")
    ap.add_argument("--updates", type=int, default=None,
                    help="training updates per model (default: as many as fit the time budget, "
                         "measured by a short probe, at most 2000)")
    ap.add_argument("--base-window", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None,
                    help="cap on each model's training time (default 5)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where demo.json and demo.png go (default results/demo; --quick: "
                         "runs/demo-quick/results)")
    ap.add_argument("--work", type=Path, default=None,
                    help="corpus, checkpoints and logs (default runs/demo or runs/demo-quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores)")
    ap.add_argument("--verbose", action="store_true",
                    help="stream fairseq's full logs instead of one progress bar per run")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.updates is not None:
        cfg["updates"] = args.updates
    if args.base_window is not None:
        cfg["base_window"] = args.base_window
    if args.minutes is not None:
        cfg["minutes"] = args.minutes
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
        from data_prep.pydoc_corpus import prepare_pydoc_chars

        print("[1/4] building the character-level corpus from pydoc_data.topics", flush=True)
        info = prepare_pydoc_chars(work / "data-bin", max_bytes=cfg["max_bytes"], workers=1,
                                   name="pydoc-chars" if cfg["max_bytes"] is None
                                   else f"pydoc-chars-{cfg['max_bytes']}")
        data = Path(work / "data-bin" / info["dataset"])
        split = info["splits"]["test"]
        pairs = (("SWA", "swa"), ("MSWA", "mswa"))
        if not args.quick and args.updates is None:
            print("[1/4] measuring the speed of both models on this machine", flush=True)
            spu = {name: probe_seconds_per_update(name, pattern, cfg, data, work, args.verbose)
                   for name, pattern in pairs}
            fit = int(cfg["train_minutes"] * 60 / sum(spu.values()))
            cfg["updates"] = max(cfg["min_updates"], min(cfg["updates"], fit))
            cfg["probe_seconds_per_update"] = spu
            print(f"[1/4] {', '.join(f'{k} {v:.3f} s/update' for k, v in spu.items())}: "
                  f"{cfg['updates']} updates each", flush=True)
        # one warm-up for both models, fixed before training
        cfg["warmup"] = min(cfg["warmup"], max(1, cfg["updates"] // 10))
        models = []
        for step, (name, pattern) in zip(("[2/4]", "[3/4]"), pairs):
            m = run_model(name, pattern, cfg, data, split, work, step, args.verbose)
            models.append(m)
            if m["updates"] is not None and m["updates"] < cfg["updates"]:
                # the machine got slower than the probe said (time cap hit): give the next
                # model the same number of updates so that the comparison stays fair
                cfg["updates"] = m["updates"]
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ref = next(m["cost"] for m in models if m["name"] == "MSWA")
    for m in models:
        m["relative_cost"] = m["cost"] / ref
    res = {
        "config": cfg,
        "corpus": {k: info[k] for k in ("source", "source_sha256", "dict_types")}
                  | {"train_bytes": info["splits"]["train"]["bytes"],
                     "test_bytes": split["bytes"]},
        "models": models,
        **prov,  # command, git_commit, git_dirty, date (of the start), machine
        "total_wall_s": round(time.time() - t_start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write_json_atomic(out / "demo.json", res)
    plot(res, out / "demo.png")
    print("[4/4] results (test split, fairseq-eval-lm)\n")
    print("| model | windows | updates | test bpc | relative cost | train tokens/s | "
          "eval tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        tps = f"{m['train_tokens_per_s']:,.0f}" if m["train_tokens_per_s"] else "-"
        print(f"| {m['name']} | {m['windows'][0]}..{m['windows'][1]} | {m['updates']} | "
              f"{m['test_bpc']:.4f} | {m['relative_cost']:.2f} | {tps} | "
              f"{m['eval_tokens_per_s']:,.0f} |")
    print(f"\n{cfg['batch'] * cfg['segment']} tokens per update; relative cost = sum of the "
          f"windows of all heads of all layers, MSWA = 1.00; tokens/s measured on this machine "
          f"({threads} threads). Total {res['total_wall_s']:.0f} s. Wrote {out / 'demo.json'} "
          f"and {out / 'demo.png'}.\nFull fairseq logs: {work}/{{SWA,MSWA}}.{{train,eval}}.log"
          + (f" (speed probes: {work}/*.probe.log)" if "probe_seconds_per_update" in cfg else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
