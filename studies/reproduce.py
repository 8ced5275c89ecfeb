"""Train and evaluate the rows of the MSWA paper's Tables 2, 3, 5 and 6 (driver of tableN.sh).

    python scripts/reproduce.py --table 2 [--rows swa,mswa] [--datasets enwik8] [--gpus 8]
                                [--max-update N] [--data-dir data-bin] [--smoke] [--dry-run]
    python scripts/reproduce.py --table 2 --scale cpu [--seed 2 --rows a,b] [--verbose]

For every (dataset, row): fairseq-train with the paper's setup (configs/tables/setup.yaml) and the
row's flags (configs/tables/table<N>.yaml), then fairseq-eval-lm of the best validation checkpoint
(``checkpoint_best.pt``) on the test split, then one JSON under
``<results-dir>/table<N>/<dataset>/<row id>.json``. Each run shows a progress bar (updates, loss,
ETA); fairseq's full output goes to ``<runs-dir>/table<N>/<dataset>/<row id>/{train,eval}.log``
(``--verbose`` streams it to the terminal too); TensorBoard logs to ``.../tb``; checkpoints to
``<save-root>/table<N>/<dataset>/<row id>``.

Knobs: ``--gpus N`` (fairseq's distributed world size; ``--update-freq`` is derived so that every
update still has the paper's tokens), ``--batch-per-gpu`` (sequences per GPU per step),
``--max-update``, ``--seed``, ``--data-dir``, ``--rows``, ``--datasets``,
``--train-args``/``--eval-args`` (extra fairseq flags), ``--force`` (re-run rows that have a result).

``--scale cpu``: every row of the table shrunk by one factor (segment, windows, full-attention
lengths; ``scales.cpu`` in setup.yaml), same data / shape / seed / updates for every row, on the
byte-level corpus of CPython's documentation topics (no download; bpc). Writes
``results/cpu/table<N>.{json,md,png}`` (scripts/make_tables.py) beside the paper's column.
A ``--seed`` other than the configured one writes ``<row id>-seed<N>.json`` (run-to-run noise).

``--smoke``: every row end to end on CPU for a couple of updates with the tiny preset, on tiny
corpora built from CPython's documentation topics (no download); results under runs/smoke/ so
they never mix with real ones.

Metrics: Wikitext-103 perplexity is fairseq-eval-lm's ``Perplexity`` (2^loss over every scored
token, ``</s>`` included, as is standard). enwik8 bits per character is total bits / test bytes:
fairseq-eval-lm's ``Loss (base 2)`` x scored symbols / bytes; the script checks that every symbol
of the test split was scored (one symbol per byte; data_prep/prepare.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import yaml

from studies.arch import ArchError, resolve_arch_config
from studies.run_utils import (
    USER_DIR,
    REPO_ROOT as REPO,
    CommandError,
    git_commit,
    git_dirty,
    machine_info,
    parse_eval_lm,
    parse_train_summary,
    parse_valid,
    portable_command,
    portable_path,
    run_fairseq,
    script_command,
    utc_now,
    write_json_atomic,
)

CONFIGS = REPO / "configs" / "tables"
TABLES = (2, 3, 5, 6)
# evaluated checkpoint: the best validation loss (fairseq keeps it as checkpoint_best.pt)
CHECKPOINT = "checkpoint_best.pt"


class ReproError(RuntimeError):
    """A row cannot be run; the message names the fix."""


# --- configuration ----------------------------------------------------------------------------

def load_yaml(path: Path) -> Dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_setup() -> Dict:
    return load_yaml(CONFIGS / "setup.yaml")


def load_table(table: int) -> Dict:
    cfg = load_yaml(CONFIGS / f"table{table}.yaml")
    if cfg.get("table") != table:
        raise ReproError(f"configs/tables/table{table}.yaml declares table {cfg.get('table')}")
    return cfg


def select(items: List[Dict], wanted: Optional[str], key_names=("id", "row")) -> List[Dict]:
    """Rows whose id or name is in the comma-separated ``wanted`` (all if None)."""
    if not wanted:
        return items
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    known = {str(it[k]): it for it in items for k in key_names if k in it}
    unknown = [n for n in names if n not in known]
    if unknown:
        ids = ", ".join(str(it["id"]) for it in items)
        raise ReproError(f"unknown row(s) {', '.join(unknown)}: this table has {ids}")
    return [known[n] for n in names]


def resolve_model(arch: str, flag_values: Dict):
    """The model configuration fairseq-train will build (experiments.arch.resolve_arch_config:
    ``flag_values``, then the ``arch`` preset, then the model dataclass's defaults)."""
    try:
        return resolve_arch_config(arch, flag_values)
    except ArchError as e:
        raise ReproError(str(e)) from None


def model_schedule(ns):
    """(layer pattern or None, window schedule or None) of a resolved model configuration: the
    models' own code (fairseq_mswa.models) builds both, so the plan sees what training sees."""
    from fairseq_mswa.models.window_config import schedule_from_config

    heads = ns.decoder_attention_heads
    if getattr(ns, "layer_pattern", None) is not None:  # linear_mswa hybrid
        from fairseq_mswa.models.linear_mswa import expand_layer_pattern, hybrid_schedule

        pattern = expand_layer_pattern(ns.layer_pattern, ns.decoder_layers)
        return pattern, hybrid_schedule(ns, pattern, heads)
    return None, schedule_from_config(ns, ns.decoder_layers, heads)


def model_cost(ns, segment: int, reference_base: int) -> Dict:
    """Cost (fairseq_mswa.cost's model: sum of windows of all heads of all layers, plus the linear
    layers' state) of the resolved model, relative to MSWA with base window ``reference_base`` at
    the same shape (the paper's 1.00 row)."""
    from fairseq_mswa.cost import REFERENCE, hybrid_cost
    from fairseq_mswa.schedule import build_schedule

    layer_pattern, sched = model_schedule(ns)
    heads = ns.decoder_attention_heads
    if layer_pattern is None:
        cost = sched.cost(seq_len=segment)
    else:
        cost = hybrid_cost(layer_pattern, sched, seq_len=segment, num_heads=heads,
                           head_dim=ns.decoder_embed_dim // heads, feature_dim=ns.feature_dim)
    ref = build_schedule(ns.decoder_layers, heads, reference_base, REFERENCE["pattern"]).cost()
    return {"cost": cost, "reference_cost": ref, "relative_cost": cost / ref,
            "layer_pattern": layer_pattern,
            "windows": list(sched.window_range()) if sched is not None else None,
            "max_window": sched.window_range()[1] if sched is not None else None}


def scale_args(args: Dict, factor: int, what: str) -> Dict:
    """Row flags with every window length divided by ``factor`` (exactly)."""
    def div(v, name):
        v = int(v)
        if v % factor:
            raise ReproError(f"{what}: {name} {v} is not divisible by the scale factor {factor}")
        return v // factor

    out = dict(args)
    for key in ("base-window", "mem-len"):
        if out.get(key) is not None and not (key == "mem-len" and int(out[key]) < 0):
            out[key] = div(out[key], key)
    if out.get("attn-windows"):
        spec = out["attn-windows"]
        spec = json.loads(spec) if isinstance(spec, str) else spec
        out["attn-windows"] = json.dumps(
            [[None if w is None else div(w, "window") for w in (e if isinstance(e, list) else [e])]
             if isinstance(e, list) else (None if e is None else div(e, "window"))
             for e in spec])
    return out


def flags(d: Dict) -> List[str]:
    """{"lr": 2e-4, "cpu": True, "no-x": False} -> ["--lr", "0.0002", "--cpu"]."""
    out = []
    for k, v in d.items():
        if v is None or v is False:
            continue
        if v is True:
            out.append(f"--{k}")
        else:
            out += [f"--{k}", str(v)]
    return out


# --- plan -------------------------------------------------------------------------------------

class Run:
    """One (table, dataset, row): its commands and where its outputs go."""

    def __init__(self, table: int, dataset: str, row: Dict, train_cmd: List[str],
                 eval_cmd: List[str], result: Path, run_dir: Path, save_dir: Path, data: Path,
                 meta: Dict):
        self.table, self.dataset, self.row = table, dataset, row
        self.train_cmd, self.eval_cmd = train_cmd, eval_cmd
        self.result, self.run_dir, self.save_dir, self.data = result, run_dir, save_dir, data
        self.meta = meta


def load_scale(setup: Dict, name: Optional[str]) -> Optional[Dict]:
    if name is None or name == "paper":
        return None
    scales = setup.get("scales") or {}
    if name not in scales:
        raise ReproError(f"unknown --scale {name!r}: configs/tables/setup.yaml has "
                         + ", ".join(["paper"] + sorted(scales)))
    return scales[name]


class _Plan(NamedTuple):
    """What every run of one :func:`plan_runs` call shares."""
    table: int
    opts: object
    setup: Dict
    family_name: str
    family: Dict
    scale: Optional[Dict]  # setup.yaml's scales.<name>; None at paper scale
    smoke: Optional[Dict]  # setup.yaml's smoke; None unless --smoke
    factor: int  # the scale's shrink factor (1 at paper scale)


class _Batch(NamedTuple):
    """One dataset's data-bin, segment and batch split (shared by every row of the table)."""
    dataset: str
    ds: Dict  # the family's settings of the dataset (the one the scale's rows stand for)
    data: Path
    segment: int
    sequences: int  # sequences per update
    eval_bs: int
    gpus: int
    per_gpu: int
    update_freq: int


def plan_runs(table: int, opts, setup: Dict) -> List[Run]:
    """Every (dataset, row) run of Table ``table`` as ``opts`` (reproduce's options: rows,
    datasets, smoke / scale, seed, GPUs, paths) selects it under ``setup`` (setup.yaml), dataset
    by dataset in row order; ReproError names a bad option."""
    cfg = load_table(table)
    family_name = cfg["family"]
    family = setup["families"][family_name]
    scale = load_scale(setup, getattr(opts, "scale", None))
    datasets = plan_datasets(cfg, family, scale, opts)
    rows = select(cfg["rows"], opts.rows)
    plan = _Plan(table, opts, setup, family_name, family, scale,
                 setup["smoke"] if opts.smoke else None, int(scale["factor"]) if scale else 1)
    runs = []
    for dataset in datasets:
        batch = dataset_batch(plan, dataset)
        runs += [plan_row(plan, batch, row) for row in rows]
    return runs


def plan_datasets(cfg: Dict, family: Dict, scale: Optional[Dict], opts) -> List[str]:
    """The datasets a table runs on: the scale's one, else ``--datasets`` or the table's own
    (each known to the family); --smoke with --scale is refused."""
    if opts.smoke and scale:
        raise ReproError("--smoke and --scale exclude each other: pick one")
    if scale:
        only = scale["dataset"]
        if opts.datasets and opts.datasets != only:
            raise ReproError(f"--scale {opts.scale} runs every row on {only}: drop --datasets")
        return [only]
    datasets = opts.datasets.split(",") if opts.datasets else cfg["datasets"]
    for d in datasets:
        if d not in family["datasets"]:
            raise ReproError(f"unknown dataset {d!r}: use {', '.join(family['datasets'])}")
    return datasets


def dataset_batch(plan: _Plan, dataset: str) -> _Batch:
    """Data-bin, segment, sequences per update and evaluation batch of ``dataset`` (smoke,
    scale or the paper's setup), and those sequences split over ``--gpus`` x
    ``--batch-per-gpu`` with the update frequency that keeps the tokens per update."""
    opts, setup, family, scale, smoke = plan.opts, plan.setup, plan.family, plan.scale, plan.smoke
    ds = family["datasets"][scale["rows_as"] if scale else dataset]
    if smoke:
        data = Path(opts.data_dir) / smoke["datasets"][dataset]["corpus"]
        segment = int(smoke["segment"])
        sequences = int(smoke["sequences_per_update"])
        eval_bs = int(smoke["eval_batch_size"])
    elif scale:
        data = Path(opts.data_dir) / setup["datasets"][dataset]["data"]
        if int(family["segment"]) % plan.factor:
            raise ReproError(f"segment {family['segment']} is not divisible by {plan.factor}")
        segment = int(family["segment"]) // plan.factor
        sequences = int(scale["sequences_per_update"][plan.family_name])
        eval_bs = int(scale["eval_batch_size"][plan.family_name])
    else:
        data = Path(opts.data_dir) / setup["datasets"][dataset]["data"]
        segment = int(family["segment"])
        if ds["tokens_per_update"] % segment:
            raise ReproError(f"tokens_per_update {ds['tokens_per_update']} is not a multiple "
                             f"of the segment {segment}")
        sequences = ds["tokens_per_update"] // segment
        eval_bs = int(family["eval_batch_size"])
    gpus = max(1, opts.gpus)
    per_gpu = opts.batch_per_gpu or max(1, sequences // gpus)
    if sequences % (gpus * per_gpu):
        raise ReproError(
            f"{sequences} sequences per update cannot be split over {gpus} GPU(s) x "
            f"{per_gpu} per GPU: choose --batch-per-gpu dividing {sequences // gpus or 1}"
        )
    return _Batch(dataset, ds, data, segment, sequences, eval_bs, gpus, per_gpu,
                  sequences // (gpus * per_gpu))


def train_settings(plan: _Plan, batch: _Batch) -> Dict:
    """fairseq-train's settings of a run ({flag: value}), later ones winning: the paper's setup <
    family < dataset < smoke / scale < model dims < ``--max-update`` / ``--seed``; a warm-up
    not shorter than the run becomes a tenth of it."""
    setup, family, scale, smoke, opts = plan.setup, plan.family, plan.scale, plan.smoke, plan.opts
    train = dict(setup["train"])
    train.update(family.get("train") or {})
    train.update(batch.ds.get("train") or {})
    if smoke:
        sds = smoke["datasets"][batch.dataset]
        train.update(smoke["train"])
        train.update(sds.get("train") or {})
        train.update((smoke.get("model") or {}).get(plan.family_name) or {})
    if scale:
        train.update(scale.get("train") or {})
        train.update((scale.get("tables") or {}).get(plan.table) or {})
        train.update((scale.get("model") or {}).get(plan.family_name) or {})
    if opts.max_update is not None:
        train["max-update"] = opts.max_update
    seed = getattr(opts, "seed", None)
    if seed is not None:
        train["seed"] = seed
    if int(train["max-update"]) <= int(train.get("warmup-updates", 0)):
        # fairseq's cosine period is max-update - warm-up: it must stay positive
        train["warmup-updates"] = int(train["max-update"]) // 10
    return train


def max_memory(family: Dict, model, segment: int) -> Optional[int]:
    """The largest memory of any layer by the model's own rule (``memory_lengths``) for a family
    with per-layer memory; None otherwise."""
    if family.get("memory") != "per_layer":
        return None
    from fairseq_mswa.models.transformer_xl_mswa import memory_lengths

    return max(memory_lengths(model_schedule(model)[1], int(model.mem_len), segment))


def row_commands(plan: _Plan, batch: _Batch, arch: str, criterion: str, train: Dict, args: Dict,
                 save_dir: Path, run_dir: Path) -> Tuple[List[str], List[str]]:
    """(fairseq-train, fairseq-eval-lm of the best checkpoint on the test split) of one run."""
    opts = plan.opts
    common = [str(batch.data), "--user-dir", str(USER_DIR), "--task", plan.family["task"],
              "--tokens-per-sample", str(batch.segment)]
    train_cmd = (
        [sys.executable, "-m", "fairseq_cli.train"] + common
        + ["--arch", arch, "--criterion", criterion,
           "--batch-size", str(batch.per_gpu), "--update-freq", str(batch.update_freq),
           "--save-dir", str(save_dir), "--tensorboard-logdir", str(run_dir / "tb")]
        + flags(train) + flags(args)
        + (["--distributed-world-size", str(batch.gpus)] if batch.gpus > 1 else [])
        + shlex.split(opts.train_args or "")
    )
    eval_cmd = (
        [sys.executable, "-m", "fairseq_cli.eval_lm"] + common
        + ["--path", str(save_dir / CHECKPOINT), "--gen-subset", "test",
           "--batch-size", str(batch.eval_bs), "--log-format", "simple"]
        + (["--cpu"] if (plan.smoke or plan.scale) else [])
        + shlex.split(opts.eval_args or "")
    )
    return train_cmd, eval_cmd


def plan_row(plan: _Plan, batch: _Batch, row: Dict) -> Run:
    """One row on one dataset: its flags (shrunk by the scale), the resolved model, its cost and
    memory, where its outputs go (``<row id>[-seed<N>]``) and its two commands."""
    table, opts, factor = plan.table, plan.opts, plan.factor
    args = dict(row.get("args", {}))
    if plan.scale:
        args = scale_args(args, factor, f"table {table} row {row['id']}")
    arch = row.get("arch") or batch.ds.get("arch")
    criterion = batch.ds["criterion"]
    train = train_settings(plan, batch)
    seed = int(train["seed"])
    model = resolve_model(arch, {**train, **args})
    cost = model_cost(model, batch.segment, 128 // factor)
    mem = max_memory(plan.family, model, batch.segment)
    rid = row["id"] + (f"-seed{seed}" if seed != int(plan.setup["train"]["seed"]) else "")
    run_dir = Path(opts.runs_dir) / f"table{table}" / batch.dataset / rid
    save_dir = Path(opts.save_root) / f"table{table}" / batch.dataset / rid
    result = Path(opts.results_dir) / f"table{table}" / batch.dataset / f"{rid}.json"
    train_cmd, eval_cmd = row_commands(plan, batch, arch, criterion, train, args, save_dir,
                                       run_dir)
    meta = {
        "arch": arch, "criterion": criterion, "segment": batch.segment, "max_memory": mem,
        "args": args, "gpus": batch.gpus, "batch_per_gpu": batch.per_gpu,
        "update_freq": batch.update_freq, "tokens_per_update": batch.sequences * batch.segment,
        "max_update": int(train["max-update"]), "seed": seed,
        "scale": getattr(opts, "scale", None) or "paper", "factor": factor,
        "layers": model.decoder_layers, "heads": model.decoder_attention_heads,
        "embed_dim": model.decoder_embed_dim,
        "cost": {k: v for k, v in cost.items()},
    }
    return Run(table, batch.dataset, row, train_cmd, eval_cmd, result, run_dir, save_dir,
               batch.data, meta)


# --- running ----------------------------------------------------------------------------------

def run_command(cmd: List[str], log_path: Path, tag: str, desc: str, total: Optional[int],
                verbose: bool) -> str:
    """A fairseq CLI with its log in ``log_path`` (run_utils.run_fairseq: one progress bar for
    training, ``--verbose`` streams the log with ``tag``); ReproError naming the log on failure."""
    if verbose:
        print(f"{tag} $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    try:
        return run_fairseq(cmd, log_path, tag if verbose else desc, verbose=verbose,
                           total_updates=total, cwd=REPO)
    except CommandError as e:
        raise ReproError(str(e)) from None


def test_split_stats(data: Path) -> Dict:
    marker = data / "prepared.json"
    if not marker.is_file():
        return {}
    info = json.loads(marker.read_text(encoding="utf-8"))
    return {"unit": info.get("unit"), **info.get("splits", {}).get("test", {})}


def metric_value(dataset: str, metric: str, ev: Dict, split: Dict) -> Dict:
    if metric == "ppl":
        return {"metric": "ppl", "value": ev["perplexity"]}
    if metric == "bpc":
        if split.get("unit") != "byte":
            raise ReproError("bpc needs a byte-level corpus made by data_prep (prepared.json)")
        if ev["eval_symbols"] != split["symbols"]:
            raise ReproError(
                f"fairseq-eval-lm scored {ev['eval_symbols']:,} symbols but the test split has "
                f"{split['symbols']:,}: bits per byte would be wrong (check the task's eval)"
            )
        bits = ev["loss_base2"] * ev["eval_symbols"]
        return {"metric": "bpc", "value": bits / split["bytes"], "test_bytes": split["bytes"],
                "total_bits": bits}
    raise ReproError(f"unknown metric {metric!r}")


def execute(run: Run, setup: Dict, opts) -> Dict:
    from fairseq_mswa.cost import as_dicts, table_rows

    tag = f"[table{run.table} {run.dataset} {run.row['id']}]"
    verbose = bool(getattr(opts, "verbose", False))
    load0 = os.getloadavg()
    t0 = time.time()
    out = run_command(run.train_cmd, run.run_dir / "train.log", tag,
                      f"{run.row['id']} train", int(run.meta["max_update"]), verbose)
    train_s = time.time() - t0
    ckpt = run.save_dir / CHECKPOINT
    if not ckpt.is_file():
        raise ReproError(f"{tag} no {ckpt} after training (validation must stay on: it picks "
                         f"the best checkpoint); see {run.run_dir/'train.log'}")
    t1 = time.time()
    eval_out = run_command(run.eval_cmd, run.run_dir / "eval.log", tag,
                           f"{run.row['id']} eval", None, verbose)
    eval_wall = time.time() - t1
    try:
        ev = parse_eval_lm(eval_out)
    except CommandError as e:
        raise ReproError(f"{tag} {e}; see {run.run_dir / 'eval.log'}") from None
    split = test_split_stats(run.data)
    metric = setup["datasets"][run.dataset]["metric"]
    value = metric_value(run.dataset, metric, ev, split)
    cost = {r["row"]: r for r in as_dicts(table_rows(run.table))}.get(run.row["row"])
    if cost is None:
        raise ReproError(f"row {run.row['row']!r} is not in fairseq_mswa.cost's Table {run.table}")
    tr = parse_train_summary(out)
    valid = [(v["update"], v["loss"]) for v in parse_valid(out)]
    roots = path_roots(opts)
    res = {
        "table": run.table, "row": run.row["row"], "row_id": run.row["id"],
        "dataset": run.dataset, "smoke": bool(opts.smoke),
        "data": portable_path(str(run.data), roots),
        "scale": run.meta["scale"], "seed": run.meta["seed"],
        **value, **ev,
        "test_split": split,
        "relative_cost": cost["relative_cost"], "relative_cost_display":
            cost["relative_cost_display"],
        "run_relative_cost": run.meta["cost"]["relative_cost"],
        "train": {**run.meta, **tr, "wall_s": round(train_s, 1)},
        "train_tokens_per_s": tr.get("train_tokens_per_s"),
        "valid_curve": [{"updates": n, "loss_base2": l} for n, l in valid],
        "checkpoint": portable_path(str(ckpt), roots),
        "eval_wall_s": round(eval_wall, 1),
        "loadavg_1min": {"start": round(load0[0], 2), "end": round(os.getloadavg()[0], 2)},
        "machine": machine_info(),
        "git_commit": git_commit(), "git_dirty": git_dirty(),
        "commands": {"train": portable_command(run.train_cmd, roots),
                     "eval": portable_command(run.eval_cmd, roots)},
        "finished": utc_now(),
    }
    if not math.isfinite(res["value"]):
        raise ReproError(f"{tag} non-finite {metric}: {res['value']}")
    write_json_atomic(run.result, res)
    print(f"{tag} {metric} = {res['value']:.4f} after {tr.get('updates', '?')} updates "
          f"(train {train_s:.0f} s, eval {eval_wall:.0f} s; logs {run.run_dir}) -> {run.result}",
          flush=True)
    return res


def path_roots(opts) -> Dict[str, str]:
    """The folders a recorded command names relative to when they are outside the repository."""
    return {"data-dir": opts.data_dir, "save-root": opts.save_root, "runs-dir": opts.runs_dir,
            "results-dir": opts.results_dir}


def prepare_smoke_data(setup: Dict, data_dir: Path, datasets: List[str]) -> None:
    from data_prep.pydoc_corpus import prepare_pydoc_chars, prepare_pydoc_words

    for d in datasets:
        spec = setup["smoke"]["datasets"][d]
        if spec["corpus"] == "pydoc-words":
            prepare_pydoc_words(data_dir, max_lines=spec.get("max_lines"), workers=1)
        elif spec["corpus"] == "pydoc-chars":
            prepare_pydoc_chars(data_dir, max_bytes=spec.get("max_bytes"), workers=1)
        else:
            raise ReproError(f"unknown smoke corpus {spec['corpus']!r}")


def prepare_scale_data(setup: Dict, data_dir: Path, dataset: str) -> None:
    """The --scale corpus: CPython's documentation topics, byte level (the demo's corpus)."""
    from data_prep.pydoc_corpus import prepare_pydoc_chars

    if dataset != "pydoc-chars":
        raise ReproError(f"--scale knows how to build pydoc-chars only, not {dataset!r}")
    prepare_pydoc_chars(data_dir, workers=1, name=setup["datasets"][dataset]["data"])


def cost_report(table: int, runs: List[Run]) -> str:
    """The relative cost of every planned row (cost model at the run's shape) beside the paper's."""
    from fairseq_mswa.cost import as_dicts, table_rows

    paper = {r["row"]: r for r in as_dicts(table_rows(table))}
    m = runs[0].meta
    lines = [f"Table {table}, {m['scale']} scale (windows / segment / n divided by {m['factor']}): "
             f"{m['layers']} layers x {m['heads']} heads, d {m['embed_dim']}, segment "
             f"{m['segment']}, {m['tokens_per_update']} tokens/update, {m['max_update']} updates, "
             f"seed {m['seed']}",
             f"{'row':34s} {'windows':>10s} {'memory':>6s} {'rel. cost (run)':>15s} "
             f"{'rel. cost (paper model)':>23s}"]
    for r in runs:
        c = r.meta["cost"]
        w = c["windows"]
        wtxt = ("-" if not w else f"full {r.meta['segment']}" if w[0] is None
                else f"{w[0]}..{w[1]}" if w[0] != w[1] else str(w[0]))
        p = paper[r.row["row"]]
        lines.append(f"{r.row['row']:34s} {wtxt:>10s} {str(r.meta['max_memory']):>6s} "
                     f"{c['relative_cost']:15.3f} {p['relative_cost']:23.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train + evaluate the rows of an MSWA paper table.")
    ap.add_argument("--table", type=int, required=True, choices=TABLES)
    ap.add_argument("--rows", default=None, help="comma-separated row ids or names (default all)")
    ap.add_argument("--datasets", default=None,
                    help="comma-separated: wikitext-103, enwik8 (default: the table's)")
    ap.add_argument("--gpus", type=int, default=1,
                    help="GPUs (fairseq distributed world size); update-freq keeps the tokens "
                         "per update")
    ap.add_argument("--batch-per-gpu", type=int, default=None,
                    help="sequences per GPU per step (default: the whole update in one step)")
    ap.add_argument("--max-update", type=int, default=None,
                    help="override the paper's 150,000 updates")
    ap.add_argument("--data-dir", default=None,
                    help="folder holding wikitext-103/ and enwik8/ (default data-bin; smoke: "
                         "runs/smoke/data-bin)")
    ap.add_argument("--results-dir", default=None,
                    help="default results (smoke: runs/smoke/results)")
    ap.add_argument("--runs-dir", default=None, help="logs + TensorBoard (default runs)")
    ap.add_argument("--save-root", default=None, help="checkpoints (default checkpoints)")
    ap.add_argument("--train-args", default="", help="extra fairseq-train flags (one string)")
    ap.add_argument("--eval-args", default="", help="extra fairseq-eval-lm flags (one string)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU run of every row on a built-in corpus (tests the pipeline)")
    ap.add_argument("--force", action="store_true", help="re-run rows that already have a result")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--no-tables", action="store_true",
                    help="do not run make_tables.py at the end")
    ap.add_argument("--scale", default=None,
                    help="run every row shrunk by the named scale of configs/tables/setup.yaml "
                         "(cpu: 2 cores, minutes per row; results/cpu/)")
    ap.add_argument("--seed", type=int, default=None,
                    help="training seed (default: setup.yaml's); another seed writes "
                         "<row>-seed<N>.json beside the default one (run-to-run noise)")
    ap.add_argument("--verbose", action="store_true",
                    help="stream fairseq's output instead of one progress bar per run")
    return ap


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    t_start = time.time()
    if opts.smoke:
        base = REPO / "runs" / "smoke"
    elif opts.scale and opts.scale != "paper":
        base = REPO / "runs" / opts.scale
    else:
        base = REPO
    scaled = base not in (REPO, REPO / "runs" / "smoke")
    opts.data_dir = opts.data_dir or str(base / "data-bin")
    opts.results_dir = opts.results_dir or str(
        REPO / "results" / opts.scale if scaled else base / "results")
    opts.runs_dir = opts.runs_dir or str(base / "runs" if base != REPO else REPO / "runs")
    opts.save_root = opts.save_root or str(base / "checkpoints")
    setup = load_setup()
    try:
        runs = plan_runs(opts.table, opts, setup)
        if scaled:
            print(cost_report(opts.table, runs), flush=True)
        if opts.dry_run:
            for r in runs:
                print(" ".join(shlex.quote(c) for c in r.train_cmd))
                print(" ".join(shlex.quote(c) for c in r.eval_cmd))
            return 0
        if opts.smoke:
            prepare_smoke_data(setup, Path(opts.data_dir), sorted({r.dataset for r in runs}))
        if scaled:
            prepare_scale_data(setup, Path(opts.data_dir), runs[0].dataset)
        for r in runs:
            if not r.data.is_dir():
                raise ReproError(
                    f"no data at {r.data}: run data_prep/{r.dataset.replace('-', '')}.sh first "
                    f"(or pass --data-dir)"
                )
        done = 0
        for i, r in enumerate(runs, 1):
            if r.result.is_file() and not opts.force:
                print(f"[{i}/{len(runs)}] {r.result} exists: skipped (--force re-runs it)")
                continue
            print(f"[{i}/{len(runs)}] table {r.table} / {r.dataset} / {r.row['row']}", flush=True)
            execute(r, setup, opts)
            done += 1
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not opts.no_tables:
        from studies.make_tables import render, render_scaled

        if scaled:
            written = render_scaled(
                opts.table, Path(opts.results_dir), REPO / "results" / "paper.json",
                run_info={"command": script_command("reproduce.py", argv, path_roots(opts)),
                          "git_commit": git_commit(), "git_dirty": git_dirty(),
                          "date": utc_now(),
                          "invocation_wall_s": round(time.time() - t_start, 1),
                          "rows_run_now": done, "scale": opts.scale,
                          "machine": machine_info()})
            print(written[0].with_suffix(".md").read_text(encoding="utf-8"))
            for p in written:
                print(f"wrote {p}")
        else:
            out = Path(opts.results_dir) / "tables.md"
            render(Path(opts.results_dir), REPO / "results" / "paper.json", out)
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
