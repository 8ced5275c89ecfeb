"""fairseq-eval-lm with compiled FlexAttention equals the default backend (the NaN gone).

The audit of issue 28: a tiny checkpoint evaluated with ``--model-overrides "{'attn_backend':
'flex'}"`` gave ``Loss: nan`` from the short last segment on (queries 64 -> 28): after
recompiles torch made the query length symbolic and its CPU flex template read ``pos_scores``
with a wrong stride. kernels/flex.py now compiles with static shapes. Here the whole CLI runs
on a corpus whose streams end on a short segment, both backends, and the losses must agree.

The windows are overridden to ``mswa-h`` (per-head windows, the same in every layer) in both
runs: one layer shape, so flex compiles 3 graphs (first segment, with memory, short last
segment; ~20 s each with CPU inductor) instead of 12.
"""

import math

import pytest
import torch
from conftest import USER_DIR, run_cli, train_tiny

from fairseq_mswa.kernels import flex
from studies.run_utils import parse_eval_lm

TOKENS, BATCH = 64, 2


def _eval(data, ckpt, overrides):
    out = run_cli("eval_lm", data, "--user-dir", USER_DIR, "--task", "mswa_lm", "--path", ckpt,
                  "--tokens-per-sample", TOKENS, "--batch-size", BATCH, "--cpu",
                  "--gen-subset", "test", "--num-workers", "0",
                  "--model-overrides", repr(overrides), timeout=400)
    return parse_eval_lm(out)


@pytest.mark.skipif(bool(flex.IMPORT_ERROR), reason=str(flex.IMPORT_ERROR))
def test_eval_lm_flex_equals_default_backend_on_a_short_last_segment(tiny_corpus, tmp_path):
    test_tokens = sum(len(line.split()) + 1 for line in (tiny_corpus.parent / "test.txt").open())
    per_stream = math.ceil(test_tokens / BATCH)
    assert per_stream % TOKENS, "the streams must end on a short segment"
    ckpt = train_tiny(tiny_corpus, tmp_path / "ckpt", "transformer_xl_mswa_tiny", "mswa_lm", 10,
                      tokens_per_sample=TOKENS)
    windows = {"attn_pattern": "mswa-h"}
    default = _eval(tiny_corpus, ckpt, windows)
    try:
        fused = _eval(tiny_corpus, ckpt, {**windows, "attn_backend": "flex"})
    except AssertionError as e:
        if "InvalidCxxCompiler" in str(e) or "CppCompileError" in str(e):
            pytest.skip(f"no working C++ toolchain for torch.compile here: {str(e)[-300:]}")
        raise
    print(f"eval-lm loss (base 2): default {default['loss_base2']}, flex {fused['loss_base2']}")
    assert default["eval_symbols"] == fused["eval_symbols"] == test_tokens
    assert math.isfinite(fused["loss_base2"]), fused
    assert abs(fused["loss_base2"] - default["loss_base2"]) <= 1e-4, (default, fused)
