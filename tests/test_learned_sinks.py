"""Learned attention sinks (``--learned-sinks``, ``sink_logits``): the dense reference against an
independent per-query float64 loop, every backend against dense in outputs and gradients (the sink
logits' included), the decoding caches against the parallel forward for both models, the
checkpoint upgrade of a model trained without them, the cost (no keys added), the backends that
refuse with a named alternative, and one fairseq-train run that trains them."""

import math

import pytest
import torch

from conftest import (USER_DIR, decode_in_chunks, log_probs, random_tokens, run_cli,
                      tiny_linear_model, tiny_train_args, tiny_xl_model)
from fairseq_mswa.kernels import blocked as blocked_mod
from fairseq_mswa.kernels import flex as flex_mod
from fairseq_mswa.kernels.blocked import blocked_window_attention
from fairseq_mswa.kernels.dense import dense_window_attention
from fairseq_mswa.kernels.window_attention import available_backends, window_attention
from fairseq_mswa.modules.kv_cache import WindowKVCache
from fairseq_mswa.modules.sinks import SINK_LOGIT_INIT
from fairseq_mswa.stream import StreamState

ATOL, RTOL = 2e-5, 1e-4

# (Lq, mem, windows, sink tokens, R): small and mixed windows, a memory prefix, full heads,
# kept-first sink tokens beside the learned ones, distance scores
CASES = [
    pytest.param(37, 0, [1, 2, 4, 8], 0, None, id="mswa-small"),
    pytest.param(101, 13, [4, 4, 16, None], 0, None, id="mem-full"),
    pytest.param(150, 21, [20, 9, None, 2], 3, None, id="sink-tokens-mem"),
    pytest.param(150, 33, [5, 64, None, 30], 2, 40, id="pos-mem-sink-tokens"),
    pytest.param(120, 0, [8, 16, 32, 64], 0, 64, id="xl-like"),
]


