"""Decode-time evaluation (``studies.decode_eval``, ``scripts/decode_eval.py``):
the decoding path scores a continuation exactly as the parallel forward does, SWAA's full-attention
decode changes nothing where every head is already full and something where windows cut, and the
command line reports, records and refuses as documented."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CLI_ENV, USER_DIR, random_tokens, tiny_linear_model, tiny_xl_model, train_tiny

from studies import decode_eval as de

REPO = Path(__file__).resolve().parents[1]
PROMPT, CONT = 12, 8


def parallel_log_probs(model, pairs, prompt):
    """pairs (B, P + C) -> log p of the continuation tokens (B, C) from one parallel forward."""
    out, extra = model.decoder(pairs)
    lp = model.get_normalized_probs((out, extra), log_probs=True)
    targets = pairs[:, prompt:]
    return lp[:, prompt - 1:-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)


MODELS = {
    "xl-mswa": lambda **kw: tiny_xl_model(attn_pattern="mswa", base_window=16, **kw),
    "xl-swa": lambda **kw: tiny_xl_model(attn_pattern="swa", base_window=4, **kw),
    "linear-mswa": lambda **kw: tiny_linear_model(base_window=16, **kw),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decoding_path_equals_parallel_scoring(name):
    model = MODELS[name]()
    vocab = len(model.decoder.dictionary)
    pairs = random_tokens(3, PROMPT + CONT, vocab)
    with torch.no_grad():
        decoded = de.decode_log_probs(model, pairs, PROMPT)
        parallel = parallel_log_probs(model, pairs, PROMPT)
    assert decoded.shape == (3, CONT)
    torch.testing.assert_close(decoded, parallel, atol=1e-5, rtol=0)
    result = de.evaluate(model, pairs, PROMPT, batch_size=2)
    assert result["tokens"] == 3 * CONT and result["pairs"] == 3
    expect = -float(parallel.double().sum()) / math.log(2) / (3 * CONT)
    assert result["bits_per_token"] == pytest.approx(expect, abs=1e-5)


def test_full_attention_decode_changes_nothing_on_a_full_model_and_something_on_windows():
    pairs = random_tokens(2, PROMPT + CONT, 27)
    with torch.no_grad():
        full = de.decode_log_probs(tiny_xl_model(attn_pattern="full"), pairs, PROMPT)
        full_fd = de.decode_log_probs(
            tiny_xl_model(attn_pattern="full", decode_full_attention=True), pairs, PROMPT)
        swa = de.decode_log_probs(MODELS["xl-swa"](), pairs, PROMPT)
        swa_fd = de.decode_log_probs(MODELS["xl-swa"](decode_full_attention=True), pairs, PROMPT)
    torch.testing.assert_close(full_fd, full, atol=1e-6, rtol=0)
    assert (swa_fd - swa).abs().max() > 1e-3  # windows of 4 cut a 20-token context


def test_make_pairs_cuts_consecutive_windows_and_refuses_a_short_split():
    tokens = torch.arange(50)
    pairs = de.make_pairs(tokens, 7, 3)
    assert pairs.shape == (5, 10) and pairs[1, 0] == 10 and pairs[-1, -1] == 49
    assert de.make_pairs(tokens, 7, 3, max_pairs=2).shape == (2, 10)
    with pytest.raises(de.DecodeEvalError, match="fewer than one pair"):
        de.make_pairs(tokens[:9], 7, 3)


@pytest.mark.parametrize("text, match", [("{'a': ", "not a Python literal"),
                                         ("[1, 2]", "not a dict")])
def test_bad_overrides_name_the_fix(text, match):
    with pytest.raises(de.DecodeEvalError, match=match):
        de.parse_overrides(text)


def run_script(*args):
    return subprocess.run([sys.executable, "scripts/decode_eval.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=CLI_ENV, timeout=240)


def test_cli_scores_a_trained_checkpoint_records_it_and_refuses_bad_input(tiny_corpus, tmp_path):
    ckpt = train_tiny(tiny_corpus, tmp_path / "ckpt", "transformer_xl_mswa_tiny", "mswa_lm", 3,
                      "--base-window", "16", tokens_per_sample=32)
    common = [tiny_corpus, "--path", ckpt, "--user-dir", USER_DIR, "--prompt-tokens", 16,
              "--continuation-tokens", 8, "--max-pairs", 6, "--batch-size", 4, "--cpu"]
    record = tmp_path / "out.json"
    proc = run_script(*common, "--json", record)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("continuation bits per token: ") and last.endswith("over 48 tokens")
    got = json.loads(record.read_text())
    assert got["tokens"] == 48 and got["pairs"] == 6
    assert float(last.split()[4]) == pytest.approx(got["bits_per_token"], abs=1e-6)
    assert 0 < got["bits_per_token"] < 10
    for key in ("command", "git_commit", "date", "machine"):
        assert key in got
    assert got["command"].startswith("python scripts/decode_eval.py")

    bad = run_script(*common, "--model-overrides", "{'decode_full_atention': True}")
    assert bad.returncode == 2 and "decode_full_atention" in bad.stderr
    assert "fix the name" in bad.stderr
    missing = run_script(*common[:2], tmp_path / "nope.pt", *common[3:])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    short = run_script(*[100000 if a == 16 else a for a in common])  # --prompt-tokens 100000
    assert short.returncode == 2 and "fewer than one pair" in short.stderr


def test_result_line_parses_back():
    """The result line and its parser (used by the adaptation study) agree; no line -> None."""
    from studies.decode_eval import parse_result_line, result_line

    line = result_line({"bits_per_token": 2.2907119, "tokens": 16384})
    assert parse_result_line("log\n" + line + "\n") == {"bits_per_token": 2.290712,
                                                       "tokens": 16384}
    assert parse_result_line("no result here") is None
