"""Generation with ``transformer_xl_mswa``: incremental decoding through fairseq's ``incremental_state``
(per-head rolling caches of position-free keys, the position term from the distances) equals the
parallel forward (float64, 1e-10) for every window pattern, with sinks, full-attention layers, beam
reorders and prompts longer than every window; it equals the stream path with memory; SWAA
full-attention decode against a parallel forward with per-query masks; cache bytes = the formula;
clear errors; and sampling with fairseq-interactive (both tasks) and the hub interface."""


import pytest
import torch

import fairseq_mswa.modules.xl_attention as xl_attention
from fairseq_mswa.models.linear_mswa import LinearMSWALanguageModel
from fairseq_mswa.models.transformer_xl_mswa import TransformerXLMSWALanguageModel
from conftest import (assert_full_decode_matches, decoding_cases, full_after_prompt_attention, PROMPT_TEXT, USER_DIR, XL_WORDS, assert_interactive_continues,
                      decode_in_chunks, log_probs, random_tokens, tiny_xl_model, train_tiny)
from fairseq_mswa.stream import StreamState

N = 140  # tokens: more than twice the largest window of the tiny schedules (mswa base 16: 64)
PROMPT = 130
HEAD_DIM = 32 // 4


def _model(pattern, **extra):
    return tiny_xl_model(attn_pattern=pattern, base_window=16, attn_backend="dense",
                         **extra).double()


def _tokens(b=3, n=N, seed=1):
    return random_tokens(b, n, XL_WORDS + 4, seed)


_log_probs = log_probs
_decode = decode_in_chunks


CASES = decoding_cases("0,2")


@pytest.mark.parametrize("case", list(CASES))
def test_decoding_equals_parallel_forward(case):
    m = _model(case.split("+")[0].replace("explicit", "mswa"), **CASES[case])
    tok = _tokens()
    with torch.no_grad():
        full = _log_probs(m, m(tok)[0])  # one segment, no memory: exact window attention
        steps, _ = _decode(m, tok, [1] * N)
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        # a prompt longer than every window (rings rolled over twice), a beam reorder, then tokens
        first, state = _decode(m, tok, [PROMPT])
        order = torch.tensor([2, 0, 0])
        m.decoder.reorder_incremental_state_scripting(state, order)
        state_rest = []
        for t in range(PROMPT, N):
            state_rest.append(m.decoder(tok[order, : t + 1], incremental_state=state)[0])
        got = torch.cat([first[order], _log_probs(m, torch.cat(state_rest, 1))], 1)
        torch.testing.assert_close(got, full[order], rtol=1e-10, atol=1e-10)
        # mixed chunk sizes (a chunk may straddle a window boundary)
        mixed, _ = _decode(m, tok, [5, 1, 1, 30, 1, 17, 1, 70, 1, 1, 13])
        torch.testing.assert_close(mixed, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pattern,extra,n,seg", [
    ("mswa", dict(sink_tokens=3), N, 37),
    # full heads: the stream path keeps mem_len = tokens_per_sample (32) states, so both see
    # everything while the sequence fits in memory + segment
    ("swa", dict(full_attn_layers="1", sink_tokens=1), 64, 32),
])
def test_decoding_equals_stream_path_with_memory(pattern, extra, n, seg):
    m = _model(pattern, **extra)
    tok = _tokens(n=n)
    with torch.no_grad():
        stream = torch.cat([_log_probs(m, m(tok[:, s:s + seg], stream=StreamState("t", s))[0])
                            for s in range(0, n, seg)], 1)  # segments with memory, as mswa_lm runs
        steps, _ = _decode(m, tok, [1] * n)
    torch.testing.assert_close(steps, stream, rtol=1e-10, atol=1e-10)


def test_cache_bytes_are_the_formula():
    """Per layer: windowed heads hold w + sinks keys and values, full heads every token."""
    for extra in (dict(sink_tokens=1), dict(full_attn_layers="3", sink_tokens=2), dict()):
        m = _model("mswa", **extra)
        with torch.no_grad():
            _, state = _decode(m, _tokens(), [PROMPT, 1, 1])
        s = m.schedule.sink_tokens
        keys = sum(PROMPT + 2 if w is None else w + s
                   for layer in m.schedule.windows for w in layer)
        assert m.decoder.cache_nbytes(state) == 3 * keys * 2 * HEAD_DIM * 8, extra
    # MSWA vs SWA at equal base window: the sum of the windows, not the layer maximum
    swa = _model("swa")
    with torch.no_grad():
        _, state_swa = _decode(swa, _tokens(), [PROMPT])
        m = _model("mswa")
        _, state_mswa = _decode(m, _tokens(), [PROMPT])
    ratio = m.decoder.cache_nbytes(state_mswa) / swa.decoder.cache_nbytes(state_swa)
    assert ratio == sum(w for layer in m.schedule.windows for w in layer) / (16 * 4 * 4)


