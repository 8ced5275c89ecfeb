"""SWAA adaptation study: turn a full-attention Transformer-XL into a windowed one, SWA or MSWA.

    python scripts/adapt.py                                  # CPU-scale run on the demo corpus
    python scripts/adapt.py --checkpoint CKPT --data DATA    # adapt your own full-attention model
    python scripts/adapt.py --smoke                          # tiny model, a few updates (CI)

SWAA (Yu et al., arXiv 2512.10411) adapts a model pretrained with full attention (FA) to sliding
window attention (SWA) with sink tokens, some full-attention layers, full-attention decoding and
brief fine-tuning. Here the target can also be MSWA (a window per head and per layer group):

1. takes a full-attention ``transformer_xl_mswa`` checkpoint and its data-bin, or, with none given,
   trains one itself (4 layers x 128 on the demo's character corpus built from ``pydoc_data``,
   data_prep/pydoc_corpus.py), with ``fairseq-train``;
2. evaluates it on the test split with ``fairseq-eval-lm``, unchanged (full) and, with no training,
   under every target through ``--model-overrides``: SWA, SWA + sinks, SWA + full layers, MSWA at
   the largest base window whose cost is <= SWA's, MSWA + sinks, MSWA + full layers;
3. fine-tunes the checkpoint briefly under every target (``fairseq-train --finetune-from-model``
   with the target's window flags) and evaluates again; the full model is fine-tuned the same way
   as a control (how much of the gain is just more training);
4. writes ``adaptation.{json,md,png}`` (default results/adaptation/): bits per character (or
   perplexity) before and after fine-tuning, relative cost (vs full attention at the evaluation
   length and vs SWA), updates, the exact commands, machine, date and wall time.

SWAA's "full-attention decode" recipe is not a row: it needs the decoding work of another issue,
which has not landed. Every number written is measured in the run. The full fairseq logs go to
``<work>/logs/`` (``--verbose`` also streams them).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_mswa.experiments.reproduce import ReproError, metric_value, test_split_stats
from fairseq_mswa.run_utils import (
    REPO_ROOT as REPO,
    CommandError,
    commit_text,
    load_average,
    parse_eval_lm,
    parse_train_summary,
    portable_command,
    portable_path,
    provenance,
    run_fairseq,
    save_figure_atomic,
    script_command,
    write_json_atomic,
    write_text_atomic,
)

USER_DIR = REPO / "fairseq_mswa"

# The full-attention model trained when no checkpoint is given (the demo's shape: 4 layers x 4
# heads, so that MSWA's 4 layer groups and 4 head groups get one layer / one head each), and the
# adaptation recipe. ``segment`` is the training and evaluation length: a full-attention layer
# keeps ``segment`` states of memory, so a full head sees 128..255 keys, SWA's heads 32.
# ``finetune_lr`` None: the learning rate the full model trained here ended with (inverse_sqrt at
# its last update), so that fine-tuning continues its schedule; 3e-4 for a given checkpoint.
CPU = dict(layers=4, heads=4, embed=128, ffn=512, segment=128, batch=8, train_updates=4000,
           lr=1e-3, warmup=100, dropout=0.1, minutes=12.0, finetune_updates=250,
           finetune_lr=None, window=32, sinks=4, eval_batch=8, max_bytes=None, log_interval=50)
SMOKE = dict(layers=4, heads=4, embed=32, ffn=64, segment=32, batch=2, train_updates=4,
             lr=1e-3, warmup=1, dropout=0.0, minutes=5.0, finetune_updates=2, finetune_lr=None,
             window=16, sinks=2, eval_batch=2, max_bytes=20_000, log_interval=1)

# window fields of the model config: set by the target, never copied from the checkpoint
WINDOW_FIELDS = ("attn_pattern", "base_window", "window_variation", "window_groups",
                 "attn_windows", "full_attn_layers", "sink_tokens", "attn_backend")
LEFT_OUT = [{"row": "SWA + full-attention decode",
             "why": "needs full-attention decoding from the decoding issue, which has not landed "
                    "in this tree; the row is left out, not estimated"}]


class AdaptError(ReproError):
    """Bad input or a failed step; the message says what was found and the fix."""


# --- the checkpoint --------------------------------------------------------------------------

def load_checkpoint_cfg(path: Path):
    """(model cfg, task cfg, criterion name, vocabulary rows) of a fairseq checkpoint."""
    if not path.is_file():
        raise AdaptError(f"checkpoint {path} does not exist")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # not a torch file
        raise AdaptError(f"cannot read checkpoint {path}: {e}") from None
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if cfg is None or cfg.get("model") is None:
        raise AdaptError(f"{path} holds no fairseq config ('cfg'): is it a fairseq checkpoint?")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg
    crit = cfg.get("criterion")
    rows = None
    for key, tensor in state.get("model", {}).items():
        if key.endswith("decoder.embed_tokens.weight"):
            rows = int(tensor.shape[0])
    return cfg.model, cfg.task, (crit.get("_name") if crit else None) or "cross_entropy", rows


def check_checkpoint(path: Path, data: Path) -> Dict:
    """Refuse a checkpoint that is not a full-attention transformer_xl_mswa or whose dictionary
    does not match ``data``; return what the run needs of it."""
    from fairseq.data import Dictionary

    from fairseq_mswa.models.window_config import schedule_from_config

    model, task, criterion, rows = load_checkpoint_cfg(path)
    arch = model.get("_name") or model.get("arch")
    if not str(arch).startswith("transformer_xl_mswa"):
        raise AdaptError(f"{path} is a {arch!r} model: adapt.py adapts transformer_xl_mswa "
                         "checkpoints (train one with --arch transformer_xl_mswa --attn-pattern "
                         "full, or give no --checkpoint to train one here)")
    layers, heads = int(model.decoder_layers), int(model.decoder_attention_heads)
    sched = schedule_from_config(model, layers, heads)
    if any(w is not None for layer in sched.windows for w in layer) or sched.sink_tokens:
        lo, hi = sched.window_range()
        raise AdaptError(
            f"{path} is not a full-attention checkpoint: it was trained with attn_pattern="
            f"{model.attn_pattern!r}, base_window={model.base_window}, full_attn_layers="
            f"{model.full_attn_layers!r}, sink_tokens={model.sink_tokens} (windows {lo}..{hi}). "
            "The adaptation starts from full attention: give a checkpoint trained with "
            "--attn-pattern full, or no --checkpoint to train one here")
    dict_path = data / "dict.txt"
    if not dict_path.is_file() or not (data / "test.bin").is_file():
        raise AdaptError(f"{data} is not a fairseq data-bin with a test split (dict.txt, "
                         "test.bin): give the data-bin the checkpoint was trained on with --data")
    dictionary = Dictionary.load(str(dict_path))
    if rows is not None and rows != len(dictionary):
        raise AdaptError(
            f"dictionary mismatch: {path} has {rows} embedding rows, {dict_path} gives "
            f"{len(dictionary)} symbols. Give the data-bin the checkpoint was trained on "
            f"(its config names {task.get('data')!r})")
    own = Path(str(task.get("data") or "")) / "dict.txt"
    if own.is_file() and own.resolve() != dict_path.resolve():
        theirs = Dictionary.load(str(own))
        if theirs.symbols != dictionary.symbols:
            diff = next(i for i, (a, b) in enumerate(zip(theirs.symbols, dictionary.symbols))
                        if a != b) if len(theirs) == len(dictionary) else None
            what = (f"symbol {diff} is {theirs.symbols[diff]!r} there, {dictionary.symbols[diff]!r}"
                    f" here" if diff is not None else f"{len(theirs)} vs {len(dictionary)} symbols")
            raise AdaptError(
                f"dictionary mismatch: {path} was trained on {own.parent}, whose dict.txt differs "
                f"from {dict_path} ({what}). Give --data {own.parent}")
    return {"arch": str(arch), "model": model, "criterion": criterion, "layers": layers,
            "heads": heads, "tokens_per_sample": int(task.get("tokens_per_sample")),
            "vocab": len(dictionary)}


def shape_flags(model) -> List[str]:
    """fairseq-train flags that rebuild the checkpoint's model (every non-window field)."""
    from fairseq_mswa.models.transformer_xl_mswa import TransformerXLMSWAConfig

    out = []
    for f in dataclasses.fields(TransformerXLMSWAConfig):
        if (f.name.startswith("_") or f.name in WINDOW_FIELDS
                or f.name in ("tokens_per_sample", "max_target_positions")):
            continue
        value = model.get(f.name)
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value != f.default:  # fairseq: store_true / store_false against the default
                out.append(flag)
        else:
            out += [flag, str(value)]
    return out


