"""The XL attention layer computes each window group on its own (issue 8): its memory slice, its
keys/values and its position term are sized by its own window. Checked against the layer-wide
computation it replaced, against one contiguous key set, and for the work it does."""

import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_mswa.kernels import blocked as blocked_mod
from fairseq_mswa.kernels.dense import dense_window_attention
from fairseq_mswa.modules import xl_attention as xl_mod
from fairseq_mswa.modules.relative_positions import sinusoid_table
from fairseq_mswa.modules.xl_attention import RelMultiheadWindowAttention


def make_layer(windows, embed=32, seed=0, backend="dense", strategy="auto"):
    torch.manual_seed(seed)
    layer = RelMultiheadWindowAttention(embed, len(windows), windows, backend=backend,
                                        strategy=strategy).double()
    with torch.no_grad():
        layer.u_bias.normal_()
        layer.v_bias.normal_()
    return layer


def layerwide(layer, x, memory):
    """The pre-issue-8 computation: every head over the whole memory, one position term of R =
    the layer's largest window (all keys with a full head) for every head, one dense call."""
    b, length, e = x.shape
    h, d = layer.num_heads, layer.head_dim
    wq, wk, wv = layer.qkv_proj.weight.split(e)
    kv_in = torch.cat([memory, x], 1)
    q = F.linear(x, wq).view(b, length, h, d).transpose(1, 2)
    k = F.linear(kv_in, wk).view(b, -1, h, d).transpose(1, 2)
    v = F.linear(kv_in, wv).view(b, -1, h, d).transpose(1, 2)
    lk = kv_in.shape[1]
    top = None if None in layer.windows else max(layer.windows)
    r_len = lk if top is None else min(top, lk)
    r = layer.r_proj(sinusoid_table(r_len, e).to(x.dtype)).view(r_len, h, d)
    scale = d ** -0.5
    pos = torch.einsum("bhld,rhd->bhlr", q + layer.v_bias[:, None], r) * scale
    out = dense_window_attention(q + layer.u_bias[:, None], k, v, list(layer.windows),
                                 pos_scores=pos, scale=scale)
    return layer.out_proj(out.transpose(1, 2).reshape(b, length, e))


WINDOWS = [(2, 2, 4, 4, 8, 8, 16, 16),   # an MSWA layer: 4 consecutive groups
           (4, 1, 4, 7),                 # groups of non-consecutive heads
           (3, None, 3, 9)]              # a full head among windows


@pytest.mark.parametrize("strategy", ["grouped", "merged"])
@pytest.mark.parametrize("backend", ["dense", "blocked"])
@pytest.mark.parametrize("windows", WINDOWS)
def test_per_group_equals_layerwide(windows, backend, strategy):
    layer = make_layer(windows, backend=backend, strategy=strategy)
    x = torch.randn(2, 21, 32, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 15, 32, dtype=torch.float64)
    got, ref = layer(x, memory), layerwide(layer, x, memory)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-11), (got - ref).abs().max()
    params = [x, layer.qkv_proj.weight, layer.r_proj.weight, layer.out_proj.weight,
              layer.u_bias, layer.v_bias]
    g1 = torch.autograd.grad(got.square().sum(), params)
    g2 = torch.autograd.grad(ref.square().sum(), params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), (a - b).abs().max()


@pytest.mark.parametrize("strategy", ["grouped", "merged"])
@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_sinks_and_memory_slices_equal_one_contiguous_stream(backend, strategy):
    """Memory = the last states only, sinks = the first states: the same as handing the layer
    the whole stream before the segment (sinks then sit inside the memory)."""
    windows = (2, 3, 5, 9)
    k = 3
    layer = make_layer(windows, backend=backend, strategy=strategy)
    past = torch.randn(2, 30, 32, dtype=torch.float64)
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    whole = layer(x, past, 0, past[:, :k], k)
    for keep in (8, 12, 30):  # >= the largest window - 1
        got = layer(x, past[:, 30 - keep:], 30 - keep, past[:, :k], k)
        assert torch.allclose(got, whole, rtol=1e-10, atol=1e-11), (keep, (got - whole).abs().max())
    # and the sinks matter: without them the output differs
    assert not torch.allclose(layer(x, past[:, 22:], 22), whole)


