"""SWAA adaptation study: turn a full-attention Transformer-XL into a windowed one, SWA or MSWA.

    python scripts/adapt.py                                  # CPU-scale study (Shakespeare corpus)
    python scripts/adapt.py --checkpoint CKPT --data DATA    # adapt your own full-attention model
    python scripts/adapt.py --smoke                          # tiny model, a few updates (CI)

SWAA (Yu et al., arXiv 2512.10411) adapts a model pretrained with full attention (FA) to sliding
window attention (SWA) with four recipes: keep-first sink tokens, some full-attention layers,
full-attention decoding and brief fine-tuning. Here the target can also be MSWA (a window per head
and per layer group), and a fifth recipe is added, gpt-oss's learned sink logits:

1. takes a full-attention ``transformer_xl_mswa`` checkpoint and its data-bin, or, with none given,
   trains one itself (4 layers x 4 heads x 128 on the Shakespeare byte corpus, data_prep/
   shakespeare.py; ``--smoke``: the small pydoc corpus) with ``fairseq-train``;
2. evaluates it on the test split with ``fairseq-eval-lm``, unchanged (full) and, with no training,
   under every target through ``--model-overrides`` (:func:`plan_targets`): SWA; MSWA cost-matched
   to SWA (:func:`cost_matched_mswa`: cost within 3 % of SWA's) and MSWA at SWA's window as its
   base; each + sinks, + a full layer (first or last), + sinks + the last layer full, + learned
   sinks;
3. fine-tunes the checkpoint under every target (``fairseq-train --finetune-from-model`` with the
   target's window flags) and evaluates again: SWA, MSWA and the full-model control (how much of
   the gain is just more training) at every ``--finetune-updates`` length (SWA and MSWA with
   every ``--seeds`` seed, the control with the first), the other targets at the first length
   with the first seed;
4. decode-time evaluation (``decode_eval``: prompts in one incremental call, continuations token
   by token) of SWA, MSWA and their + sinks targets, before and after fine-tuning, with the
   trained windows and with SWAA's full-attention decode (``decode_full_attention``);
5. writes ``adaptation.{json,md,png}`` (default results/adaptation/): bits per character (or
   perplexity) before and after fine-tuning, mean and spread over seeds, SWA vs MSWA paired seed
   by seed, the decode-time table, relative cost (vs full attention and vs SWA), the exact
   commands, machine, date and wall time.

Every number written is measured in the run. The full fairseq logs go to ``<work>/logs/``
(``--verbose`` also streams them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from studies.reproduce import ReproError, metric_value, test_split_stats
from studies.run_utils import (
    USER_DIR,
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


# The full-attention model trained when no checkpoint is given (the demo's shape: 4 layers x 4
# heads, so that MSWA's 4 layer groups and 4 head groups get one layer / one head each), and the
# adaptation recipe. ``segment`` is the training and evaluation length: a full-attention layer
# keeps ``segment`` states of memory, so a full head sees 128..255 keys, SWA's heads 32.
# ``finetune_lr`` None: the learning rate the full model trained here ended with (inverse_sqrt at
# its last update), so that fine-tuning continues its schedule; 3e-4 for a given checkpoint.
# ``finetune_updates``: the fine-tuning lengths (SWA, MSWA and the control run at each, the other
# targets at the first); ``seeds``: fine-tuning seeds of SWA and MSWA at every length (the stream task's batches are the same for every seed: a seed changes the dropout
# masks of fine-tuning, not the pretrained model). ``prompt_tokens`` / ``continuation_tokens`` /
# ``decode_pairs``: the decode-time evaluation (a prompt of 8 SWA windows, so that full-attention
# decoding has far context to use).
CPU = dict(layers=4, heads=4, embed=128, ffn=512, segment=128, batch=8, train_updates=4000,
           lr=1e-3, warmup=100, dropout=0.1, minutes=15.0, finetune_updates=[250, 1000],
           seeds=[1, 2, 3], finetune_lr=None, window=32, sinks=4, eval_batch=8, max_bytes=None,
           log_interval=50, prompt_tokens=256, continuation_tokens=128, decode_pairs=128)
SMOKE = dict(layers=4, heads=4, embed=32, ffn=64, segment=32, batch=2, train_updates=4,
             lr=1e-3, warmup=1, dropout=0.0, minutes=5.0, finetune_updates=[2], seeds=[1, 2],
             finetune_lr=None, window=16, sinks=2, eval_batch=2, max_bytes=20_000,
             log_interval=1, prompt_tokens=24, continuation_tokens=8, decode_pairs=4,
             # one target of each recipe (every fairseq call costs seconds of start-up)
             targets=["full (control)", "SWA", "MSWA", "MSWA (base 16)", "SWA + sinks",
                      "MSWA + sinks + full layer 3", "MSWA + learned sinks"],
             decode_targets=["SWA"])
# a cost-matched MSWA target costs within this fraction of SWA's
COST_MATCH = 0.03

# window fields of the model config: set by the target, never copied from the checkpoint
WINDOW_FIELDS = ("attn_pattern", "base_window", "window_variation", "window_groups",
                 "attn_windows", "full_attn_layers", "sink_tokens", "learned_sinks",
                 "attn_backend", "decode_full_attention")


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

def target_overrides(pattern: str, base: int, sinks: int = 0, full_layers: str = "",
                     windows: str = "", learned_sinks: bool = False) -> Dict:
    """The window fields of a target (``--model-overrides`` / fairseq-train flags)."""
    return {"attn_pattern": pattern, "base_window": base, "window_variation": "geometric",
            "window_groups": 4, "attn_windows": windows, "full_attn_layers": full_layers,
            "sink_tokens": sinks, "learned_sinks": learned_sinks}


def schedule_of(ov: Dict, layers: int, heads: int):
    from fairseq_mswa.schedule import parse_layer_list
    from fairseq_mswa.schedule import build_schedule

    return build_schedule(layers, heads, ov["base_window"], ov["attn_pattern"],
                          ov["window_variation"], ov["window_groups"],
                          windows=ov.get("attn_windows") or None,
                          full_attn_layers=parse_layer_list(ov["full_attn_layers"]),
                          sink_tokens=ov["sink_tokens"])


def _mswa_cost(base: int, layers: int, heads: int) -> Optional[int]:
    from fairseq_mswa.schedule import ScheduleError

    try:
        return schedule_of(target_overrides("mswa", base), layers, heads).cost()
    except ScheduleError:  # a base whose windows are not integers
        return None


def mswa_base_for(window: int, layers: int, heads: int) -> int:
    """Largest MSWA base window whose cost is <= that of SWA with ``window``."""
    budget = schedule_of(target_overrides("swa", window), layers, heads).cost()
    for base in range(4 * window, 0, -1):
        cost = _mswa_cost(base, layers, heads)
        if cost is not None and cost <= budget:
            return base
    raise AdaptError(f"no MSWA base window fits SWA's cost with window {window} "
                     f"({layers} layers x {heads} heads): use a larger --window")


def cost_matched_mswa(window: int, layers: int, heads: int, tol: float = COST_MATCH) -> Dict:
    """The MSWA target whose cost is closest to SWA's (window ``window``), within ``tol``.

    First the paper's schedule at a base window whose windows are all integers (with 4 x 4
    geometric groups: multiples of 16). Where none is within ``tol`` (4 x 4 heads, w = 32: base
    32 costs 0.879 of SWA, 48 costs 1.318), the paper's windows of a valid base ``b0`` scaled by
    ``b / b0`` and rounded to integers (explicit ``--attn-windows``; same 4 x 4 ratios up to the
    rounding), with the integer ``b`` whose cost is closest. Returns {overrides, base, how,
    relative_cost}."""
    budget = schedule_of(target_overrides("swa", window), layers, heads).cost()
    best = None
    for base in range(1, 4 * window + 1):
        cost = _mswa_cost(base, layers, heads)
        if cost is not None and abs(cost / budget - 1) <= tol:
            if best is None or abs(cost / budget - 1) < abs(best[1] / budget - 1):
                best = (base, cost)
    if best is not None:
        return {"overrides": target_overrides("mswa", best[0]), "base": best[0],
                "how": f"the paper's schedule at base {best[0]}", "relative_cost": best[1] / budget}
    b0 = mswa_base_for(window, layers, heads)
    ref = schedule_of(target_overrides("mswa", b0), layers, heads).windows
    for base in sorted(range(1, 4 * window + 1), key=lambda b: abs(b - window * 256 / 225)):
        rows = [[max(1, int(w * base / b0 + 0.5)) for w in layer] for layer in ref]
        ov = target_overrides("mswa", b0, windows=json.dumps(rows))
        cost = schedule_of(ov, layers, heads).cost()
        if abs(cost / budget - 1) <= tol:
            return {"overrides": ov, "base": base, "relative_cost": cost / budget,
                    "how": f"no base with integer windows is within {tol:.0%} of SWA's cost "
                           f"(base {b0}: {_mswa_cost(b0, layers, heads) / budget:.3f}); the "
                           f"paper's windows of base {b0} scaled to base {base} and rounded "
                           "(explicit --attn-windows)"}
    raise AdaptError(f"no MSWA target within {tol:.0%} of SWA's cost with window {window} "
                     f"({layers} layers x {heads} heads): give --mswa-base")


def plan_targets(cfg: Dict, matched: Dict, layers: int, heads: int) -> List[Dict]:
    """Every target: name, overrides, fine-tuning lengths and seeds, and whether the decode-time
    evaluation covers it. SWA and MSWA (cost-matched) run every length and seed, the full
    control every length with the first seed, the SWAA recipes and their combinations the first
    length with the first seed."""
    w, k = cfg["window"], cfg["sinks"]
    lengths, seeds = list(cfg["finetune_updates"]), list(cfg["seeds"])
    one = {"lengths": lengths[:1], "seeds": seeds[:1]}
    every = {"lengths": lengths, "seeds": seeds}
    last = str(layers - 1)
    swa = target_overrides("swa", w)
    mswa = matched["overrides"]
    rows = [dict(name="full (control)", overrides=target_overrides("full", w), lengths=lengths,
                 seeds=seeds[:1]),
            dict(name="SWA", overrides=swa, decode=True, **every),
            dict(name="MSWA", overrides=mswa, decode=True, **every)]
    same = target_overrides("mswa", w)
    if _mswa_cost(w, layers, heads) is not None and (same["attn_windows"], same["base_window"]) != (
            mswa["attn_windows"], mswa["base_window"]):
        rows.append(dict(name=f"MSWA (base {w})", overrides=same, **one))
    for name, ov in (("SWA", swa), ("MSWA", mswa)):
        rows += [dict(name=f"{name} + sinks", overrides=dict(ov, sink_tokens=k), decode=True, **one),
                 dict(name=f"{name} + full layer 0", overrides=dict(ov, full_attn_layers="0"),
                      **one),
                 dict(name=f"{name} + full layer {last}",
                      overrides=dict(ov, full_attn_layers=last), **one),
                 dict(name=f"{name} + sinks + full layer {last}",
                      overrides=dict(ov, sink_tokens=k, full_attn_layers=last), **one),
                 dict(name=f"{name} + learned sinks", overrides=dict(ov, learned_sinks=True),
                      **one)]
    if cfg.get("targets") is not None:  # a subset (the smoke run)
        rows = [r for r in rows if r["name"] in cfg["targets"]]
    for r in rows:
        r.setdefault("decode", False)
        if cfg.get("decode_targets") is not None:
            r["decode"] = r["name"] in cfg["decode_targets"]
        r["slug"] = (r["name"].lower().replace(" + ", "_").replace("(", "").replace(")", "")
                     .replace(" ", "_"))
    return rows


def window_flags(ov: Dict) -> List[str]:
    """fairseq-train flags of a target's window fields (booleans as store_true flags)."""
    out = []
    for k, v in ov.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out += [flag] if v else []
        elif v != "":
            out += [flag, str(v)]
    return out


