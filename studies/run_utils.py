"""Helpers for the programs that drive fairseq's CLIs (the studies behind scripts/, and tests).

* atomic writes and fairseq-eval-lm's result lines: :mod:`data_prep.records` (re-exported here);
* fairseq log parsing: :func:`parse_train_summary` (the last ``| train |`` line),
  :func:`parse_train_inner` (every ``train_inner`` line, simple or json log format);
* :func:`run_logged`: run a CLI with its whole output teed to a log file, echoed line by line or
  handed to a callback (:class:`TrainProgress` turns fairseq-train's lines into one tqdm bar);
* what a committed result records about itself: :func:`provenance` (the command with
  repository-relative paths and plain ``python``, :func:`git_commit`, the date,
  :func:`machine_info`), :func:`portable_command` for the fairseq commands a result holds;
* the benchmark drivers' result files: :func:`write_result` (JSON + Markdown, atomically).

Pure standard library (tqdm is imported only by :class:`TrainProgress`), and not imported by the
plugin itself: importing it loads neither torch nor fairseq.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from data_prep.records import (  # noqa: F401  (one home; re-exported for the drivers)
    CommandError, PathLike, parse_eval_lm, parse_number, write_json_atomic, write_text_atomic,
)

# the checkout this package is imported from (scripts/, configs/, results/ beside it)
REPO_ROOT = Path(__file__).resolve().parents[1]
USER_DIR = REPO_ROOT / "fairseq_mswa"  # the plugin folder: fairseq's --user-dir


# --- fairseq log parsing -----------------------------------------------------------------------

_TRAIN_SUMMARY = re.compile(r"\| train \| .*")
_TRAIN_INNER_JSON = re.compile(r"\| train_inner \| (\{.*\})")
_TRAIN_INNER_SIMPLE = re.compile(r"\| train_inner \| .*")
_VALID = re.compile(r"\| valid \| .*")


def _fields(line: str) -> Dict[str, str]:
    """``key=value`` (simple format, comma separated) or ``key value`` (``|`` separated)."""
    out = {}
    for part in re.split(r"[|,]", line):
        part = part.strip()
        if "=" in part:
            key, value = part.split("=", 1)
        elif " " in part:
            key, value = part.split(" ", 1)
        else:
            continue
        out[key.strip().split(" ")[-1]] = value.strip()
    return out


def parse_train_inner(line_or_text: str) -> List[Dict]:
    """Every ``train_inner`` record of a fairseq-train log (``--log-format simple`` or ``json``)
    as ``{"update": int, "loss": float, "wps": float}`` (keys present when logged)."""
    out = []
    for line in line_or_text.splitlines():
        m = _TRAIN_INNER_JSON.search(line)
        if m:
            fields = json.loads(m.group(1))
        elif _TRAIN_INNER_SIMPLE.search(line):
            fields = _fields(line.split("| train_inner |", 1)[1])
        else:
            continue
        rec = {}
        for key, name, cast in (("num_updates", "update", int), ("loss", "loss", float),
                                ("wps", "wps", float)):
            try:
                rec[name] = cast(parse_number(str(fields[key])))
            except (KeyError, ValueError):
                pass
        if "update" in rec:
            out.append(rec)
    return out


def parse_valid(text: str) -> List[Dict]:
    """Every validation summary of a fairseq-train log (``| valid | ... | loss 2.851 | ...
    | num_updates 410``) as ``{"update": int, "loss": float}``."""
    out = []
    for line in _VALID.findall(text):
        fields = _fields(line.split("| valid |", 1)[1])
        try:
            out.append({"update": int(parse_number(fields["num_updates"])), "loss": parse_number(fields["loss"])})
        except (KeyError, ValueError):
            continue
    return out


def parse_train_summary(text: str) -> Dict:
    """Last epoch summary of fairseq-train (``| train | ... | wps ... | num_updates ...``):
    ``{train_tokens_per_s, updates, train_wall_s, train_loss_base2}`` (those logged)."""
    out: Dict = {}
    summaries = _TRAIN_SUMMARY.findall(text)
    if summaries:
        fields = _fields(summaries[-1].split("| train |", 1)[1])
        for key, name in (("wps", "train_tokens_per_s"), ("num_updates", "updates"),
                          ("train_wall", "train_wall_s"), ("loss", "train_loss_base2")):
            if key in fields:
                try:
                    out[name] = parse_number(fields[key])
                except ValueError:
                    pass
    if "updates" in out:
        out["updates"] = int(out["updates"])
    return out


# --- running a CLI -----------------------------------------------------------------------------

def run_logged(
    cmd: Sequence[str],
    log_path: PathLike,
    *,
    echo: Optional[str] = None,
    on_line: Optional[Callable[[str], None]] = None,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[PathLike] = None,
) -> Tuple[int, str]:
    """Run ``cmd`` (stdout and stderr together), writing the command and every line to
    ``log_path`` as they come. ``echo``: print each line with this prefix (the raw log);
    ``on_line``: called with each line (e.g. a progress bar). Returns (exit code, output).
    The child is killed if this process is interrupted."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    lines = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                lines.append(line)
                if echo is not None and "tensorboardX" not in line:
                    print(f"{echo} {line}", end="", flush=True)
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, "".join(lines)


