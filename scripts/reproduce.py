#!/usr/bin/env python
"""Train and evaluate the rows of the MSWA paper's Tables 2, 3, 5 and 6 (driver of tableN.sh).

    python scripts/reproduce.py --table 2 [--rows swa,mswa] [--datasets enwik8] [--gpus 8]
                                [--max-update N] [--data-dir data-bin] [--smoke] [--dry-run]

For every (dataset, row): fairseq-train with the paper's setup (configs/tables/setup.yaml) and the
row's flags (configs/tables/table<N>.yaml), then fairseq-eval-lm on the test split, then one JSON
under ``<results-dir>/table<N>/<dataset>/<row id>.json``. Logs (fairseq's progress output) go to
the terminal and to ``<runs-dir>/table<N>/<dataset>/<row id>/{train,eval}.log``; TensorBoard logs
to ``.../tb``; checkpoints to ``<save-root>/table<N>/<dataset>/<row id>``.

Knobs: ``--gpus N`` (fairseq's distributed world size; ``--update-freq`` is derived so that every
update still has the paper's tokens), ``--batch-per-gpu`` (sequences per GPU per step),
``--max-update``, ``--data-dir``, ``--rows``, ``--datasets``, ``--train-args``/``--eval-args``
(extra fairseq flags), ``--force`` (re-run rows that have a result).

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
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = REPO / "configs" / "tables"
USER_DIR = REPO / "fairseq_mswa"
TABLES = (2, 3, 5, 6)


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


def max_window(args: Dict, layers: int = 12, heads: int = 8) -> Optional[int]:
    """Largest window of the row's schedule (None: a head with full attention)."""
    from fairseq_mswa.schedule import build_schedule

    sched = build_schedule(
        layers, heads,
        base_window=args.get("base-window"),
        pattern=args.get("attn-pattern", "mswa"),
        variation=args.get("window-variation", "geometric"),
        windows=args.get("attn-windows") or None,
    )
    return sched.window_range()[1]


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


def plan_runs(table: int, opts, setup: Dict) -> List[Run]:
    cfg = load_table(table)
    family = setup["families"][cfg["family"]]
    datasets = opts.datasets.split(",") if opts.datasets else cfg["datasets"]
    for d in datasets:
        if d not in family["datasets"]:
            raise ReproError(f"unknown dataset {d!r}: use {', '.join(family['datasets'])}")
    rows = select(cfg["rows"], opts.rows)
    smoke = setup["smoke"] if opts.smoke else None
    runs = []
    for dataset in datasets:
        ds = family["datasets"][dataset]
        if smoke:
            data = Path(opts.data_dir) / smoke["datasets"][dataset]["corpus"]
            segment = int(smoke["segment"])
            sequences = int(smoke["sequences_per_update"])
            eval_bs = int(smoke["eval_batch_size"])
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
        update_freq = sequences // (gpus * per_gpu)
        for row in rows:
            args = dict(row.get("args", {}))
            arch = row.get("arch") or ds.get("arch")
            criterion = ds["criterion"]
            # flags, later ones win: paper setup < family < dataset < smoke < smoke model dims
            train = dict(setup["train"])
            train.update(family.get("train") or {})
            train.update(ds.get("train") or {})
            if smoke:
                sds = smoke["datasets"][dataset]
                train.update(smoke["train"])
                train.update(sds.get("train") or {})
                train.update((smoke.get("model") or {}).get(cfg["family"]) or {})
            if opts.max_update is not None:
                train["max-update"] = opts.max_update
            if int(train["max-update"]) <= int(train.get("warmup-updates", 0)):
                # fairseq's cosine period is max-update - warm-up: it must stay positive
                train["warmup-updates"] = int(train["max-update"]) // 10
            mem = None
            if family.get("memory") == "per_layer":
                # the model's --mem-len -1: every layer keeps (its largest window - 1) tokens
                top = max_window(args)
                if top is None:
                    raise ReproError(f"row {row['id']} has full-attention heads: its memory "
                                     "would be the segment; give mem-len in its args")
                mem = int(args["mem-len"]) if "mem-len" in args else top - 1
            rid = row["id"]
            run_dir = Path(opts.runs_dir) / f"table{table}" / dataset / rid
            save_dir = Path(opts.save_root) / f"table{table}" / dataset / rid
            result = Path(opts.results_dir) / f"table{table}" / dataset / f"{rid}.json"
            common = [str(data), "--user-dir", str(USER_DIR), "--task", family["task"],
                      "--tokens-per-sample", str(segment)]
            train_cmd = (
                [sys.executable, "-m", "fairseq_cli.train"] + common
                + ["--arch", arch, "--criterion", criterion,
                   "--batch-size", str(per_gpu), "--update-freq", str(update_freq),
                   "--save-dir", str(save_dir), "--tensorboard-logdir", str(run_dir / "tb")]
                + flags(train) + flags(args)
                + (["--distributed-world-size", str(gpus)] if gpus > 1 else [])
                + shlex.split(opts.train_args or "")
            )
            eval_cmd = (
                [sys.executable, "-m", "fairseq_cli.eval_lm"] + common
                + ["--path", str(save_dir / "checkpoint_last.pt"), "--gen-subset", "test",
                   "--batch-size", str(eval_bs), "--log-format", "simple"]
                + (["--cpu"] if smoke else [])
                + shlex.split(opts.eval_args or "")
            )
            meta = {
                "arch": arch, "criterion": criterion, "segment": segment, "max_memory": mem,
                "args": args, "gpus": gpus, "batch_per_gpu": per_gpu, "update_freq": update_freq,
                "tokens_per_update": sequences * segment, "max_update": train["max-update"],
            }
            runs.append(Run(table, dataset, row, train_cmd, eval_cmd, result, run_dir,
                            save_dir, data, meta))
    return runs