def naive_with_sinks(layer, x, past, k):
    """Per (query, key) reference over one contiguous stream ``[past; x]``: key j is visible when
    0 <= i - j < w, or j < k (a sink); a sink outside the window gets the position term of its
    head's farthest distance w - 1."""
    b, length, e = x.shape
    h, d = layer.num_heads, layer.head_dim
    kv_in = torch.cat([past, x], 1)
    mlen, klen = past.shape[1], kv_in.shape[1]
    wq, wk, wv = layer.qkv_proj.weight.split(e)
    q = (x @ wq.T).view(b, length, h, d)
    kk = (kv_in @ wk.T).view(b, -1, h, d)
    vv = (kv_in @ wv.T).view(b, -1, h, d)
    r = (sinusoid_table(klen, e).to(x.dtype) @ layer.r_proj.weight.T).view(klen, h, d)
    out = torch.zeros(b, length, h, d, dtype=x.dtype)
    for hh, w in enumerate(layer.windows):
        for i in range(length):
            p = mlen + i
            js = [j for j in range(p + 1) if p - j < w or j < k]
            scores = torch.stack([
                ((q[:, i, hh] + layer.u_bias[hh]) * kk[:, j, hh]).sum(-1)
                + ((q[:, i, hh] + layer.v_bias[hh]) * r[min(p - j, w - 1), hh]).sum(-1)
                for j in js], -1) / math.sqrt(d)
            probs = torch.softmax(scores, -1)
            out[:, i, hh] = sum(probs[:, n, None] * vv[:, j, hh] for n, j in enumerate(js))
    return layer.out_proj(out.reshape(b, length, e))


@pytest.mark.parametrize("windows", [(2, 4, 4, 6), (4, 2, 2, 5)])
@pytest.mark.parametrize("strategy", ["grouped", "merged"])
@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_sinks_get_their_heads_farthest_distance(backend, strategy, windows):
    layer = make_layer(windows, backend=backend, strategy=strategy)
    past = torch.randn(1, 12, 32, dtype=torch.float64)
    x = torch.randn(1, 9, 32, dtype=torch.float64)
    expected = naive_with_sinks(layer, x, past, 2)
    got = layer(x, past[:, 7:], 7, past[:, :2], 2)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-11), (got - expected).abs().max()


def test_work_per_group_follows_its_window(monkeypatch):
    """Each group gets keys = its window - 1 memory states + the segment, and one position score
    per distance it can see: the position work per query is the sum of the windows."""
    calls = []
    real = xl_mod.window_attention

    def spy(q, k, v, windows, **kw):
        calls.append((tuple(windows), k.shape[2], kw["pos_scores"].shape[-1]))
        return real(q, k, v, windows, **kw)

    monkeypatch.setattr(xl_mod, "window_attention", spy)
    windows = (4, 4, 8, 8, 16, 16, 32, 32)
    layer = make_layer(windows, embed=64, strategy="grouped")
    x = torch.randn(1, 40, 64, dtype=torch.float64)
    layer(x, torch.randn(1, 31, 64, dtype=torch.float64))
    assert calls == [((w, w), w - 1 + 40, w) for w in (4, 8, 16, 32)]
    assert sum(len(c[0]) * c[2] for c in calls) == sum(windows)
    calls.clear()
    make_layer(windows, embed=64, strategy="merged")(x, torch.randn(1, 31, 64, dtype=torch.float64))
    assert calls == [(windows, 31 + 40, 32)]  # one pass: the largest window's layout


@pytest.mark.parametrize("sinks", [0, 2])
@pytest.mark.parametrize("w,bq", [(5, 8), (16, 16), (7, 4)])
def test_blocked_skew_equals_gather(w, bq, sinks):
    """pos_scores with R == w go through the relative shift, other R through gather: both give
    the dense reference, forward and gradients."""
    torch.manual_seed(1)
    q = torch.randn(2, 2, 29, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 29 + w + 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    for r in (w, w + 3):
        ps = torch.randn(2, 2, 29, r, dtype=torch.float64, requires_grad=True)
        args = (q, k, v, [w, w])
        got = blocked_mod.blocked_window_attention(*args, sink_tokens=sinks, pos_scores=ps, block_size=bq)
        ref = dense_window_attention(*args, sink_tokens=sinks, pos_scores=ps)
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-11)
        g1 = torch.autograd.grad(got.square().sum(), [q, k, v, ps])
        g2 = torch.autograd.grad(ref.square().sum(), [q, k, v, ps])
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mem", [0, 6])
def test_full_head_relative_shift_equals_dense(mem):
    """Full heads with one score per key distance (R == Lk) use the relative shift."""
    torch.manual_seed(2)
    q = torch.randn(1, 2, 11, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 11 + mem, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    ps = torch.randn(1, 2, 11, 11 + mem, dtype=torch.float64, requires_grad=True)
    got = blocked_mod.blocked_window_attention(q, k, v, [None, None], sink_tokens=1, pos_scores=ps)
    ref = dense_window_attention(q, k, v, [None, None], sink_tokens=1, pos_scores=ps)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-11)
    for a, b in zip(torch.autograd.grad(got.square().sum(), [q, k, v, ps]),
                    torch.autograd.grad(ref.square().sum(), [q, k, v, ps])):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