def run_fairseq(cmd: Sequence[str], log: PathLike, label: str, *, verbose: bool = False,
                total_updates: Optional[int] = None, cwd: Optional[PathLike] = REPO_ROOT) -> str:
    """Run a fairseq CLI with its full log in ``log``: one :class:`TrainProgress` bar for a
    training run (``total_updates``), the raw log on screen (``verbose``), else quietly. Returns
    its output; raises CommandError naming the log (with its tail when it was not on screen)."""
    if verbose:
        rc, out = run_logged(cmd, log, echo=f"  [{label}]", cwd=cwd)
    elif total_updates is not None:
        with TrainProgress(f"  {label}", total=total_updates) as bar:
            rc, out = run_logged(cmd, log, on_line=bar, cwd=cwd)
    else:
        rc, out = run_logged(cmd, log, cwd=cwd)
    if rc != 0:
        tail = "" if verbose else f"\n{log_tail(out)}\n"
        tool = str(cmd[2]).replace("fairseq_cli.", "fairseq-").replace("_", "-") \
            if len(cmd) > 2 and str(cmd[1]) == "-m" else str(cmd[0])
        raise CommandError(f"{label}: {tool} failed (exit {rc}); full log: {log}{tail}")
    return out


def log_tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log (for error messages when the log was not shown)."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class TrainProgress:
    """One tqdm bar for a fairseq-train run, fed its log lines (``on_line``): updates done out of
    ``total``, the last logged loss, elapsed time and ETA (tqdm's rate of the updates so far).

        with TrainProgress("SWA", total=400) as bar:
            rc, out = run_logged(cmd, log, on_line=bar)
    """

    def __init__(self, desc: str, total: Optional[int], **tqdm_kwargs):
        from tqdm.auto import tqdm

        kwargs = dict(desc=desc, total=total, unit="upd", dynamic_ncols=True, mininterval=0.5,
                      bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} updates "
                                 "[{elapsed}<{remaining}{postfix}]")
        kwargs.update(tqdm_kwargs)
        self.bar = tqdm(**kwargs)
        self.updates = 0

    def __call__(self, line: str) -> None:
        for rec in parse_train_inner(line):
            if "loss" in rec:
                self.bar.set_postfix_str(f"loss {rec['loss']:.3f}", refresh=False)
            if rec["update"] > self.updates:
                self.bar.update(rec["update"] - self.updates)
                self.updates = rec["update"]
        if "| train |" in line:  # the epoch summary: the run's final update count
            done = parse_train_summary(line).get("updates")
            if done is not None and done > self.updates:
                self.bar.update(done - self.updates)
                self.updates = done

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --- benchmark provenance ----------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> Optional[List[float]]:
    """(1, 5, 15)-minute load averages: how busy the machine was around a measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str = "cpu", threads: Optional[int] = None) -> Dict:
    """What a committed result states about its machine, one layout for all (torch and fairseq
    imported lazily): platform, python, torch, fairseq, cpu_model, cpu_count, torch_threads,
    device (gpu on cuda), load_average_at_start. No host name."""
    import platform

    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "device": device,
        "load_average_at_start": load_average(),
    }
    try:
        import fairseq

        info["fairseq"] = getattr(fairseq, "__version__", "unknown")
    except ImportError:
        info["fairseq"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit(repo: PathLike = REPO_ROOT) -> Optional[str]:
    """``git rev-parse HEAD`` of ``repo``: the commit a result measured (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_dirty(repo: PathLike = REPO_ROOT) -> Optional[bool]:
    """Whether tracked files differ from that commit (``git status --porcelain -uno``)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=repo,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _is_python(arg: str) -> bool:
    name = Path(arg).name
    return arg == sys.executable or (os.sep in arg and re.fullmatch(r"python[\d.]*", name) is not None)


def portable_path(arg: str, roots: Optional[Dict[str, PathLike]] = None,
                  repo: PathLike = REPO_ROOT) -> str:
    """One argument of a command as a result records it: an interpreter as ``python``, a path
    inside the repository relative to it, a path inside one of ``roots`` (name -> folder, e.g.
    ``{"data-dir": opts.data_dir}``) as ``<name>/rest``; anything else unchanged.
    ``--flag=/path`` is handled too."""
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return f"{flag}={portable_path(value, roots, repo)}"
    if _is_python(arg):
        return "python"
    if not os.path.isabs(arg):
        return arg
    path = Path(os.path.normpath(arg))
    named = [(name, Path(os.path.abspath(root))) for name, root in (roots or {}).items()
             if root is not None]
    for name, root in sorted(named, key=lambda nr: -len(str(nr[1]))):  # innermost first
        if root != Path(repo).resolve() and not _inside(root, repo) and _inside(path, root):
            rel = path.relative_to(root).as_posix()
            return f"<{name}>" if rel == "." else f"<{name}>/{rel}"
    if _inside(path, repo):
        rel = path.relative_to(Path(repo).resolve()).as_posix()
        return "." if rel == "." else rel
    return arg


def _inside(path: Path, folder: PathLike) -> bool:
    try:
        Path(path).relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def portable_command(cmd: Sequence, roots: Optional[Dict[str, PathLike]] = None,
                     repo: PathLike = REPO_ROOT) -> List[str]:
    """``cmd`` (a list) with every argument through :func:`portable_path`."""
    return [portable_path(str(c), roots, repo) for c in cmd]


def script_command(script: str, argv: Optional[Sequence[str]] = None,
                   roots: Optional[Dict[str, PathLike]] = None) -> str:
    """How to repeat this run: ``python scripts/<script> args`` (``argv``: the arguments given,
    default ``sys.argv[1:]``), paths portable as :func:`portable_path` makes them."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in
                    ["python", f"scripts/{script}"] + portable_command(args, roots))


