"""Shared test helpers: a fake fairseq task with a small dictionary, the one runner of fairseq's
CLIs, and sample fairseq-eval-lm output. fairseq-eval-lm's output is parsed by
``fairseq_mswa.run_utils.parse_eval_lm`` (the parser the scripts use too).

Plain helpers (``FakeTask``, ``make_dictionary``, ``run_cli``) are importable with
``from conftest import ...`` (tests/ is on sys.path: it has no ``__init__.py``); the fixtures
wrap them for tests that prefer fixtures.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# one thread per CLI process: the suite runs on 2 shared cores
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}


# the plugin folder, as fairseq's --user-dir
USER_DIR = Path(__file__).resolve().parents[1] / "fairseq_mswa"


def make_dictionary(vocab: int = 23):
    """A fairseq Dictionary with its 4 specials and ``vocab`` words ``w0 .. w{vocab-1}``."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab):
        d.add_symbol(f"w{i}")
    return d


class FakeTask:
    """What ``build_model`` reads from a task: source and target dictionaries (the same one)."""

    def __init__(self, vocab: int = 23):
        self.source_dictionary = self.target_dictionary = make_dictionary(vocab)


def cli_command(tool: str, *args) -> list:
    """``python -m fairseq_cli.<tool> args...`` with this interpreter (tool: train, eval_lm,
    preprocess, ...)."""
    return [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)]


def run_cli(tool: str, *args, timeout: float = 300, env=None, input=None) -> str:
    """Run a fairseq CLI (``input``: its standard input); returns stdout + stderr, or fails the
    test with the command and the end of its output."""
    cmd = cli_command(tool, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=CLI_ENV if env is None else env)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


@pytest.fixture
def fake_task():
    """Factory: ``fake_task(vocab=23)`` -> a FakeTask."""
    return FakeTask


@pytest.fixture
def fairseq_cli():
    """The CLI runner: ``fairseq_cli("train", data, "--arch", ...)`` -> output."""
    return run_cli


@pytest.fixture
def eval_lm_output():
    """Factory of fairseq-eval-lm's result lines as fairseq 0.12 prints them (``{:,}``)."""

    def make(tokens: int, loss: float, ppl: float, seconds: float = 0.9) -> str:
        return (
            f"INFO:fairseq_cli.eval_lm:Evaluated {tokens:,} tokens in {seconds:.1f}s "
            f"({tokens / seconds:.2f} tokens/s)\n"
            f"INFO:fairseq_cli.eval_lm:Loss (base 2): {loss:.4f}, Perplexity: {ppl:.2f}\n"
        )

    return make


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A binarized word corpus with structure to learn: counting phrases over a 30-word vocab
    (``w0 .. w29``), built once per test session."""
    root = tmp_path_factory.mktemp("word_corpus")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]

    def lines(n):
        out = []
        for _ in range(n):
            start = rng.randrange(30)
            out.append(" ".join(words[(start + j) % 30] for j in range(rng.randint(5, 15))))
        return "\n".join(out) + "\n"

    for split, n in (("train", 400), ("valid", 40), ("test", 40)):
        (root / f"{split}.txt").write_text(lines(n))
    run_cli("preprocess", *[
        "--only-source", "--trainpref", str(root / "train.txt"), "--validpref",
        str(root / "valid.txt"), "--testpref", str(root / "test.txt"), "--destdir",
        str(root / "bin"), "--workers", "1",
    ], timeout=120)
    return root / "bin"


# --- tiny fairseq-train runs (resume and bad-input tests) --------------------------------------

# a tiny model, fp32 on CPU, every update logged as JSON (``run_utils.parse_train_inner``)
TINY_ARCHS = {"xl": "transformer_xl_mswa_tiny", "linear": "linear_mswa_tiny"}


def tiny_train_args(data, save_dir, *extra, model: str = "xl", updates: int = 8) -> list:
    """Arguments of ``fairseq-train`` (``mswa_lm``, segments of 24 tokens, 4 streams) for a tiny
    model; ``extra`` flags come last and win."""
    return [data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--arch", TINY_ARCHS[model],
            "--optimizer", "adam", "--lr", "2e-3", "--cpu", "--seed", "3", "--log-format", "json",
            "--log-interval", "1", "--no-epoch-checkpoints", "--tokens-per-sample", "24",
            "--batch-size", "4", "--max-update", str(updates), "--save-dir", save_dir, *extra]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_rank_args(world: int, rank: int, port: int) -> list:
    """Flags of rank ``rank`` of a ``world``-process CPU (gloo) fairseq-train, one process per rank
    (fairseq 0.12 on CPU needs --distributed-no-spawn and a tcp:// init method)."""
    return ["--distributed-world-size", world, "--distributed-rank", rank,
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
            "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]


def run_ranks(tool: str, world: int, args_of_rank, timeout: float = 300) -> list:
    """Run ``world`` processes of a fairseq CLI, rank r with ``args_of_rank(r, port)``; returns
    their outputs (rank 0 first) or fails with the end of both logs."""
    port = free_port()
    procs = [subprocess.Popen(cli_command(tool, *args_of_rank(r, port)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=CLI_ENV)
             for r in range(world)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise AssertionError("\n".join(f"rank {r} (exit {p.returncode}):\n{log[-3000:]}"
                                       for r, (p, log) in enumerate(zip(procs, logs))))
    return logs


def run_cli_failing(tool: str, *args, timeout: float = 300, input=None):
    """Run a fairseq CLI that must fail: returns (exit status, last line of stderr)."""
    cmd = cli_command(tool, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=CLI_ENV)
    if proc.returncode == 0:
        raise AssertionError(f"{' '.join(cmd)} succeeded, expected an error:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, (lines[-1] if lines else "")


def checkpoint_params(path):
    """The model parameters saved in a fairseq checkpoint (name -> tensor)."""
    import torch

    return torch.load(path, map_location="cpu")["model"]