@pytest.mark.parametrize("pattern,extra", [("mswa", dict(sink_tokens=1)),
                                           ("swa", dict(full_attn_layers="1"))])
def test_full_attention_decode_equals_masked_parallel_forward(monkeypatch, pattern, extra):
    """decode_full_attention: prompt with the trained windows, generated tokens see every key
    (windowed heads' position term clamped at w - 1, as the training path's R = w gives)."""
    m = _model(pattern, decode_full_attention=True, **extra)
    tok = _tokens()
    with torch.no_grad():
        decoded, state = _decode(m, tok, [PROMPT] + [1] * (N - PROMPT))
        assert m.decoder.cache_nbytes(state) == 3 * 4 * 4 * N * 2 * HEAD_DIM * 8  # nothing evicted

        monkeypatch.setattr(xl_attention, "window_attention", full_after_prompt_attention(PROMPT))
        ref = _log_probs(m, m(tok)[0])
        monkeypatch.undo()
        trained = _log_probs(m, m(tok)[0])
    assert_full_decode_matches(decoded, ref, trained, PROMPT)


def test_clear_errors():
    m = _model("mswa")
    tok = _tokens()
    with pytest.raises(ValueError, match="empty prompt"):
        m.decoder(tok[:, :0], incremental_state={})
    state = {}
    m.decoder(tok[:, :5], incremental_state=state)
    with pytest.raises(ValueError, match="5 are cached"):
        m.decoder(tok[:, :5], incremental_state=state)
    with pytest.raises(ValueError, match="exclusive"):
        m.decoder(tok[:, :6], incremental_state=state, stream=StreamState("x", 0))


# --- sampling the fairseq way: fairseq-interactive and the hub interface ------------------------

def test_sampling_with_fairseq_interactive_and_hub(tiny_corpus, tmp_path):
    """A tiny XL trained for a few updates: fairseq-interactive (mswa_lm and language_modeling)
    continues a prompt by sampling; the hub's ``sample`` too; greedy generation through
    SequenceGenerator equals the argmax of the parallel forward; a checkpoint of another
    architecture is refused by name."""
    save = tmp_path / "xl"
    ckpt = train_tiny(tiny_corpus, save, "transformer_xl_mswa_tiny", "mswa_lm", 3,
                      "--sink-tokens", "1", tokens_per_sample=32, batch_size=4)
    for task, overrides in (("mswa_lm", "{'decode_full_attention': True}"),
                            ("language_modeling", "{}")):
        assert_interactive_continues(tiny_corpus, ckpt, task, "--max-len-b", "12",
                                     "--model-overrides", overrides)

    hub = TransformerXLMSWALanguageModel.from_pretrained(
        str(save), checkpoint_file=ckpt.name, data_name_or_path=str(tiny_corpus),
        user_dir=str(USER_DIR),
    )
    torch.manual_seed(0)
    words = hub.sample(PROMPT_TEXT, sampling=True, sampling_topk=10, beam=1, min_len=5,
                       max_len_b=12).split()
    assert words[:3] == PROMPT_TEXT.split() and len(words) > 3
    # greedy through SequenceGenerator (incremental) == argmax of the parallel forward, step by step
    model, d = hub.models[0], hub.src_dict
    min_len = 6  # SequenceGenerator forbids </s> before step min_len
    greedy = hub.generate(hub.encode(PROMPT_TEXT), beam=1, min_len=min_len, max_len_b=8)[0]["tokens"]
    p = len(PROMPT_TEXT.split())
    assert greedy[:p].tolist() == [d.index(w) for w in PROMPT_TEXT.split()]
    seq = torch.cat([greedy.new_tensor([d.eos()]), greedy])  # </s> prompt generated (</s>)
    with torch.no_grad():
        logits = model(seq[None, :-1])[0][0]  # predicts seq[1:] = greedy
    logits[:min_len, d.eos()] = float("-inf")
    logits[:, d.pad()] = float("-inf")
    generated = greedy[p:-1]  # the last token may be an </s> forced by the length limit
    assert len(generated) >= 1
    assert torch.equal(logits[p:p + len(generated)].argmax(-1), generated)
    over = TransformerXLMSWALanguageModel.from_pretrained(
        str(save), checkpoint_file=ckpt.name, data_name_or_path=str(tiny_corpus),
        user_dir=str(USER_DIR), decode_full_attention=True,
    )
    assert over.models[0].decoder.cfg.decode_full_attention is True
    with pytest.raises(ValueError, match="TransformerXLMSWALanguageModel.from_pretrained"):
        LinearMSWALanguageModel.from_pretrained(
            str(save), checkpoint_file=ckpt.name, data_name_or_path=str(tiny_corpus),
            user_dir=str(USER_DIR),
        )