# --- running ----------------------------------------------------------------------------------

def stream(cmd: List[str], log_path: Path, prefix: str) -> Tuple[int, str]:
    """Run ``cmd``, echoing its output (prefixed) and saving it to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=REPO)
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if "tensorboardX" not in line:
                    print(f"{prefix} {line}", end="", flush=True)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, "".join(lines)


_EVAL_TOKENS = re.compile(r"Evaluated ([\d,]+) tokens in ([\d.]+)s \(([\d.]+) tokens/s\)")
_EVAL_LOSS = re.compile(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+|inf)")
_TRAIN_SUMMARY = re.compile(r"\| train \| .*")


def parse_eval(text: str) -> Dict:
    m_tok, m_loss = _EVAL_TOKENS.search(text), _EVAL_LOSS.search(text)
    if not m_tok or not m_loss:
        raise ReproError("fairseq-eval-lm printed no 'Evaluated N tokens' / 'Loss (base 2)' line")
    return {
        "eval_symbols": int(m_tok.group(1).replace(",", "")),
        "eval_seconds": float(m_tok.group(2)),
        "eval_tokens_per_s": float(m_tok.group(3)),
        "loss_base2": float(m_loss.group(1)),
        "perplexity": float(m_loss.group(2)),
    }


def parse_train(text: str) -> Dict:
    """Last epoch summary of fairseq-train (``| train | ... | wps ... | num_updates ...``)."""
    out = {}
    summaries = _TRAIN_SUMMARY.findall(text)
    if summaries:
        fields = dict(
            kv.strip().split(" ", 1) for kv in summaries[-1].split("|")[2:] if " " in kv.strip()
        )
        for key, name in (("wps", "train_tokens_per_s"), ("num_updates", "updates"),
                          ("train_wall", "train_wall_s"), ("loss", "train_loss_base2")):
            if key in fields:
                try:
                    out[name] = float(fields[key])
                except ValueError:
                    pass
    if "updates" in out:
        out["updates"] = int(out["updates"])
    return out


def test_split_stats(data: Path) -> Dict:
    marker = data / "prepared.json"
    if not marker.is_file():
        return {}
    info = json.loads(marker.read_text(encoding="utf-8"))
    return {"unit": info.get("unit"), **info.get("splits", {}).get("test", {})}


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
    print(f"{tag} train: " + " ".join(shlex.quote(c) for c in run.train_cmd), flush=True)
    t0 = time.time()
    rc, out = stream(run.train_cmd, run.run_dir / "train.log", tag)
    if rc != 0:
        raise ReproError(f"{tag} fairseq-train failed (exit {rc}); see {run.run_dir/'train.log'}")
    train_s = time.time() - t0
    ckpt = run.save_dir / "checkpoint_last.pt"
    if not ckpt.is_file():
        raise ReproError(f"{tag} no {ckpt} after training")
    print(f"{tag} eval: " + " ".join(shlex.quote(c) for c in run.eval_cmd), flush=True)
    rc, eval_out = stream(run.eval_cmd, run.run_dir / "eval.log", tag)
    if rc != 0:
        raise ReproError(f"{tag} fairseq-eval-lm failed (exit {rc}); see {run.run_dir/'eval.log'}")
    ev = parse_eval(eval_out)
    split = test_split_stats(run.data)
    metric = setup["datasets"][run.dataset]["metric"]
    value = metric_value(run.dataset, metric, ev, split)
    cost = {r["row"]: r for r in as_dicts(table_rows(run.table))}.get(run.row["row"])
    if cost is None:
        raise ReproError(f"row {run.row['row']!r} is not in fairseq_mswa.cost's Table {run.table}")
    tr = parse_train(out)
    res = {
        "table": run.table, "row": run.row["row"], "row_id": run.row["id"],
        "dataset": run.dataset, "smoke": bool(opts.smoke), "data": str(run.data),
        **value, **ev,
        "test_split": split,
        "relative_cost": cost["relative_cost"], "relative_cost_display":
            cost["relative_cost_display"],
        "train": {**run.meta, **tr, "wall_s": round(train_s, 1)},
        "train_tokens_per_s": tr.get("train_tokens_per_s"),
        "checkpoint": str(run.save_dir / "checkpoint_last.pt"),
        "commands": {"train": run.train_cmd, "eval": run.eval_cmd},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if not math.isfinite(res["value"]):
        raise ReproError(f"{tag} non-finite {metric}: {res['value']}")
    write_json_atomic(run.result, res)
    print(f"{tag} {metric} = {res['value']:.4f} -> {run.result}", flush=True)
    return res


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
    return ap


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    base = REPO / "runs" / "smoke" if opts.smoke else REPO
    opts.data_dir = opts.data_dir or str(base / "data-bin")
    opts.results_dir = opts.results_dir or str(base / "results")
    opts.runs_dir = opts.runs_dir or str(base / "runs" if opts.smoke else REPO / "runs")
    opts.save_root = opts.save_root or str(base / "checkpoints")
    setup = load_setup()
    try:
        runs = plan_runs(opts.table, opts, setup)
        if opts.dry_run:
            for r in runs:
                print(" ".join(shlex.quote(c) for c in r.train_cmd))
                print(" ".join(shlex.quote(c) for c in r.eval_cmd))
            return 0
        if opts.smoke:
            prepare_smoke_data(setup, Path(opts.data_dir), sorted({r.dataset for r in runs}))
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
        from make_tables import render  # noqa: E402  (scripts/ is on sys.path via __file__)

        out = Path(opts.results_dir) / "tables.md"
        render(Path(opts.results_dir), REPO / "results" / "paper.json", out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