def utc_now() -> str:
    """The date a result records: ``YYYY-MM-DD HH:MM UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def provenance(command: str, device: str = "cpu", threads: Optional[int] = None) -> Dict:
    """What every committed result records about itself: ``command`` (as
    :func:`script_command` writes it), ``git_commit`` (``git rev-parse HEAD``; ``git_dirty``: the
    checkout had uncommitted changes), ``date`` and ``machine`` (:func:`machine_info`)."""
    return {"command": command, "git_commit": git_commit(), "git_dirty": git_dirty(),
            "date": utc_now(), "machine": machine_info(device, threads)}


def commit_text(record: Dict) -> str:
    """The measured commit of a result for its Markdown: ``git_commit`` (``+ uncommitted
    changes`` when ``git_dirty``), else its ``git_commit_note``, else "not recorded"."""
    if record.get("git_commit"):
        return record["git_commit"] + (" + uncommitted changes" if record.get("git_dirty") else "")
    return record.get("git_commit_note") or "not recorded"


def write_result(record: Dict, json_path: Optional[PathLike], md_path: Optional[PathLike],
                 markdown: str, *, echo: bool = True) -> None:
    """The end of a benchmark driver, one layout for all: print ``markdown`` (``echo``; a driver
    that prints after writing passes False and prints itself), then write ``record`` as JSON
    (``indent=1``, keys in the record's order, a final newline) to ``json_path`` and
    ``markdown`` to ``md_path``, each atomically and each only when its path is given. The
    record is stamped by the driver (:func:`provenance` at the start, the load at the end)."""
    if echo:
        print(markdown)
    if json_path:
        write_text_atomic(json_path, json.dumps(record, indent=1) + "\n")
    if md_path:
        write_text_atomic(md_path, markdown)


def save_figure_atomic(fig, path: PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure through a temporary file and a rename, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