def _inputs(lq, mem, windows, r, seed=0, batch=2, dim=8, grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = len(windows)
    q = torch.randn(batch, h, lq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, h, lq + mem, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, h, lq + mem, dim, generator=g, dtype=dtype)
    ps = None if r is None else torch.randn(batch, h, lq, r, generator=g, dtype=dtype)
    sl = torch.randn(h, generator=g, dtype=dtype) * 2  # logits of both signs
    ts = [t for t in (q, k, v, ps, sl) if t is not None]
    for t in ts:
        t.requires_grad_(grad)
    return q, k, v, ps, sl, ts


def _grads(out, ts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.autograd.grad(out, ts, torch.randn(out.shape, generator=g, dtype=out.dtype))


def _close(a, b, what, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def naive_sink_attention(q, k, v, windows, sinks, ps, sl):
    """Per (batch, head, query) loop, float64: the visible keys' scores and the sink logit in one
    softmax; the sink's probability multiplies no value."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    mem = lk - lq
    out = torch.zeros(b, h, lq, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(lq):
                p = mem + i
                keys = [j for j in range(p + 1)
                        if windows[hi] is None or p - j < windows[hi] or j < sinks]
                sc = torch.stack([q[bi, hi, i].double() @ k[bi, hi, j].double() / math.sqrt(d)
                                  + (0.0 if ps is None else
                                     ps[bi, hi, i, min(p - j, ps.shape[-1] - 1)].double())
                                  for j in keys])
                probs = torch.softmax(torch.cat([sc, sl[hi].double().view(1)]), 0)[:-1]
                out[bi, hi, i] = probs @ v[bi, hi, keys].double()
    return out


def test_dense_reference_equals_a_per_query_loop():
    q, k, v, ps, sl, _ = _inputs(23, 7, [1, 3, None, 9], 5, grad=False, dtype=torch.float64)
    ref = naive_sink_attention(q, k, v, [1, 3, None, 9], 2, ps, sl)
    got = dense_window_attention(q, k, v, [1, 3, None, 9], 2, ps, sink_logits=sl)
    _close(got, ref, "dense vs loop", atol=1e-12, rtol=1e-12)
    # a sink logit of -inf is no sink; +large sends all weight to the sink (output 0)
    plain = dense_window_attention(q, k, v, [1, 3, None, 9], 2, ps)
    none = dense_window_attention(q, k, v, [1, 3, None, 9], 2, ps,
                                  sink_logits=torch.full((4,), -float("inf"), dtype=torch.float64))
    _close(none, plain, "sink -inf", atol=1e-12, rtol=1e-12)
    swallow = dense_window_attention(q, k, v, [1, 3, None, 9], 2, ps,
                                     sink_logits=torch.full((4,), 60.0, dtype=torch.float64))
    assert swallow.abs().max() < 1e-12


@pytest.mark.parametrize("small_span", [0, 10**9], ids=["fused-sdpa", "matmul"])
@pytest.mark.parametrize("lq,mem,windows,sinks,r", CASES)
def test_blocked_equals_dense_with_learned_sinks(lq, mem, windows, sinks, r, small_span,
                                                 monkeypatch):
    monkeypatch.setattr(blocked_mod, "SMALL_SPAN", small_span)
    q, k, v, ps, sl, ts = _inputs(lq, mem, windows, r)
    ref = dense_window_attention(q, k, v, windows, sinks, ps, sink_logits=sl)
    ref_grads = _grads(ref, ts)
    for bs in (None, 4):
        for merge in (False, True):  # per window group, all heads in one call
            out = blocked_window_attention(q, k, v, windows, sinks, ps, sink_logits=sl,
                                           block_size=bs, merge_heads=merge)
            _close(out, ref, f"output (block_size={bs}, merge_heads={merge})")
            for i, (a, b) in enumerate(zip(_grads(out, ts), ref_grads)):  # q, k, v, (pos,) sinks
                _close(a, b, f"grad of input {i} (block_size={bs}, merge_heads={merge})")


@pytest.mark.parametrize("lq,mem,windows,sinks,r", CASES)
def test_dispatcher_and_flex_inference_equal_dense(lq, mem, windows, sinks, r):
    q, k, v, ps, sl, ts = _inputs(lq, mem, windows, r)
    ref = dense_window_attention(q, k, v, windows, sinks, ps, sink_logits=sl)
    ref_grads = _grads(ref, ts)
    names = available_backends(q, k, v, windows, sinks, ps, sink_logits=sl)
    assert {"dense", "blocked"} <= set(names) and "flash" not in names
    for name in names + ["auto"]:
        out = window_attention(q, k, v, windows, sink_tokens=sinks, pos_scores=ps,
                               sink_logits=sl, backend=name)
        _close(out, ref, f"{name} output")
        for a, b in zip(_grads(out, ts), ref_grads):
            _close(a, b, f"{name} grad")
    if flex_mod.IMPORT_ERROR:
        pytest.skip(flex_mod.IMPORT_ERROR)
    q, k, v, sl = (t.detach() for t in (q, k, v, sl))
    ps = None if ps is None else ps.detach()
    with torch.no_grad():  # the sink folded in through FlexAttention's log-sum-exp
        out = flex_mod.flex_window_attention(q, k, v, windows, sinks, ps, sink_logits=sl,
                                             compiled=False)
    _close(out, ref, "flex output")


def test_backends_that_cannot_serve_learned_sinks_name_one_that_can():
    q, k, v, ps, sl, _ = _inputs(16, 0, [2, 4], None)
    with pytest.raises(ValueError, match="flash.*learned sinks.*backend='"):
        window_attention(q, k, v, [2, 4], sink_logits=sl, backend="flash")
    with pytest.raises(ValueError, match="'flex' cannot serve.*backward on CPU.*Use backend="):
        window_attention(q, k, v, [2, 4], sink_logits=sl, backend="flex")
    with pytest.raises(ValueError, match=r"sink_logits must be \(heads,\) = \(2,\)"):
        window_attention(q, k, v, [2, 4], sink_logits=sl[:1])


WINDOWS = [4, 1, 4, None, 7]  # non-consecutive groups and a full head
CHUNKS = [1, 5, 1, 1, 13, 1, 2, 9, 1, 1, 6]


@pytest.mark.parametrize("sinks", [0, 2])
def test_cache_with_learned_sinks_equals_dense(sinks):
    q, k, v, ps, sl, _ = _inputs(41, 0, WINDOWS, 6, grad=False, dtype=torch.float64)
    ref = dense_window_attention(q, k, v, WINDOWS, sinks, ps, sink_logits=sl)
    for chunks in (CHUNKS, [1] * 41, [41]):
        cache, outs, t = WindowKVCache(WINDOWS, sink_tokens=sinks), [], 0
        for c in chunks:
            outs.append(cache.attend(q[:, :, t:t + c], k[:, :, t:t + c], v[:, :, t:t + c],
                                     pos_scores=ps[:, :, t:t + c], sink_logits=sl))
            t += c
        _close(torch.cat(outs, 2), ref, f"cache, chunks {chunks[:3]}...", atol=1e-10, rtol=1e-10)
    # a learned sink adds no key: the cache holds the same bytes
    plain = WindowKVCache(WINDOWS, sink_tokens=sinks)
    plain.attend(q, k, v, pos_scores=ps)
    assert plain.nbytes() == cache.nbytes()


def _randomise_sinks(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sink_logits"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 2)


def _merged(model):
    """Every layer's window groups in one pass (the layout ``auto`` may pick)."""
    for layer in model.decoder.layers:
        layer.attn.strategy = "merged"
    return model


MODELS = {
    "xl-mswa": lambda: tiny_xl_model(attn_pattern="mswa", base_window=16, attn_backend="dense",
                                     learned_sinks=True, sink_tokens=1).double(),
    "xl-mswa-merged": lambda: _merged(tiny_xl_model(attn_pattern="mswa", base_window=16,
                                                    learned_sinks=True).double()),
    "linear-mswa": lambda: tiny_linear_model(base_window=16, learned_sinks=True).double(),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_decode_equal_their_parallel_forward(name):
    m = MODELS[name]()
    _randomise_sinks(m)
    sinks = [p for n, p in m.named_parameters() if n.endswith("sink_logits")]
    assert sinks and all(p.shape == (4,) for p in sinks)  # every windowed layer, one per head
    n = 30 if name.startswith("xl") else 60
    tok = random_tokens(2, n, len(m.decoder.dictionary))
    with torch.no_grad():
        full = log_probs(m, m(tok)[0])
        for chunks in ([1] * n, [7, 1, 1, 13, 1, n - 23]):
            steps, _ = decode_in_chunks(m, tok, chunks)
            _close(steps, full, f"decode {chunks[:3]}...", atol=1e-10, rtol=1e-10)
        if name.startswith("xl"):  # the stream path with memory (segments of 10)
            stream = torch.cat([log_probs(m, m(tok[:, s:s + 10], stream=StreamState("t", s))[0])
                                for s in range(0, n, 10)], 1)
            _close(stream, full, "stream", atol=1e-10, rtol=1e-10)


def test_sinks_change_the_model_and_minus_inf_sinks_are_none():
    plain = tiny_xl_model(attn_pattern="mswa", base_window=16).double()
    sinky = tiny_xl_model(attn_pattern="mswa", base_window=16, learned_sinks=True).double()
    sinky.load_state_dict(dict(plain.state_dict()))  # the same weights, sink logits at 0
    tok = random_tokens(2, 20, 27)
    with torch.no_grad():
        base = plain(tok)[0]
        assert (sinky(tok)[0] - base).abs().max() > 1e-3  # logits at 0: one more "key"
        for name, p in sinky.named_parameters():
            if name.endswith("sink_logits"):
                p.fill_(-float("inf"))
        _close(sinky(tok)[0], base, "-inf sinks", atol=1e-10, rtol=1e-10)


def test_checkpoint_without_sinks_loads_into_a_model_with_them():
    """fairseq loads strictly: the upgrade fills every missing sink logit with its initial value."""
    plain = tiny_xl_model(attn_pattern="swa", base_window=8)
    sinky = tiny_xl_model(attn_pattern="swa", base_window=8, learned_sinks=True)
    _randomise_sinks(sinky)
    sinky.load_state_dict(dict(plain.state_dict()), strict=True)  # the model's own load
    for name, p in sinky.named_parameters():
        if name.endswith("sink_logits"):
            assert torch.all(p == SINK_LOGIT_INIT)
        else:
            assert torch.equal(p, dict(plain.named_parameters())[name])


def test_flash_is_refused_at_build_naming_a_backend_that_can():
    from fairseq_mswa.schedule import ScheduleError

    with pytest.raises(ScheduleError, match="flash-attn 2 has no learned sinks: use --attn-backend "
                                            "blocked"):
        tiny_linear_model(learned_sinks=True, attn_backend="flash")


def test_fairseq_train_trains_the_sink_logits(tiny_corpus, tmp_path):
    save = tmp_path / "ckpt"
    run_cli("train", *tiny_train_args(tiny_corpus, save, "--learned-sinks", "--base-window", "16",
                                      updates=6), timeout=240)
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    logits = [v for k, v in state["model"].items() if k.endswith("sink_logits")]
    assert len(logits) == 4  # tiny: 4 windowed layers
    assert any((t != SINK_LOGIT_INIT).any() for t in logits)  # they received gradients
    assert state["cfg"]["model"]["learned_sinks"] is True
    out = run_cli("eval_lm", tiny_corpus, "--user-dir", USER_DIR, "--task", "mswa_lm", "--path",
                  save / "checkpoint_last.pt", "--cpu", "--tokens-per-sample", "24",
                  "--batch-size", "4", timeout=240)
    assert "Loss (base 2)" in out
