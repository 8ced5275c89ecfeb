"""End to end through the real fairseq CLIs: preprocess, train, eval-lm, --model-overrides, and
2-process gloo training equal to 1 process with twice the streams."""

import random
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import CLI_ENV, cli_command, run_cli

import fairseq_mswa
from studies.run_utils import parse_eval_lm, parse_train_inner

USER_DIR = str(Path(fairseq_mswa.__file__).parent)


def preprocess(root: Path, lines_per_split, make_line) -> Path:
    rng = random.Random(0)
    for split, n in lines_per_split.items():
        (root / f"{split}.txt").write_text("".join(make_line(rng) + "\n" for _ in range(n)))
    dest = root / "bin"
    run_cli("preprocess", "--only-source", "--trainpref", root / "train.txt",
            "--validpref", root / "valid.txt", "--testpref", root / "test.txt",
            "--destdir", dest, "--workers", "1")
    return dest


@pytest.fixture(scope="module")
def word_data(tmp_path_factory):
    words = "the cat sat on a mat and dog ran to big red house in it was".split()
    return preprocess(tmp_path_factory.mktemp("words"), {"train": 300, "valid": 40, "test": 40},
                      lambda rng: " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """Character level as enwik8 is prepared: each byte as its decimal value, one line per line."""
    root = tmp_path_factory.mktemp("chars")
    text = "the quick brown fox jumps over the lazy dog\n" * 4
    data = preprocess(root, {"train": 60, "valid": 10, "test": 10},
                      lambda rng: " ".join(str(b) for b in rng.choice(text.splitlines()).encode()))
    return data, root


TRAIN = ["--user-dir", USER_DIR, "--task", "mswa_lm", "--arch", "transformer_xl_mswa_tiny",
         "--optimizer", "adam", "--lr", "2e-3", "--cpu", "--log-format", "json",
         "--log-interval", "1", "--no-epoch-checkpoints", "--no-last-checkpoints", "--seed", "3"]


def train(data, save_dir, *extra, updates=4):
    return run_cli("train", data, *TRAIN, "--max-update", updates, "--save-dir", save_dir,
                   "--tokens-per-sample", 24, "--batch-size", 4, *extra)


def eval_lm(data, ckpt, *extra, tps=24):
    ev = parse_eval_lm(run_cli(
        "eval_lm", data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--path", ckpt,
        "--tokens-per-sample", tps, "--batch-size", 2, "--cpu", "--gen-subset", "test", *extra))
    return ev["eval_symbols"], ev["loss_base2"], ev["perplexity"]


def test_word_level_every_pattern_and_override(word_data, tmp_path):
    n_test = sum(len(line.split()) + 1 for line in
                 (word_data.parent / "test.txt").read_text().splitlines())
    vocab = len((word_data / "dict.txt").read_text().splitlines()) + 4  # + fairseq's specials
    results = {}
    for pattern in ("full", "swa", "mswa-h", "mswa-l", "mswa"):
        save = tmp_path / pattern
        train(word_data, save, "--attn-pattern", pattern, "--base-window", 16, "--mem-len",
              -1 if pattern != "full" else 24, updates=12)
        n, loss, ppl = eval_lm(word_data, save / "checkpoint_best.pt")
        assert n == n_test  # every token (and </s>) scored once
        assert ppl == pytest.approx(2 ** loss, rel=1e-3) and ppl < vocab  # it learned something
        results[pattern] = loss
    # the memory is exact: the segment length at evaluation does not change the result
    ck = tmp_path / "mswa" / "checkpoint_best.pt"
    assert eval_lm(word_data, ck, tps=11)[1] == pytest.approx(results["mswa"], abs=2e-4)
    # windows are not parameters: evaluate the MSWA checkpoint as SWA and as full attention
    swa = eval_lm(word_data, ck, "--model-overrides", "{'attn_pattern': 'swa', 'base_window': 4}")
    full = eval_lm(word_data, ck, "--model-overrides", "{'attn_pattern': 'full', 'mem_len': 24}")
    assert swa[0] == full[0] == n_test
    assert swa[1] != pytest.approx(results["mswa"], abs=1e-4)
    assert full[1] != pytest.approx(swa[1], abs=1e-4)


def test_char_level_loss_is_bits_per_character(char_data, tmp_path):
    data, root = char_data
    train(data, tmp_path, "--attn-pattern", "mswa", "--base-window", 16, updates=6)
    n, bpc, _ = eval_lm(data, tmp_path / "checkpoint_best.pt")
    n_chars = sum(len(line.split()) + 1 for line in (root / "test.txt").read_text().splitlines())
    assert n == n_chars  # one scored symbol per byte, newline included
    assert 0 < bpc < 8  # below a uniform guess over 256 byte values


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(log):
    return [rec["loss"] for rec in parse_train_inner(log)]


def test_two_gloo_ranks_equal_one_process_with_twice_the_streams(word_data, tmp_path):
    common = ["--attn-pattern", "mswa", "--base-window", 16, "--ddp-backend", "legacy_ddp"]
    single = _losses(train(word_data, tmp_path / "one", *common, "--batch-size", 4, updates=5))
    port = _free_port()
    procs = []
    for rank in range(2):
        cmd = cli_command(
            "train", word_data, *TRAIN, "--max-update", 5, "--save-dir", tmp_path / "two",
            "--tokens-per-sample", 24, "--batch-size", 2, *common, "--distributed-world-size", 2,
            "--distributed-rank", rank, "--distributed-init-method", f"tcp://127.0.0.1:{port}",
            "--distributed-no-spawn", "--distributed-backend", "gloo")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=CLI_ENV))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    double = _losses(logs[0])
    assert len(single) == len(double) == 5
    assert double == pytest.approx(single, abs=2e-3)
