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
