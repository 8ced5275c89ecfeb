"""Generation with ``linear_mswa``: incremental decoding through fairseq's ``incremental_state`` equals
the parallel forward (float64, 1e-10) for every window pattern, with sinks, full-attention layers, beam
reorders and prompts longer than every window; SWAA full-attention decode against a parallel forward
with per-query masks; clear errors; and sampling with fairseq-interactive and the hub interface."""


import pytest
import torch

import fairseq_mswa.modules.local_attention as local_attention
from fairseq_mswa.models.linear_mswa import LinearMSWALanguageModel
from fairseq_mswa.modules.kv_cache import WindowKVCache
from conftest import (assert_full_decode_matches, decoding_cases, full_after_prompt_attention, LINEAR_WORDS, PROMPT_TEXT, TINY_LINEAR, USER_DIR,
                      assert_interactive_continues, decode_in_chunks, log_probs, random_tokens,
                      tiny_linear_model, train_tiny)

N = 80  # longer than every window of the tiny schedules (largest: 2 x 2 x 16 = 64)
PROMPT = 70


def _model(pattern, **extra):
    cfg = dict(TINY_LINEAR, decoder_layers=6, attn_pattern=pattern, attn_backend="dense")
    cfg.update(extra)
    return tiny_linear_model("linear_mswa", **cfg).double()


def _tokens(b=3, n=N, seed=1):
    return random_tokens(b, n, LINEAR_WORDS, seed)  # ids below 40, as this module always used


_log_probs = log_probs


CASES = decoding_cases("0,3")


@pytest.mark.parametrize("case", list(CASES))
def test_decoding_equals_parallel_forward(case):
    m = _model(case.split("+")[0].replace("explicit", "mswa"), **CASES[case])
    tok = _tokens()
    with torch.no_grad():
        full = _log_probs(m, m(tok)[0])
        # token by token
        steps, _ = decode_in_chunks(m, tok, [1] * N)
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        # a prompt longer than every window in one call, a beam reorder, then token by token
        state = {}
        first = m.decoder(tok[:, :PROMPT], incremental_state=state)[0]
        order = torch.tensor([2, 0, 0])
        m.decoder.reorder_incremental_state_scripting(state, order)
        rest = [m.decoder(tok[order, : t + 1], incremental_state=state)[0] for t in range(PROMPT, N)]
        torch.testing.assert_close(_log_probs(m, torch.cat([first[order]] + rest, 1)), full[order],
                                   rtol=1e-10, atol=1e-10)


def test_cache_bytes_of_the_model_are_the_sum_of_the_windows():
    m = _model("mswa", sink_tokens=1)
    state = {}
    with torch.no_grad():
        m.decoder(_tokens(), incremental_state=state)
    caches = m.decoder.get_caches(state)
    local = [c for c in caches if isinstance(c, WindowKVCache)]
    windows = [w for layer in m.schedule.windows for w in layer]
    head_dim = 32 // 4
    assert sum(c.nbytes() for c in local) == 3 * (sum(windows) + len(windows)) * 2 * head_dim * 8
    # the linear layers hold their fixed-size state besides
    assert m.decoder.cache_nbytes(state) > sum(c.nbytes() for c in local)


@pytest.mark.parametrize("pattern,extra", [("mswa", dict(sink_tokens=1)), ("swa", dict(full_attn_layers="1"))])
def test_full_attention_decode_equals_masked_parallel_forward(monkeypatch, pattern, extra):
    """decode_full_attention: prompt with the trained windows, generated tokens see every key."""
    m = _model(pattern, decode_full_attention=True, **extra)
    tok = _tokens()
    with torch.no_grad():
        state = {}
        outs = [m.decoder(tok[:, :PROMPT], incremental_state=state)[0]]
        outs += [m.decoder(tok[:, : t + 1], incremental_state=state)[0] for t in range(PROMPT, N)]
        decoded = _log_probs(m, torch.cat(outs, 1))
        # nothing was evicted: every local cache holds all N keys of every head
        for c in m.decoder.get_caches(state):
            if isinstance(c, WindowKVCache):
                assert c.nbytes() == 3 * 4 * N * 2 * 8 * 8

        monkeypatch.setattr(local_attention, "window_attention", full_after_prompt_attention(PROMPT))
        ref = _log_probs(m, m(tok)[0])
        monkeypatch.undo()
        trained = _log_probs(m, m(tok)[0])
    assert_full_decode_matches(decoded, ref, trained, PROMPT)


def test_empty_prompt_and_replayed_tokens_are_clear_errors():
    m = _model("mswa")
    tok = _tokens()
    with pytest.raises(ValueError, match="empty prompt"):
        m.decoder(tok[:, :0], incremental_state={})
    state = {}
    m.decoder(tok[:, :5], incremental_state=state)
    with pytest.raises(ValueError, match="5 are cached"):
        m.decoder(tok[:, :5], incremental_state=state)


# --- sampling the fairseq way: fairseq-interactive and the hub interface ------------------------

_train = train_tiny


def test_sampling_with_fairseq_interactive_and_hub(tiny_corpus, tmp_path):
    """A tiny linear_mswa learns the counting corpus in 30 updates; fairseq-interactive (both tasks)
    and the hub's ``sample`` continue a prompt; decode_full_attention is a model override; a
    checkpoint of another architecture is refused by name."""
    ckpt = _train(tiny_corpus, tmp_path / "lin", "linear_mswa_tiny", "language_modeling", 30,
                  "--sample-break-mode", "none")
    for task in ("language_modeling", "mswa_lm"):
        assert_interactive_continues(tiny_corpus, ckpt, task,
                                     "--model-overrides", "{'decode_full_attention': True}")

    hub = LinearMSWALanguageModel.from_pretrained(
        str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(tiny_corpus),
        user_dir=str(USER_DIR),
    )
    torch.manual_seed(0)
    text = hub.sample(PROMPT_TEXT, sampling=True, sampling_topk=3, beam=1, max_len_b=20)
    words = text.split()
    assert words[:3] == PROMPT_TEXT.split() and len(words) > 3
    # the corpus counts: the learned model continues w3 w4 w5 with w6 far above chance (1/30)
    d = hub.src_dict
    src = torch.tensor([[d.eos()] + [d.index(w) for w in PROMPT_TEXT.split()]])
    with torch.no_grad():
        lprobs = hub.models[0].get_normalized_probs(hub.models[0](src), log_probs=True)
    assert lprobs[0, -1, d.index("w6")].exp() > 0.2
    over = LinearMSWALanguageModel.from_pretrained(
        str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(tiny_corpus),
        user_dir=str(USER_DIR), decode_full_attention=True,
    )
    assert over.models[0].decoder.cfg.decode_full_attention is True

    xl = _train(tiny_corpus, tmp_path / "xl", "transformer_xl_mswa_tiny", "mswa_lm", 1)
    with pytest.raises(ValueError, match="TransformerXLMSWALanguageModel.from_pretrained"):
        LinearMSWALanguageModel.from_pretrained(
            str(xl.parent), checkpoint_file=xl.name, data_name_or_path=str(tiny_corpus),
            user_dir=str(USER_DIR),
        )