# --- commands --------------------------------------------------------------------------------

def finetune_command(ck: Dict, cfg: Dict, data: Path, ckpt: Path, ov: Dict, save_dir: Path,
                     tb: Path, updates: int, seed: int) -> List[str]:
    """fairseq-train from the full checkpoint under the target ``ov``: ``updates`` updates at a
    fixed learning rate after a 10 % warm-up, seed ``seed``."""
    warmup = max(1, updates // 10)
    return [
        sys.executable, "-m", "fairseq_cli.train", str(data),
        "--user-dir", str(USER_DIR), "--task", "mswa_lm", "--arch", ck["arch"],
        *shape_flags(ck["model"]), *window_flags(ov),
        "--tokens-per-sample", str(cfg["segment"]), "--batch-size", str(cfg["batch"]),
        "--criterion", ck["criterion"],
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01",
        "--clip-norm", "0.25", "--lr", str(cfg["finetune_lr"]), "--lr-scheduler", "fixed",
        "--warmup-updates", str(warmup), "--max-update", str(updates),
        "--seed", str(seed), "--cpu", "--num-workers", "0", "--log-format", "simple",
        "--log-interval", str(max(1, min(cfg["log_interval"], updates // 4))),
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


def decode_eval_command(cfg: Dict, data: Path, ckpt: Path, ov: Dict) -> List[str]:
    """scripts/decode_eval.py on the test split: prompts of ``prompt_tokens`` in one incremental
    call, ``continuation_tokens`` scored token by token, the first ``decode_pairs`` pairs."""
    return [sys.executable, str(REPO / "scripts" / "decode_eval.py"), str(data),
            "--path", str(ckpt), "--user-dir", str(USER_DIR),
            "--prompt-tokens", str(cfg["prompt_tokens"]),
            "--continuation-tokens", str(cfg["continuation_tokens"]),
            "--max-pairs", str(cfg["decode_pairs"]), "--batch-size", "16", "--cpu",
            "--model-overrides", repr(ov)]


def parse_decode_eval(text: str) -> Dict:
    """decode_eval's result line (``continuation bits per token: X over N tokens``)."""
    from studies.decode_eval import parse_result_line

    result = parse_result_line(text)
    if result is None:
        raise AdaptError("decode_eval printed no 'continuation bits per token' line")
    return result


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

    @property
    def last_command(self) -> str:
        """The command line of the last step run, as the result records it."""
        return self.commands[-1]["command"]

    def close(self):
        pass


def score(text: str, split: Dict) -> Dict:
    ev = parse_eval_lm(text)
    m = metric_value("", "bpc" if split.get("unit") == "byte" else "ppl", ev, split)
    return {"value": m["value"], "metric": m["metric"], "eval_symbols": ev["eval_symbols"],
            "eval_tokens_per_s": ev["eval_tokens_per_s"]}


# --- statistics and outputs ------------------------------------------------------------------

def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def mean_std(values: List[float]) -> Dict:
    """{n, mean, std (None below 2 values), values}."""
    from studies.stats import mean_and_std

    mean, std = mean_and_std(values)
    return {"n": len(values), "mean": mean, "std": std, "values": list(values)}


def paired_swa_mswa(rows: List[Dict], confidence: float = 0.95) -> List[Dict]:
    """SWA vs MSWA (cost-matched) seed by seed at every fine-tuning length: d = value[SWA] -
    value[MSWA] (same seed = same batches and dropout masks; d > 0: MSWA better, the MSWA
    paper's from-scratch claim), the Student-t interval of the mean d and its verdict. With no
    training there is one deterministic pair (no seed)."""
    from studies.stats import judge

    by = {r["name"]: r for r in rows}
    swa, mswa = by["SWA"], by["MSWA"]
    out = [{"updates": 0, "n_seeds": 0, "diffs": [swa["before"]["value"] - mswa["before"]["value"]],
            "mean_diff": swa["before"]["value"] - mswa["before"]["value"], "std_diff": None,
            "interval": None, "verdict": "no training (deterministic, one value)"}]
    for updates in sorted({run["updates"] for run in swa["runs"]}):
        a = {run["seed"]: run["after"]["value"] for run in swa["runs"] if run["updates"] == updates}
        b = {run["seed"]: run["after"]["value"] for run in mswa["runs"] if run["updates"] == updates}
        seeds = sorted(set(a) & set(b))
        diffs = [a[s] - b[s] for s in seeds]
        verdict, lo, hi, _ = judge(diffs, confidence)
        stats = mean_std(diffs)
        out.append({"updates": updates, "n_seeds": len(seeds), "seeds": seeds, "diffs": diffs,
                    "swa": [a[s] for s in seeds], "mswa": [b[s] for s in seeds],
                    "mean_diff": stats["mean"], "std_diff": stats["std"],
                    "interval": None if lo is None else [lo, hi],
                    "verdict": {"holds": "MSWA better", "reversed": "MSWA worse"}.get(verdict,
                                                                                      verdict)})
    return out


def machine_line(m: Dict) -> str:
    """One sentence about the machine (run_utils.machine_info's layout)."""
    return (f"Machine: {m.get('cpu_model') or 'CPU model not recorded'}, {m.get('cpu_count')} CPUs, torch threads "
            f"{m.get('torch_threads')}, torch {m.get('torch')}, Python {m.get('python')}; load "
            f"average {m.get('load_average_at_start')} at start, "
            f"{m.get('load_average_at_end')} at end.")


def _cell(stats: Optional[Dict], nd: int = 3) -> str:
    if not stats or stats["mean"] is None:
        return "-"
    if stats["n"] == 1:
        return fmt(stats["mean"], nd)
    return f"{fmt(stats['mean'], nd)} ± {fmt(stats['std'], nd)} ({stats['n']} seeds)"


def _md_targets(res: Dict) -> List[str]:
    """What was adapted and how, and every target before and after fine-tuning."""
    m, cfg = res["metric"], res["config"]
    full = res["full"]
    lengths = cfg["finetune_updates"]
    lines = [
        f"# SWAA adaptation{' (smoke)' if res['smoke'] else ''}: full attention -> SWA / MSWA",
        "",
        f"Full-attention `transformer_xl_mswa` ({res['model']['layers']} layers x "
        f"{res['model']['heads']} heads x {res['model']['embed_dim']}, {full['updates']} "
        f"updates) on {res['corpus']['source']}; test {m} {fmt(full['value'], 4)}. Training and "
        f"evaluation length {cfg['segment']} tokens per segment with XL memory: a full head sees "
        f"{cfg['segment']}..{2 * cfg['segment'] - 1} keys, {cfg['segment'] / cfg['window']:g}.."
        f"{(2 * cfg['segment'] - 1) / cfg['window']:.1f}x SWA's window {cfg['window']}. Each "
        f"target is evaluated with no training (`--model-overrides`) and after fine-tuning "
        f"(`--finetune-from-model`, fixed lr {cfg['finetune_lr']} after a 10 % warm-up) for "
        f"{' and '.join(str(x) for x in lengths)} updates; SWA and MSWA with seeds "
        f"{', '.join(str(s) for s in cfg['seeds'])} (a seed changes the fine-tuning's dropout "
        "masks; the batches and the pretrained model are the same), the control at both "
        f"lengths and every other target at {lengths[0]} updates with seed {cfg['seeds'][0]}. **MSWA** is cost-matched to SWA: "
        f"{res['mswa_match']['how']}, cost {res['mswa_match']['relative_cost']:.3f} of SWA's. "
        f"Relative cost = sum of the attended keys of all heads (`WindowSchedule.cost`, full "
        f"heads counted at n = {cfg['segment']}; learned sinks add no keys).",
        "",
        f"| target | windows | cost / full | cost / SWA | {m}, no training | "
        + " | ".join(f"{m}, {u} FT updates" for u in lengths) + " |",
        "|---|---|---|---|---|" + "---|" * len(lengths),
        f"| full (no adaptation) | full | 1.00 | {fmt(full['relative_cost_vs_swa'], 2)} | "
        f"{fmt(full['value'], 4)} |" + " - |" * len(lengths),
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['name']} | {r['windows']} | {fmt(r['relative_cost_vs_full'], 2)} | "
            f"{fmt(r['relative_cost_vs_swa'], 2)} | {fmt(r['before']['value'], 4)} | "
            + " | ".join(_cell(r["after"].get(str(u)), 4) for u in lengths) + " |")
    return lines + ["", "Mean ± standard deviation over seeds where there are several."]


def _md_paired(res: Dict) -> List[str]:
    """SWA against cost-matched MSWA, seed by seed, with the verdict per fine-tuning length."""
    m = res["metric"]
    lines = ["", "## SWA vs MSWA (cost-matched), seed by seed", "",
             f"d = {m}[SWA] - {m}[MSWA] for the same seed (d > 0: MSWA better, as the MSWA paper "
             "finds from scratch). Verdict from the 95 % Student-t interval of the mean d.", "",
             "| fine-tuning updates | seeds | SWA | MSWA | mean d | std d | 95 % interval | "
             "verdict |", "|---|---|---|---|---|---|---|---|"]
    by = {r["name"]: r for r in res["rows"]}
    for p in res["paired"]:
        if p["updates"] == 0:
            lines.append(f"| 0 (no training) | - | {fmt(by['SWA']['before']['value'], 4)} | "
                         f"{fmt(by['MSWA']['before']['value'], 4)} | {fmt(p['mean_diff'], 4)} | - "
                         f"| - | {p['verdict']} |")
            continue
        ci = "-" if p["interval"] is None else f"[{p['interval'][0]:+.4f}, {p['interval'][1]:+.4f}]"
        lines.append(f"| {p['updates']} | {p['n_seeds']} | "
                     f"{', '.join(fmt(x, 4) for x in p['swa'])} | "
                     f"{', '.join(fmt(x, 4) for x in p['mswa'])} | {fmt(p['mean_diff'], 4)} | "
                     f"{fmt(p['std_diff'], 4)} | {ci} | **{p['verdict']}** |")
    return lines


def _md_decode(dec: Dict) -> List[str]:
    """Each target as trained and with SWAA's full-attention decode."""
    lines = ["", "## Decode-time evaluation (SWAA's full-attention decode)", "",
             f"`scripts/decode_eval.py`: the first {dec['pairs']} pairs of the test split, each "
             f"a {dec['prompt_tokens']}-token prompt decoded in one incremental call and "
             f"{dec['continuation_tokens']} continuation tokens decoded one by one and scored "
             "(bits per token). *As trained*: the target's windows; *full-attention decode*: "
             "`decode_full_attention` (the prompt on the windows, every continuation token sees "
             "the whole context).", "",
             "| target | checkpoint | as trained | full-attention decode | change |",
             "|---|---|---|---|---|"]
    for d in dec["rows"]:
        a, b = d.get("as_trained"), d.get("full_decode")
        change = (fmt(b["bits_per_token"] - a["bits_per_token"], 4) if a and b else "-")
        lines.append(f"| {d['target']} | {d['checkpoint']} | "
                     f"{fmt(a['bits_per_token'], 4) if a else '-'} | "
                     f"{fmt(b['bits_per_token'], 4) if b else '-'} | {change} |")
    return lines


def markdown(res: Dict) -> str:
    """adaptation.md: the targets, the paired SWA / MSWA comparison, decoding, provenance and
    every command run."""
    lines = _md_targets(res) + _md_paired(res) + _md_decode(res["decode"])
    lines += ["", machine_line(res["machine"]) + f" Finished {res['finished']}, total "
              f"wall time {res['total_wall_s']:.0f} s.", "",
              "Command: `" + res["command"] + "` (commit " + commit_text(res) + ")", "",
              "<details><summary>commands run</summary>", ""]
    lines += [f"* {c['step']} ({c['wall_s']} s): `{c['command']}`" for c in res["commands"]]
    return "\n".join(lines + ["", "</details>", ""])


def plot(res: Dict, path: Path) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, lengths = res["rows"], res["config"]["finetune_updates"]
    first = str(lengths[0])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    xs = range(len(rows))
    before = [r["before"]["value"] for r in rows]
    after = [r["after"][first]["mean"] for r in rows]
    a.bar([x - 0.2 for x in xs], before, 0.4, label="no training", color="tab:gray")
    a.bar([x + 0.2 for x in xs], after, 0.4, label=f"{first} FT updates", color="tab:green")
    a.axhline(res["full"]["value"], color="k", ls="--", lw=1, label="full attention")
    a.set_xticks(list(xs))
    a.set_xticklabels([r["name"] for r in rows], rotation=35, ha="right", fontsize=7)
    a.set_ylabel(f"test {res['metric']}")
    finite = [v for v in before + after if math.isfinite(v)]
    a.set_ylim(min(finite + [res["full"]["value"]]) * 0.95, max(finite) * 1.03)
    a.legend(fontsize=8)
    a.grid(alpha=0.3, axis="y")
    by = {r["name"]: r for r in rows}
    for name, color in (("full (control)", "k"), ("SWA", "tab:blue"), ("MSWA", "tab:red")):
        r = by[name]
        ux = [0] + list(lengths)
        ys = [r["before"]["value"]] + [r["after"][str(u)]["mean"] for u in lengths]
        err = [0] + [r["after"][str(u)]["std"] or 0 for u in lengths]
        b.errorbar(ux, ys, yerr=err, marker="o", capsize=3, color=color, label=name)
    b.set_xlabel("fine-tuning updates")
    b.set_ylabel(f"test {res['metric']} (mean ± std over seeds)")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(f"SWAA adaptation of a full-attention model ({res['full']['updates']} updates), "
                 f"{res['corpus']['source']}", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


# --- main ------------------------------------------------------------------------------------

def _int_list(text: str) -> List[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, such "
                                         f"as 250,1000; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="full-attention transformer_xl_mswa checkpoint (default: train one on "
                         "the Shakespeare corpus)")
    ap.add_argument("--data", type=Path, default=None,
                    help="its data-bin (required with --checkpoint; without one, the full model "
                         "is trained on this data-bin instead of the Shakespeare corpus)")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data-bin",
                    help="where the Shakespeare corpus is prepared on first use (default "
                         "data-bin)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, a few updates (CI)")
    ap.add_argument("--train-updates", type=int, default=None,
                    help="updates of the full model trained here (default 4000)")
    ap.add_argument("--finetune-updates", type=_int_list, default=None,
                    help="fine-tuning lengths, comma-separated (default 250,1000)")
    ap.add_argument("--seeds", type=_int_list, default=None,
                    help="fine-tuning seeds of SWA and MSWA (default 1,2,3)")
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
                    help="MSWA base window (default: cost-matched to SWA within 3%%)")
    ap.add_argument("--sinks", type=int, default=None, help="sink tokens (default 4)")
    ap.add_argument("--prompt-tokens", type=int, default=None,
                    help="decode-time evaluation: prompt tokens (default 256)")
    ap.add_argument("--continuation-tokens", type=int, default=None,
                    help="decode-time evaluation: scored continuation tokens (default 128)")
    ap.add_argument("--decode-pairs", type=int, default=None,
                    help="decode-time evaluation: (prompt, continuation) pairs (default 128)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="cap on the full model's training time (default 15)")
    ap.add_argument("--work", type=Path, default=None,
                    help="checkpoints and logs (default runs/adaptation, smoke: "
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
    for key in ("train_updates", "finetune_updates", "seeds", "finetune_lr", "segment", "batch",
                "window", "sinks", "minutes", "prompt_tokens", "continuation_tokens",
                "decode_pairs"):
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
        bar = Steps(0, work / "logs", args.verbose, roots)  # its total is set once planned
        try:
            res = run(args, cfg, work, bar)
        finally:
            bar.close()
    except (ReproError, CommandError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prov["machine"]["load_average_at_end"] = load_average()
    res.update({
        "smoke": bool(args.smoke),
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
    print(f"\nTotal {res['total_wall_s']:.0f} s. Wrote {out / 'adaptation.json'}, .md, .png; "
          f"logs in {work / 'logs'}")
    return 0


def _fresh(path: Path) -> Path:
    if path.exists():
        import shutil
        shutil.rmtree(path)
    return path


def run(args, cfg: Dict, work: Path, steps: Steps) -> Dict:
    """The study once its options are checked: the full model (trained here or ``--checkpoint``),
    the targets and their cost, every evaluation and fine-tuning run, the decode-time rows.
    Returns the result without its provenance (``main`` adds it); ``cfg`` gains the fine-tuning
    learning rate when it had none."""
    if args.checkpoint is None:
        data, source = training_corpus(args, cfg, work, steps)
        ckpt, full_info = train_full_model(cfg, data, work, steps)
        ck = check_checkpoint(ckpt, data)
        if cfg["finetune_lr"] is None:
            cfg["finetune_lr"] = continued_lr(cfg, full_info["updates"])
    else:
        ckpt, data = args.checkpoint.resolve(), args.data.resolve()
        ck = check_checkpoint(ckpt, data)
        source = str(data)
        full_info = {"updates": None, "checkpoint": portable_path(str(ckpt), steps.roots)}
    split = test_split_stats(data)  # {} for a data-bin not made by data_prep: perplexity
    layers, heads = ck["layers"], ck["heads"]
    matched = mswa_match(args.mswa_base, cfg["window"], layers, heads)
    targets = plan_targets(cfg, matched, layers, heads)
    full_cost, swa_cost = costed_targets(targets, cfg, layers, heads)
    decoded = [t for t in targets if t["decode"]]
    steps.total += (1 + (len(targets) - 1) + 2 * sum(len(t["lengths"]) * len(t["seeds"])
                                                     for t in targets) + 1 + 4 * len(decoded))
    full_score, command = evaluate_before(cfg, data, ckpt, targets, split, steps)
    full_info.update(value=full_score["value"], eval_tokens_per_s=full_score["eval_tokens_per_s"],
                     eval_symbols=full_score["eval_symbols"], relative_cost_vs_swa=full_cost /
                     swa_cost, command=command)
    for t in targets:
        finetune_target(t, ck, cfg, data, ckpt, split, work, steps)
    dec_rows = decode_rows(decoded, cfg, data, ckpt, steps)
    return adaptation_record(cfg, matched, full_score["metric"], source, data, split, ck,
                             full_info, targets, dec_rows, steps)


def training_corpus(args, cfg: Dict, work: Path, steps: Steps) -> Tuple[Path, str]:
    """(data-bin, how the result names its source) of the full model trained here: ``--data``,
    the pydoc character corpus (``--smoke``) or the Shakespeare corpus, prepared on first use."""
    if args.data is not None:
        data = args.data.resolve()
        return data, str(data)
    if args.smoke:
        from data_prep.pydoc_corpus import prepare_pydoc_chars

        steps.note("building the character corpus from pydoc_data.topics "
                   "(data_prep/pydoc_corpus.py)")
        info = prepare_pydoc_chars(work / "data-bin", max_bytes=cfg["max_bytes"], workers=1,
                                   name=f"pydoc-chars-{cfg['max_bytes']}",
                                   log=lambda m: None)
        data = (work / "data-bin" / info["dataset"]).resolve()
        return data, info["source"] + f", first {cfg['max_bytes']:,} bytes"
    from data_prep.shakespeare import prepare_shakespeare

    data = (args.data_dir / "shakespeare-chars").resolve()
    if not (data / "prepared.json").is_file():
        steps.note(f"preparing the Shakespeare corpus in {args.data_dir} "
                   "(data_prep/shakespeare.py)")
        prepare_shakespeare(args.data_dir)
    return data, "the Shakespeare byte corpus (data_prep/shakespeare.py)"


def train_full_model(cfg: Dict, data: Path, work: Path, steps: Steps) -> Tuple[Path, Dict]:
    """Train the full-attention model with the demo's command (studies/demo.py) plus dropout,
    the first step of the run. Returns (its last checkpoint, what the result says of it:
    updates, wall time, train loss and tokens/s); a note when the time cap stopped it early."""
    from studies import demo

    full_dir = _fresh(work / "checkpoints" / "full")
    tcfg = dict(cfg, updates=cfg["train_updates"], base_window=cfg["window"])
    cmd = demo.train_command(tcfg, data, "full", full_dir, work / "tb" / "full",
                             stop_minutes=cfg["minutes"])
    cmd += ["--dropout", str(cfg["dropout"])]  # the demo's preset has none (short runs)
    t0 = time.time()
    steps.total = 1
    text = steps.run("train_full", cmd, f"training the full model ({cfg['train_updates']} "
                                        "updates)", total_updates=cfg["train_updates"])
    trained = parse_train_summary(text)
    full_info = {"updates": trained.get("updates"), "train_wall_s": round(time.time() - t0, 1),
                 "train_loss_base2": trained.get("train_loss_base2"),
                 "train_tokens_per_s": trained.get("train_tokens_per_s")}
    if full_info["updates"] != cfg["train_updates"]:
        steps.note(f"note: the full model stopped after {full_info['updates']} of "
                   f"{cfg['train_updates']} updates (the {cfg['minutes']:g}-minute cap)")
    return full_dir / "checkpoint_last.pt", full_info


def continued_lr(cfg: Dict, updates: Optional[int]) -> float:
    """The learning rate the full model ended with (inverse_sqrt, demo.train_command, at its
    last update, ``cfg['train_updates']`` when not logged), to 3 significant digits: where
    fine-tuning continues its schedule."""
    last = max(1, updates or cfg["train_updates"])
    return float(f"{cfg['lr'] * min(1.0, (cfg['warmup'] / last) ** 0.5):.3g}")


def mswa_match(base: Optional[int], window: int, layers: int, heads: int) -> Dict:
    """The MSWA target's {overrides, base, how, relative_cost}: the paper's schedule at
    ``--mswa-base`` when given, else :func:`cost_matched_mswa` to SWA with ``window``."""
    if base is None:
        return cost_matched_mswa(window, layers, heads)
    ov = target_overrides("mswa", base)
    cost = schedule_of(ov, layers, heads).cost() / schedule_of(
        target_overrides("swa", window), layers, heads).cost()
    return {"overrides": ov, "base": base, "relative_cost": cost,
            "how": f"the paper's schedule at base {base} (--mswa-base)"}


def costed_targets(targets: List[Dict], cfg: Dict, layers: int, heads: int) -> Tuple[int, int]:
    """Add to every target its windows (as the table shows them), schedule, cost at n =
    ``cfg['segment']`` and cost relative to full attention and to SWA. Returns (full
    attention's cost, SWA's cost)."""
    from fairseq_mswa.schedule import build_schedule

    n = cfg["segment"]
    full_cost = build_schedule(layers, heads, pattern="full").cost(n)
    swa_cost = schedule_of(target_overrides("swa", cfg["window"]), layers, heads).cost(n)
    for t in targets:
        s = schedule_of(t["overrides"], layers, heads)
        lo, hi = s.window_range()
        t["windows"] = ("full" if lo is None else f"{lo}" if lo == hi and hi is not None
                        else f"{lo}..{hi if hi is not None else 'full'}")
        if s.sink_tokens:
            t["windows"] += f" + {s.sink_tokens} sinks"
        if t["overrides"].get("learned_sinks"):
            t["windows"] += " + learned sinks"
        t["schedule"] = [list(layer) for layer in s.windows]
        t["cost"] = s.cost(n)
        t["relative_cost_vs_full"] = t["cost"] / full_cost
        t["relative_cost_vs_swa"] = t["cost"] / swa_cost
    return full_cost, swa_cost


def evaluate_before(cfg: Dict, data: Path, ckpt: Path, targets: List[Dict], split: Dict,
                    steps: Steps) -> Tuple[Dict, str]:
    """The full model as it is, then every target with no training (``--model-overrides``; the
    full control is the full model itself), into each target's ``before``. Returns (the full
    model's score, its command)."""
    text = steps.run("eval_full", eval_command(cfg, data, ckpt, None), "evaluating full")
    full_score = score(text, split)
    command = steps.last_command
    for t in targets:
        if t["overrides"]["attn_pattern"] == "full":
            t["before"] = dict(full_score)
            continue
        text = steps.run(f"eval_{t['slug']}_before",
                         eval_command(cfg, data, ckpt, t["overrides"]),
                         f"evaluating {t['name']} (no training)")
        t["before"] = score(text, split) | {"command": steps.last_command}
    return full_score, command


def finetune_target(t: Dict, ck: Dict, cfg: Dict, data: Path, ckpt: Path, split: Dict,
                    work: Path, steps: Steps) -> None:
    """Fine-tune ``t`` from the full checkpoint at each of its lengths and seeds, evaluating
    each run: ``t['runs']`` (one record a run) and ``t['after']`` (mean and spread over seeds
    per length)."""
    t["runs"] = []
    for updates in t["lengths"]:
        for seed in t["seeds"]:
            t["runs"].append(finetune_run(t, updates, seed, ck, cfg, data, ckpt, split, work,
                                          steps))
    t["after"] = {str(u): mean_std([r["after"]["value"] for r in t["runs"]
                                    if r["updates"] == u]) for u in t["lengths"]}


def finetune_run(t: Dict, updates: int, seed: int, ck: Dict, cfg: Dict, data: Path, ckpt: Path,
                 split: Dict, work: Path, steps: Steps) -> Dict:
    """One fine-tuning run of ``t`` (``updates`` updates, ``seed``) and its evaluation:
    {updates, seed, finetune (its training), checkpoint, after (its score and command)}."""
    tag = f"{t['slug']}_ft{updates}_seed{seed}"
    save = _fresh(work / "checkpoints" / tag)
    cmd = finetune_command(ck, cfg, data, ckpt, t["overrides"], save, work / "tb" / tag,
                           updates, seed)
    t0 = time.time()
    text = steps.run(f"finetune_{tag}", cmd, f"fine-tuning {t['name']} ({updates} "
                                             f"updates, seed {seed})",
                     total_updates=updates)
    tr = parse_train_summary(text)
    ft = {"updates": tr.get("updates"), "wall_s": round(time.time() - t0, 1),
          "train_loss_base2": tr.get("train_loss_base2"),
          "train_tokens_per_s": tr.get("train_tokens_per_s"),
          "command": steps.last_command}
    text = steps.run(f"eval_{tag}",
                     eval_command(cfg, data, save / "checkpoint_last.pt", None),
                     f"evaluating {t['name']} ({updates} FT updates, seed {seed})")
    return {"updates": updates, "seed": seed, "finetune": ft,
            "checkpoint": save / "checkpoint_last.pt",
            "after": score(text, split) | {"command": steps.last_command}}


def decode_one(steps: Steps, cfg: Dict, data: Path, name: str, tag: str, ckpt_path: Path,
               ov: Dict) -> Dict:
    """One decode-time evaluation (:func:`decode_eval_command` under the overrides ``ov``):
    {bits_per_token, tokens, command}."""
    text = steps.run(f"decode_{tag}", decode_eval_command(cfg, data, ckpt_path, ov),
                     f"decode-time evaluation: {name}")
    return parse_decode_eval(text) | {"command": steps.last_command}


def decode_rows(decoded: List[Dict], cfg: Dict, data: Path, ckpt: Path,
                steps: Steps) -> List[Dict]:
    """The decode-time table: the full model, then each target of ``decoded`` with no training
    and after its first fine-tuning run, as trained and with full-attention decode."""
    rows = [{"target": "full (no adaptation)", "checkpoint": "pretrained",
             "as_trained": decode_one(steps, cfg, data, "full", "full", ckpt, {}),
             "full_decode": None}]
    for t in decoded:
        first = t["runs"][0]
        for label, path, ov, tag in (
                ("no training", ckpt, t["overrides"], t["slug"]),
                (f"{first['updates']} FT updates, seed {first['seed']}", first["checkpoint"], {},
                 f"{t['slug']}_ft{first['updates']}_seed{first['seed']}")):
            rows.append({
                "target": t["name"], "checkpoint": label,
                "as_trained": decode_one(steps, cfg, data, f"{t['name']}, {label}", tag, path, ov),
                "full_decode": decode_one(steps, cfg, data,
                                          f"{t['name']}, {label}, full-attention decode",
                                          f"{tag}_full_decode", path,
                                          dict(ov, decode_full_attention=True))})
    return rows


def adaptation_record(cfg: Dict, matched: Dict, metric: str, source: str, data: Path,
                      split: Dict, ck: Dict, full_info: Dict, targets: List[Dict],
                      dec_rows: List[Dict], steps: Steps) -> Dict:
    """The result of :func:`run` from its stages (checkpoint paths made portable)."""
    for t in targets:
        for r in t["runs"]:
            r["checkpoint"] = portable_path(str(r["checkpoint"]), steps.roots)
    rows = [{k: t[k] for k in ("name", "overrides", "windows", "schedule", "cost",
                               "relative_cost_vs_full", "relative_cost_vs_swa", "before", "runs",
                               "after")} for t in targets]
    n = cfg["segment"]
    return {
        "metric": metric,
        "config": cfg,
        "mswa_match": {k: matched[k] for k in ("base", "how", "relative_cost")},
        "corpus": {"source": portable_path(source, steps.roots),
                   "data": portable_path(str(data), steps.roots), "test_split": split},
        "model": {"arch": ck["arch"], "layers": ck["layers"], "heads": ck["heads"],
                  "embed_dim": int(ck["model"].decoder_embed_dim), "vocab": ck["vocab"]},
        "full": full_info,
        "rows": rows,
        "paired": paired_swa_mswa(rows),
        "decode": {"prompt_tokens": cfg["prompt_tokens"],
                   "continuation_tokens": cfg["continuation_tokens"],
                   "pairs": cfg["decode_pairs"], "rows": dec_rows},
        "cost_note": f"WindowSchedule.cost at n = {n} (tokens per sample); full heads count n, "
                     "windowed heads their window plus the sinks; learned sinks add no keys. "
                     f"With XL memory a full head actually sees {n}..{2 * n - 1} keys: the cost "
                     "of full attention is understated, the windowed targets' ratios vs full are "
                     "conservative",
        "commands": steps.commands,
    }


if __name__ == "__main__":
    sys.exit(main())
