"""transformer_xl_mswa: the invariants of issue 3 on tiny fp32 models (no CLI here)."""

import math

import pytest
import torch
from conftest import XL_WORDS, tiny_xl_model

from fairseq_mswa.models.transformer_xl_mswa import memory_lengths
from fairseq_mswa.modules.relative_positions import sinusoid_table
from fairseq_mswa.modules.xl_attention import RelMultiheadWindowAttention
from fairseq_mswa.schedule import ScheduleError, build_schedule
from fairseq_mswa.stream import StreamState

VOCAB = XL_WORDS


build = tiny_xl_model


def stream_logprobs(model, tokens, seg, key="test"):
    """Run the stream in segments of ``seg`` tokens with memory, as mswa_lm does."""
    model.decoder.stream_memories.pop(key, None)
    out = []
    for s in range(0, tokens.shape[1], seg):
        logits, _ = model(tokens[:, s:s + seg], stream=StreamState(key, s))
        out.append(torch.log_softmax(logits.float(), -1))
    return torch.cat(out, 1)


@pytest.mark.parametrize("backend", ["dense", "blocked"])
@pytest.mark.parametrize("pattern,sinks", [("mswa", 0), ("swa", 0), ("mswa-h", 0), ("mswa-l", 0),
                                           ("mswa", 3)])
def test_stream_equivalence(pattern, sinks, backend):
    """Windows + memories >= windows: log-probs do not depend on the segment length."""
    model = build(attn_pattern=pattern, base_window=16, attn_backend=backend, sink_tokens=sinks)
    tokens = torch.randint(4, VOCAB + 4, (2, 160))
    ref = stream_logprobs(model, tokens, 160)
    for seg in (16, 37, 64):
        got = stream_logprobs(model, tokens, seg)
        assert torch.allclose(got, ref, atol=2e-5), (seg, (got - ref).abs().max())


def test_memory_is_exactly_the_window():
    model = build(attn_pattern="mswa", base_window=16)
    assert model.decoder.mem_lens == [w - 1 for w in (8, 16, 32, 64)]
    tokens = torch.randint(4, VOCAB + 4, (1, 100))
    stream_logprobs(model, tokens, 40)
    mems = model.decoder.stream_memories["test"].mems
    assert [m.shape[1] for m in mems[1:-1:2]] == model.decoder.mem_lens
    assert not any(m.requires_grad for m in mems[:-1])
    assert not any("mem" in k for k in model.state_dict())


def test_full_equals_swa_with_long_window():
    """full attention == swa whose window exceeds segment + memory (here: the whole stream)."""
    tokens = torch.randint(4, VOCAB + 4, (2, 96))
    full = build(attn_pattern="full", mem_len=128)
    swa = build(attn_pattern="swa", base_window=200)
    swa.load_state_dict(full.state_dict())
    a, b = stream_logprobs(full, tokens, 32), stream_logprobs(swa, tokens, 32)
    assert torch.allclose(a, b, atol=1e-6)


def test_mem_len_shorter_than_window_is_an_error():
    with pytest.raises(ScheduleError, match="--mem-len"):
        build(attn_pattern="swa", base_window=16, mem_len=8)
    s = build_schedule(2, 4, 8, "swa")
    assert memory_lengths(s, -1, 32) == [7, 7]
    assert memory_lengths(build_schedule(2, 4, None, "full"), -1, 32) == [32, 32]


def naive_xl_attention(layer: RelMultiheadWindowAttention, x, memory, windows):
    """Transformer-XL relative attention written out per (query, key), independently of the
    kernels: score = (q_i + u).k_j + (q_i + v).W_r R[i - j], masked to each head's window."""
    b, length, e = x.shape
    h, d = layer.num_heads, layer.head_dim
    kv_in = torch.cat([memory, x], 1)
    mlen = memory.shape[1]
    wq, wk, wv = layer.qkv_proj.weight.split(e)
    q = (x @ wq.T).view(b, length, h, d)
    k = (kv_in @ wk.T).view(b, -1, h, d)
    v = (kv_in @ wv.T).view(b, -1, h, d)
    klen = kv_in.shape[1]
    r = (sinusoid_table(klen, e).to(x.dtype) @ layer.r_proj.weight.T).view(klen, h, d)
    out = torch.zeros(b, length, h, d, dtype=x.dtype)
    for hh in range(h):
        w = windows[hh]
        for i in range(length):
            p = mlen + i
            js = [j for j in range(klen) if j <= p and (w is None or p - j < w)]
            scores = torch.stack([
                ((q[:, i, hh] + layer.u_bias[hh]) * k[:, j, hh]).sum(-1)
                + ((q[:, i, hh] + layer.v_bias[hh]) * r[p - j, hh]).sum(-1)
                for j in js
            ], -1) / math.sqrt(d)
            probs = torch.softmax(scores, -1)
            out[:, i, hh] = sum(probs[:, n, None] * v[:, j, hh] for n, j in enumerate(js))
    return layer.out_proj(out.reshape(b, length, e))


@pytest.mark.parametrize("backend", ["dense", "blocked", "auto"])
def test_fast_path_equals_naive_xl(backend):
    torch.manual_seed(0)
    windows = (1, 3, 7, None)
    layer = RelMultiheadWindowAttention(16, 4, windows, backend=backend).double()
    with torch.no_grad():
        layer.u_bias.normal_()
        layer.v_bias.normal_()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    memory = torch.randn(2, 5, 16, dtype=torch.float64)
    expected = naive_xl_attention(layer, x, memory, windows)
    assert torch.allclose(layer(x, memory), expected, rtol=1e-9, atol=1e-10)
    # gradients flow into the position biases and projections the same way
    x.requires_grad_(True)
    g1 = torch.autograd.grad(layer(x, memory).sum(), [x, layer.v_bias, layer.r_proj.weight])
    g2 = torch.autograd.grad(naive_xl_attention(layer, x, memory, windows).sum(),
                             [x, layer.v_bias, layer.r_proj.weight])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-9)


def test_override_pattern_keeps_parameters():
    """Windows are not parameters: every pattern loads the same state dict."""
    ref = build(attn_pattern="mswa").state_dict()
    for pattern in ("full", "swa", "mswa-h", "mswa-l"):
        model = build(seed=1, attn_pattern=pattern, base_window=16)
        own = model.state_dict()
        assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in ref.items()}, pattern
        result = model.load_state_dict(ref)  # strict: raises on any missing / unexpected key
        assert not result.missing_keys and not result.unexpected_keys
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items()), pattern


def test_sinks_are_seen_from_far_away():
    """With sink tokens, the first tokens of the stream still influence far-away positions."""
    tokens = torch.randint(4, VOCAB + 4, (1, 120))
    changed = tokens.clone()
    changed[0, 0] = 4 if tokens[0, 0] != 4 else 5
    no_sink = build(attn_pattern="swa", base_window=8)
    sink = build(attn_pattern="swa", base_window=8, sink_tokens=2)
    sink.load_state_dict(no_sink.state_dict())
    far = slice(100, 120)  # beyond 4 layers x (8 - 1) tokens of receptive field
    assert torch.equal(stream_logprobs(no_sink, tokens, 32)[:, far],
                       stream_logprobs(no_sink, changed, 32)[:, far])
    assert not torch.allclose(stream_logprobs(sink, tokens, 32)[:, far],
                              stream_logprobs(sink, changed, 32)[:, far])
