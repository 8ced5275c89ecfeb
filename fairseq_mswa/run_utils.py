"""Helpers for the programs that drive fairseq's CLIs (scripts/, tests/, data_prep/).

* atomic writes: :func:`write_text_atomic`, :func:`write_json_atomic` (a temporary file in the
  same folder, then ``os.replace``: a reader never sees a half-written file);
* fairseq log parsing: :func:`parse_eval_lm` (``Evaluated N tokens`` with fairseq's thousands
  separator, ``Loss (base 2)``), :func:`parse_train_summary` (the last ``| train |`` line),
  :func:`parse_train_inner` (every ``train_inner`` line, simple or json log format);
* :func:`run_logged`: run a CLI with its whole output teed to a log file, echoed line by line or
  handed to a callback (:class:`TrainProgress` turns fairseq-train's lines into one tqdm bar).

Pure standard library (tqdm is imported only by :class:`TrainProgress`), and not imported by the
plugin itself: importing it loads neither torch nor fairseq. It lives in the package (not in
scripts/) so that scripts, tests and data_prep import it by name, without ``sys.path`` tricks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]


class CommandError(RuntimeError):
    """A CLI failed or printed something unexpected; the message names the log to read."""


# --- atomic writes -----------------------------------------------------------------------------

def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: PathLike, obj) -> None:
    """``obj`` as indented JSON (sorted keys, final newline), written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --- fairseq log parsing -----------------------------------------------------------------------

_NUMBER = r"[\d,]*\.?\d+"  # fairseq prints counts with a thousands separator: 1,234,567
_EVAL_TOKENS = re.compile(
    rf"Evaluated ({_NUMBER}) tokens in ({_NUMBER})s \(({_NUMBER}) tokens/s\)"
)
_EVAL_LOSS = re.compile(rf"Loss \(base 2\): ({_NUMBER}), Perplexity: ({_NUMBER}|inf)")
_TRAIN_SUMMARY = re.compile(r"\| train \| .*")
_TRAIN_INNER_JSON = re.compile(r"\| train_inner \| (\{.*\})")
_TRAIN_INNER_SIMPLE = re.compile(r"\| train_inner \| .*")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def parse_eval_lm(text: str) -> Dict:
    """The result lines of fairseq-eval-lm:

    ``Evaluated 1,234 tokens in 0.9s (1371.11 tokens/s)`` and
    ``Loss (base 2): 6.9264, Perplexity: 121.64`` ->
    ``{eval_symbols, eval_seconds, eval_tokens_per_s, loss_base2, perplexity}``.
    Raises CommandError when either line is missing."""
    m_tok, m_loss = _EVAL_TOKENS.search(text), _EVAL_LOSS.search(text)
    if not m_tok or not m_loss:
        raise CommandError(
            "fairseq-eval-lm printed no 'Evaluated N tokens' / 'Loss (base 2)' line"
        )
    return {
        "eval_symbols": int(_num(m_tok.group(1))),
        "eval_seconds": _num(m_tok.group(2)),
        "eval_tokens_per_s": _num(m_tok.group(3)),
        "loss_base2": _num(m_loss.group(1)),
        "perplexity": float("inf") if m_loss.group(2) == "inf" else _num(m_loss.group(2)),
    }


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
                rec[name] = cast(_num(str(fields[key])))
            except (KeyError, ValueError):
                pass
        if "update" in rec:
            out.append(rec)
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
                    out[name] = _num(fields[key])
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


def git_commit(repo: Optional[PathLike] = None) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: this checkout), or ``"unknown"`` outside git."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def machine_info(device: str = "cpu", threads: Optional[int] = None) -> Dict:
    """What a committed benchmark states about its machine (torch/fairseq imported lazily)."""
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
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


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