# --- targets and their cost ------------------------------------------------------------------

def target_overrides(pattern: str, base: int, sinks: int = 0, full_layers: str = "") -> Dict:
    return {"attn_pattern": pattern, "base_window": base, "window_variation": "geometric",
            "window_groups": 4, "attn_windows": "", "full_attn_layers": full_layers,
            "sink_tokens": sinks}


def schedule_of(ov: Dict, layers: int, heads: int):
    from fairseq_mswa.models.window_config import parse_layer_list
    from fairseq_mswa.schedule import build_schedule

    return build_schedule(layers, heads, ov["base_window"], ov["attn_pattern"],
                          ov["window_variation"], ov["window_groups"],
                          full_attn_layers=parse_layer_list(ov["full_attn_layers"]),
                          sink_tokens=ov["sink_tokens"])


def mswa_base_for(window: int, layers: int, heads: int) -> int:
    """Largest MSWA base window whose cost is <= that of SWA with ``window``."""
    from fairseq_mswa.schedule import ScheduleError

    budget = schedule_of(target_overrides("swa", window), layers, heads).cost()
    for base in range(4 * window, 0, -1):
        try:
            if schedule_of(target_overrides("mswa", base), layers, heads).cost() <= budget:
                return base
        except ScheduleError:
            continue
    raise AdaptError(f"no MSWA base window fits SWA's cost with window {window} "
                     f"({layers} layers x {heads} heads): use a larger --window")


def plan_targets(window: int, mswa_base: int, sinks: int, full_layers: str) -> List[Dict]:
    rows = [("full (control)", target_overrides("full", window))]
    for name, pattern, base in (("SWA", "swa", window), ("MSWA", "mswa", mswa_base)):
        rows += [(name, target_overrides(pattern, base)),
                 (f"{name} + sinks", target_overrides(pattern, base, sinks=sinks)),
                 (f"{name} + full layers", target_overrides(pattern, base,
                                                            full_layers=full_layers))]
    return [{"name": n, "overrides": ov} for n, ov in rows]


def window_flags(ov: Dict) -> List[str]:
    out = []
    for k, v in ov.items():
        if v != "":
            out += ["--" + k.replace("_", "-"), str(v)]
    return out


# --- commands --------------------------------------------------------------------------------

def finetune_command(ck: Dict, cfg: Dict, data: Path, ckpt: Path, ov: Dict, save_dir: Path,
                     tb: Path) -> List[str]:
    warmup = max(1, cfg["finetune_updates"] // 10)
    return [
        sys.executable, "-m", "fairseq_cli.train", str(data),
        "--user-dir", str(USER_DIR), "--task", "mswa_lm", "--arch", ck["arch"],
        *shape_flags(ck["model"]), *window_flags(ov),
        "--tokens-per-sample", str(cfg["segment"]), "--batch-size", str(cfg["batch"]),
        "--criterion", ck["criterion"],
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01",
        "--clip-norm", "0.25", "--lr", str(cfg["finetune_lr"]), "--lr-scheduler", "fixed",
        "--warmup-updates", str(warmup), "--max-update", str(cfg["finetune_updates"]),
        "--seed", "1", "--cpu", "--num-workers", "0", "--log-format", "simple",
        "--log-interval", str(max(1, min(cfg["log_interval"], cfg["finetune_updates"] // 4))),
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--save-interval-updates", "0",
        "--no-save-optimizer-state", "--disable-validation", "--tensorboard-logdir", str(tb),
        "--finetune-from-model", str(ckpt),
    ]


def eval_command(cfg: Dict, data: Path, ckpt: Path, ov: Optional[Dict]) -> List[str]:
    cmd = [sys.executable, "-m", "fairseq_cli.eval_lm", str(data),
           "--user-dir", str(USER_DIR), "--task", "mswa_lm", "--path", str(ckpt),
           "--gen-subset", "test", "--tokens-per-sample", str(cfg["segment"]),
           "--batch-size", str(cfg["eval_batch"]), "--num-workers", "0", "--cpu",
           "--log-format", "simple"]
    if ov is not None:
        cmd += ["--model-overrides", repr(ov)]
    return cmd


def shell_line(cmd: List[str]) -> str:
    """``cmd`` as one shell line; Python-literal arguments ('{...}') in double quotes."""
    def q(c):
        if "'" in c and not any(ch in c for ch in '"$`\\!'):
            return f'"{c}"'
        return shlex.quote(c)
    return " ".join(q(c) for c in cmd)


class Steps:
    """Runs the fairseq commands one after the other (run_utils.run_fairseq: full log per step in
    ``logs/``, one progress bar per training run, ``verbose``: the logs on screen), numbering the
    steps, and records every command as a result holds it (paths portable, ``roots``)."""

    def __init__(self, total: int, logs: Path, verbose: bool, roots: Dict[str, Path]):
        self.total, self.done = total, 0
        self.logs, self.verbose, self.roots = logs, verbose, roots
        self.commands: List[Dict] = []

    def note(self, msg: str) -> None:
        print(msg, flush=True)

    def run(self, name: str, cmd: List[str], what: str,
            total_updates: Optional[int] = None) -> str:
        print(f"[{self.done + 1}/{self.total}] {what}", flush=True)
        log_path = self.logs / f"{name}.log"
        t0 = time.time()
        try:
            out = run_fairseq(cmd, log_path, name, verbose=self.verbose,
                              total_updates=total_updates, cwd=REPO)
        except CommandError as e:
            raise AdaptError(f"{what} failed: {e}") from None
        self.commands.append({"step": name,
                              "command": shell_line(portable_command(cmd, self.roots)),
                              "log": portable_path(str(log_path), self.roots),
                              "wall_s": round(time.time() - t0, 1), "exit": 0})
        self.done += 1
        return out

    def close(self):
        pass


def score(text: str, split: Dict) -> Dict:
    ev = parse_eval_lm(text)
    m = metric_value("", "bpc" if split.get("unit") == "byte" else "ppl", ev, split)
    return {"value": m["value"], "metric": m["metric"], "eval_symbols": ev["eval_symbols"],
            "eval_tokens_per_s": ev["eval_tokens_per_s"]}


# --- outputs ---------------------------------------------------------------------------------

def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def machine_line(m: Dict) -> str:
    """One sentence about the machine (run_utils.machine_info's layout)."""
    return (f"Machine: {m.get('cpu_model') or 'CPU model not recorded'}, {m.get('cpu_count')} CPUs, torch threads "
            f"{m.get('torch_threads')}, torch {m.get('torch')}, Python {m.get('python')}; load "
            f"average {m.get('load_average_at_start')} at start, "
            f"{m.get('load_average_at_end')} at end.")


def markdown(res: Dict) -> str:
    m = res["metric"]
    full = res["full"]
    lines = [
        f"# SWAA adaptation{' (smoke)' if res['smoke'] else ''}: full attention -> SWA / MSWA",
        "",
        f"Full-attention `transformer_xl_mswa` ({res['model']['layers']} layers x "
        f"{res['model']['heads']} heads x {res['model']['embed_dim']}, {res['full']['updates']} "
        f"updates) on {res['corpus']['source']}; test {m} {fmt(full['value'], 4)}. Each target is "
        f"evaluated with no training (`--model-overrides`) and after "
        f"{res['config']['finetune_updates']} fine-tuning updates (`--finetune-from-model`, lr "
        f"{res['config']['finetune_lr']}). Evaluation length {res['config']['segment']} tokens "
        f"per segment with XL memory. Relative cost = sum of the attended keys of all heads "
        f"(`WindowSchedule.cost`, full heads counted at n = {res['config']['segment']}).",
        "",
        f"| target | windows | {m} before | {m} after FT | FT updates | cost / full | cost / SWA |",
        "|---|---|---|---|---|---|---|",
        f"| full (no adaptation) | full | {fmt(full['value'], 4)} | - | - | 1.00 | "
        f"{fmt(res['full']['relative_cost_vs_swa'], 2)} |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['name']} | {r['windows']} | {fmt(r['before']['value'], 4)} | "
            f"{fmt(r['after']['value'], 4)} | {r['finetune']['updates']} | "
            f"{fmt(r['relative_cost_vs_full'], 2)} | {fmt(r['relative_cost_vs_swa'], 2)} |")
    lines += ["", "Left out: " + "; ".join(f"**{x['row']}** ({x['why']})"
                                           for x in res["left_out"]), "",
              f"One seed, one run: differences of a few hundredths of a bit are within the noise "
              f"of such a short run.", "",
              machine_line(res["machine"]) + f" Finished {res['finished']}, total "
              f"wall time {res['total_wall_s']:.0f} s.", "",
              "Command: `" + res["command"] + "` (commit " + commit_text(res) + ")", "",
              "<details><summary>fairseq commands run</summary>", ""]
    for c in res["commands"]:
        lines += [f"* {c['step']} ({c['wall_s']} s): `{c['command']}`"]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def plot(res: Dict, path: Path) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(rows))
    before = [r["before"]["value"] for r in rows]
    after = [r["after"]["value"] for r in rows]
    a.bar([x - 0.2 for x in xs], before, 0.4, label="no training", color="tab:gray")
    a.bar([x + 0.2 for x in xs], after, 0.4,
          label=f"{res['config']['finetune_updates']} FT updates", color="tab:green")
    a.axhline(res["full"]["value"], color="k", ls="--", lw=1, label="full attention")
    a.set_xticks(list(xs))
    a.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    a.set_ylabel(f"test {res['metric']}")
    hi = max(v for v in before + after if math.isfinite(v))
    a.set_ylim(min(after + [res["full"]["value"]]) * 0.9, hi * 1.05)
    a.legend(fontsize=8)
    a.grid(alpha=0.3, axis="y")
    for r in rows:
        c = "tab:blue" if r["name"].startswith("SWA") else (
            "tab:red" if r["name"].startswith("MSWA") else "k")
        x = r["relative_cost_vs_full"]
        b.plot([x, x], [r["before"]["value"], r["after"]["value"]], color=c, alpha=0.4, lw=1)
        b.scatter([x], [r["before"]["value"]], facecolors="none", edgecolors=c, s=30)
        b.scatter([x], [r["after"]["value"]], color=c, s=30)
        b.annotate(r["name"], (r["relative_cost_vs_full"], r["after"]["value"]), fontsize=7,
                   xytext=(4, -8), textcoords="offset points")
    b.set_xlabel("relative cost (sum of attended keys, full = 1)")
    b.set_ylabel(f"test {res['metric']} (open: no training, filled: fine-tuned)")
    b.grid(alpha=0.3)
    fig.suptitle(f"SWAA adaptation of a full-attention model ({res['full']['updates']} updates), "
                 f"{res['corpus']['source']}", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


# --- main ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="full-attention transformer_xl_mswa checkpoint (default: train one on "
                         "the demo corpus)")
    ap.add_argument("--data", type=Path, default=None,
                    help="its data-bin (required with --checkpoint; without one, the full model "
                         "is trained on this data-bin instead of the demo corpus)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, a few updates (CI)")
    ap.add_argument("--train-updates", type=int, default=None,
                    help="updates of the full model trained here (CPU default 1200)")
    ap.add_argument("--finetune-updates", type=int, default=None,
                    help="fine-tuning updates per target (CPU default 100)")
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="fixed fine-tuning learning rate after a 10%% warm-up (default: the "
                         "last learning rate of the full model trained here; 3e-4 with "
                         "--checkpoint)")
    ap.add_argument("--segment", type=int, default=None,
                    help="tokens per sample for training and evaluation (default 128; with a "
                         "checkpoint: its own)")
    ap.add_argument("--batch", type=int, default=None, help="streams per training batch")
    ap.add_argument("--window", type=int, default=None, help="SWA window (default 32)")
    ap.add_argument("--mswa-base", type=int, default=None,
                    help="MSWA base window (default: the largest whose cost is <= SWA's)")
    ap.add_argument("--sinks", type=int, default=None, help="sink tokens (default 4)")
    ap.add_argument("--full-layers", default=None,
                    help="layers kept full in the '+ full layers' rows (default: the last layer, "
                         "where MSWA already has its largest windows)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="cap on the full model's training time (default 12)")
    ap.add_argument("--work", type=Path, default=None,
                    help="corpus, checkpoints and logs (default runs/adaptation, smoke: "
                         "runs/adaptation-smoke)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where adaptation.{json,md,png} go (default results/adaptation; smoke: "
                         "<work>/results)")
    ap.add_argument("--verbose", action="store_true", help="stream the fairseq logs")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = dict(SMOKE if args.smoke else CPU)
    if args.checkpoint is not None:
        cfg["finetune_lr"] = 3e-4
    for key in ("train_updates", "finetune_updates", "finetune_lr", "segment", "batch",
                "window", "sinks", "minutes"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    work = (args.work or REPO / "runs" / ("adaptation-smoke" if args.smoke else "adaptation"))
    out = args.out or (work / "results" if args.smoke else REPO / "results" / "adaptation")
    roots = {"work": work, "out": out, "data": args.data, "checkpoint-dir":
             args.checkpoint.parent if args.checkpoint is not None else None}
    prov = provenance(script_command("adapt.py", argv, roots), "cpu")
    t_start = time.time()
    try:
        if args.checkpoint is not None and args.data is None:
            raise AdaptError("--checkpoint needs --data: the data-bin it was trained on")
        if args.checkpoint is not None:
            ck = check_checkpoint(args.checkpoint.resolve(), args.data.resolve())
            if args.segment is None:
                cfg["segment"] = ck["tokens_per_sample"]
        steps_total = 1 + 1 + 2 * 7 + 6  # (train) + full eval + 7 FT + 7 evals + 6 zero-shot
        bar = Steps(steps_total if args.checkpoint is None else steps_total - 1,
                    work / "logs", args.verbose, roots)
        try:
            res = run(args, cfg, work, bar)
        finally:
            bar.close()
    except (ReproError, CommandError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prov["machine"]["load_average_at_end"] = load_average()
    res.update({
        "smoke": bool(args.smoke), "left_out": LEFT_OUT,
        **prov,  # command, git_commit, git_dirty, date (of the start), machine
        "total_wall_s": round(time.time() - t_start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    })
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "adaptation.json", res)
    md = markdown(res)
    write_text_atomic(out / "adaptation.md", md)
    plot(res, out / "adaptation.png")
    print("\n".join(l for l in md.split("\n") if l.startswith("|")))
    print(f"\nLeft out: {LEFT_OUT[0]['row']} ({LEFT_OUT[0]['why']}).")
    print(f"Total {res['total_wall_s']:.0f} s. Wrote {out / 'adaptation.json'}, .md, .png; "
          f"logs in {work / 'logs'}")
    return 0


def run(args, cfg: Dict, work: Path, steps: Steps) -> Dict:
    tb = work / "tb"
    if args.checkpoint is None:
        from data_prep.pydoc_corpus import prepare_pydoc_chars

        from fairseq_mswa.experiments import demo

        if args.data is not None:
            data = args.data.resolve()
            source = str(data)
        else:
            steps.note("building the character corpus from pydoc_data.topics "
                       "(data_prep/pydoc_corpus.py)")
            info = prepare_pydoc_chars(work / "data-bin", max_bytes=cfg["max_bytes"], workers=1,
                                       name="pydoc-chars" if cfg["max_bytes"] is None
                                       else f"pydoc-chars-{cfg['max_bytes']}",
                                       log=lambda m: None)
            data = (work / "data-bin" / info["dataset"]).resolve()
            source = info["source"] + (f", first {cfg['max_bytes']:,} bytes"
                                       if cfg["max_bytes"] else "")
        full_dir = work / "checkpoints" / "full"
        if full_dir.exists():
            import shutil
            shutil.rmtree(full_dir)
        # the demo's training command (scripts/demo.py), with full attention
        tcfg = dict(cfg, updates=cfg["train_updates"], base_window=cfg["window"])
        cmd = demo.train_command(tcfg, data, "full", full_dir, tb / "full")
        cmd += ["--dropout", str(cfg["dropout"])]  # the demo's preset has none (short runs)
        t0 = time.time()
        text = steps.run("train_full", cmd, f"training the full model ({cfg['train_updates']} "
                                            "updates)", total_updates=cfg["train_updates"])
        trained = parse_train_summary(text)
        ckpt = full_dir / "checkpoint_last.pt"
        full_info = {"updates": trained.get("updates"), "train_wall_s": round(time.time() - t0, 1),
                     "train_loss_base2": trained.get("train_loss_base2"),
                     "train_tokens_per_s": trained.get("train_tokens_per_s")}
        if full_info["updates"] != cfg["train_updates"]:
            steps.note(f"note: the full model stopped after {full_info['updates']} of "
                       f"{cfg['train_updates']} updates (the {cfg['minutes']:g}-minute cap)")
        ck = check_checkpoint(ckpt, data)
        if cfg["finetune_lr"] is None:  # inverse_sqrt (demo.train_command) at the last update
            last = max(1, full_info["updates"] or cfg["train_updates"])
            cfg["finetune_lr"] = float(f"{cfg['lr'] * min(1.0, (cfg['warmup'] / last) ** 0.5):.3g}")
    else:
        ckpt, data = args.checkpoint.resolve(), args.data.resolve()
        ck = check_checkpoint(ckpt, data)
        source = str(data)
        full_info = {"updates": None, "checkpoint": portable_path(str(ckpt), steps.roots)}
    split = test_split_stats(data)  # {} for a data-bin not made by data_prep: perplexity
    layers, heads = ck["layers"], ck["heads"]
    full_layers = args.full_layers if args.full_layers is not None else str(layers - 1)
    mswa_base = args.mswa_base or mswa_base_for(cfg["window"], layers, heads)
    targets = plan_targets(cfg["window"], mswa_base, cfg["sinks"], full_layers)
    n = cfg["segment"]
    from fairseq_mswa.schedule import build_schedule

    full_cost = build_schedule(layers, heads, pattern="full").cost(n)
    swa_cost = schedule_of(target_overrides("swa", cfg["window"]), layers, heads).cost(n)
    for t in targets:
        s = schedule_of(t["overrides"], layers, heads)
        lo, hi = s.window_range()
        t["windows"] = ("full" if lo is None else f"{lo}" if lo == hi and hi is not None
                        else f"{lo}..{hi if hi is not None else 'full'}")
        if s.sink_tokens:
            t["windows"] += f" + {s.sink_tokens} sinks"
        t["schedule"] = [list(layer) for layer in s.windows]
        t["cost"] = s.cost(n)
        t["relative_cost_vs_full"] = t["cost"] / full_cost
        t["relative_cost_vs_swa"] = t["cost"] / swa_cost

    # the full model as it is
    text = steps.run("eval_full", eval_command(cfg, data, ckpt, None), "evaluating full")
    full_score = score(text, split)
    metric = full_score["metric"]
    full_info.update(value=full_score["value"], eval_tokens_per_s=full_score["eval_tokens_per_s"],
                     eval_symbols=full_score["eval_symbols"], relative_cost_vs_swa=full_cost /
                     swa_cost, command=steps.commands[-1]["command"] if steps.commands else None)
    # no training: every target through --model-overrides
    for t in targets:
        if t["overrides"]["attn_pattern"] == "full":
            t["before"] = dict(full_score)
            continue
        slug = t["name"].lower().replace(" + ", "_").replace(" ", "_")
        t["slug"] = slug
        text = steps.run(f"eval_{slug}_before", eval_command(cfg, data, ckpt, t["overrides"]),
                         f"evaluating {t['name']} (no training)")
        t["before"] = score(text, split) | {"command": steps.commands[-1]["command"]}
    # brief fine-tuning under every target, then evaluation again
    for t in targets:
        slug = t.setdefault("slug", "full_control")
        save = work / "checkpoints" / slug
        if save.exists():
            import shutil
            shutil.rmtree(save)
        cmd = finetune_command(ck, cfg, data, ckpt, t["overrides"], save, tb / slug)
        t0 = time.time()
        text = steps.run(f"finetune_{slug}", cmd, f"fine-tuning {t['name']}",
                         total_updates=cfg["finetune_updates"])
        tr = parse_train_summary(text)
        t["finetune"] = {"updates": tr.get("updates"), "wall_s": round(time.time() - t0, 1),
                         "train_loss_base2": tr.get("train_loss_base2"),
                         "train_tokens_per_s": tr.get("train_tokens_per_s"),
                         "command": steps.commands[-1]["command"]}
        text = steps.run(f"eval_{slug}_after",
                         eval_command(cfg, data, save / "checkpoint_last.pt", None),
                         f"evaluating {t['name']} (fine-tuned)")
        t["after"] = score(text, split) | {"command": steps.commands[-1]["command"]}
    return {
        "metric": metric,
        "config": cfg | {"mswa_base": mswa_base, "full_layers": full_layers},
        "corpus": {"source": portable_path(source, steps.roots),
                   "data": portable_path(str(data), steps.roots), "test_split": split},
        "model": {"arch": ck["arch"], "layers": layers, "heads": heads,
                  "embed_dim": int(ck["model"].decoder_embed_dim), "vocab": ck["vocab"]},
        "full": full_info,
        "rows": [{k: t[k] for k in ("name", "overrides", "windows", "schedule", "cost",
                                    "relative_cost_vs_full", "relative_cost_vs_swa", "before",
                                    "finetune", "after")} for t in targets],
        "cost_note": f"WindowSchedule.cost at n = {n} (tokens per sample); full heads count n, "
                     "windowed heads their window plus the sinks. With XL memory a full head "
                     f"actually sees {n}..{2 * n - 1} keys: the cost of full attention is "
                     "understated, the windowed targets' ratios vs full are conservative",
        "commands": steps.commands,
    }


if __name__ == "__main__":
    sys.exit(main())
