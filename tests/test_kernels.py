"""Every attention backend equals the dense reference in outputs and gradients (fp32).

Backends that cannot run here (flash without CUDA, flex backward on CPU) are checked for their
clear errors instead, and skipped with the reason where a check needs hardware we lack.
"""

import importlib

import pytest
import torch

from fairseq_mswa.kernels import blocked as blocked_mod
from fairseq_mswa.kernels import dense as dense_mod
from fairseq_mswa.kernels import flex as flex_mod
from fairseq_mswa.kernels.blocked import blocked_window_attention
from fairseq_mswa.kernels.dense import dense_window_attention
from fairseq_mswa.kernels.window_attention import (
    available_backends,
    select_backend,
    unsupported_reason,
    window_attention,
)

# the module (the package exports the function of the same name)
dispatch_mod = importlib.import_module("fairseq_mswa.kernels.window_attention")

ATOL, RTOL = 2e-5, 1e-4

# (Lq, mem, windows, sinks, R): w=1, small w, w > Lk, mem 0 / > 0, odd lengths, sinks, mixed
# windows per head, full (None) heads, distance scores (R None = no pos_scores).
CASES = [
    pytest.param(37, 0, [1, 1], 0, None, id="w1"),
    pytest.param(37, 0, [3, 5, 3, 8], 0, None, id="small-mixed"),
    pytest.param(101, 0, [200, 500], 0, None, id="w-beyond-keys"),
    pytest.param(101, 13, [4, 4, 16, 7], 0, None, id="mem"),
    pytest.param(101, 0, [7, None, 7, 2], 0, None, id="full-heads"),
    pytest.param(101, 19, [None, 9], 0, None, id="full-heads-mem"),
    pytest.param(150, 0, [20, 9, 9, 2], 3, None, id="sinks"),
    pytest.param(150, 21, [20, 9, None, 2], 5, None, id="sinks-mem-full"),
    pytest.param(101, 0, [5, 12, None, 30], 0, 16, id="pos"),
    pytest.param(150, 33, [5, 64, None, 30], 2, 40, id="pos-mem-sinks"),
    pytest.param(70, 5, [2, 9, 9, 2], 1, 300, id="pos-R-beyond-keys"),
    pytest.param(300, 0, [40, 100, 17, 3], 0, 7, id="pos-R-clamped"),
]


def _inputs(lq, mem, windows, r, seed=0, batch=2, dim=8, grad=True):
    g = torch.Generator().manual_seed(seed)
    h = len(windows)
    q = torch.randn(batch, h, lq, dim, generator=g)
    k = torch.randn(batch, h, lq + mem, dim, generator=g)
    v = torch.randn(batch, h, lq + mem, dim, generator=g)
    ps = None if r is None else torch.randn(batch, h, lq, r, generator=g)
    ts = [t for t in (q, k, v, ps) if t is not None]
    for t in ts:
        t.requires_grad_(grad)
    return q, k, v, ps, ts


def _grads(out, ts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.autograd.grad(out, ts, torch.randn(out.shape, generator=g))


def _assert_close(a, b, what):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("merge_heads", [False, True], ids=["per-group", "merged-heads"])
@pytest.mark.parametrize("small_span", [0, 10**9], ids=["fused-sdpa", "matmul"])
@pytest.mark.parametrize("lq,mem,windows,sinks,r", CASES)
def test_blocked_equals_dense(lq, mem, windows, sinks, r, small_span, merge_heads, monkeypatch):
    monkeypatch.setattr(blocked_mod, "SMALL_SPAN", small_span)  # both attention paths
    q, k, v, ps, ts = _inputs(lq, mem, windows, r)
    ref = dense_window_attention(q, k, v, windows, sinks, ps)
    ref_grads = _grads(ref, ts)
    # default blocks, blocks smaller than the windows (spans over several blocks), blocks of 1
    for bs in (None, 4, 1):
        out = blocked_window_attention(q, k, v, windows, sinks, ps, block_size=bs,
                                       merge_heads=merge_heads)
        _assert_close(out, ref, f"output (block_size={bs})")
        for name, a, b in zip("qkvp", _grads(out, ts), ref_grads):
            _assert_close(a, b, f"grad {name} (block_size={bs})")


@pytest.mark.parametrize("lq,mem,windows,sinks,r", CASES)
def test_dispatcher_backends_equal_dense(lq, mem, windows, sinks, r):
    """Every backend available for these (grad-requiring) inputs matches dense."""
    q, k, v, ps, ts = _inputs(lq, mem, windows, r)
    ref = dense_window_attention(q, k, v, windows, sinks, ps)
    ref_grads = _grads(ref, ts)
    names = available_backends(q, k, v, windows, sinks, ps)
    assert {"dense", "blocked"} <= set(names)
    for name in names + ["auto"]:
        out = window_attention(q, k, v, windows, sink_tokens=sinks, pos_scores=ps, backend=name)
        _assert_close(out, ref, f"{name} output")
        for tname, a, b in zip("qkvp", _grads(out, ts), ref_grads):
            _assert_close(a, b, f"{name} grad {tname}")


@pytest.mark.parametrize("lq,mem,windows,sinks,r", CASES)
def test_flex_eager_inference_equals_dense(lq, mem, windows, sinks, r):
    """FlexAttention's mask_mod / score_mod logic, unfused eager path (CPU inference)."""
    if flex_mod.IMPORT_ERROR:
        pytest.skip(flex_mod.IMPORT_ERROR)
    q, k, v, ps, _ = _inputs(lq, mem, windows, r, grad=False)
    ref = dense_window_attention(q, k, v, windows, sinks, ps)
    with torch.no_grad():
        out = flex_mod.flex_window_attention(q, k, v, windows, sinks, ps, compiled=False)
    _assert_close(out, ref, "flex output")


def test_flex_compiled_inference_equals_dense():
    """The fused (torch.compile) FlexAttention kernel on CPU, one mixed case."""
    if flex_mod.IMPORT_ERROR:
        pytest.skip(flex_mod.IMPORT_ERROR)
    windows, sinks = [3, 16, None, 40], 2
    q, k, v, ps, _ = _inputs(96, 17, windows, 24, grad=False)
    ref = dense_window_attention(q, k, v, windows, sinks, ps)
    try:
        with torch.no_grad():
            out = window_attention(q, k, v, windows, sink_tokens=sinks, pos_scores=ps, backend="flex")
    except torch._dynamo.exc.BackendCompilerFailed as e:
        # Inductor wraps "no C++ compiler here" (InvalidCxxCompiler) and a failing compiler
        # (CppCompileError) in InductorError, a BackendCompilerFailed; anything else is a bug
        if not any(name in str(e) for name in ("InvalidCxxCompiler", "CppCompileError")):
            raise
        pytest.skip(f"no working C++ toolchain for torch.compile here: {str(e)[:200]}")
    _assert_close(out, ref, "compiled flex output")


def test_flex_block_mask_cache_is_bounded_lru():
    if flex_mod.IMPORT_ERROR:
        pytest.skip(flex_mod.IMPORT_ERROR)
    cache = flex_mod.BlockMaskCache(maxsize=2)
    built = []
    for key in ["a", "b", "a", "c", "b"]:
        cache.get(key, lambda key=key: built.append(key) or key.upper())
    # 'a' was reused while cached; 'b' was evicted by 'c' (LRU) and rebuilt
    assert built == ["a", "b", "c", "b"] and len(cache) == 2
    flex_mod.clear_block_mask_cache()
    m1 = flex_mod.block_mask_for(40, 50, [3, None], 1, "cpu")
    assert flex_mod.block_mask_for(40, 50, [3, None], 1, "cpu") is m1
    assert flex_mod.block_mask_for(40, 50, [4, None], 1, "cpu") is not m1


def test_flex_backward_on_cpu_is_a_clear_error():
    q, k, v, _, _ = _inputs(200, 0, [4, 8], None)
    with pytest.raises(ValueError, match="no backward on CPU.*backend='blocked'"):
        window_attention(q, k, v, [4, 8], backend="flex")
    assert "flex" not in available_backends(q, k, v, [4, 8])


def test_flex_dropout_is_a_clear_error():
    q, k, v, _, _ = _inputs(33, 0, [4, 8], None, grad=False)
    with pytest.raises(ValueError, match="no dropout"):
        window_attention(q, k, v, [4, 8], dropout_p=0.1, backend="flex")


def test_flash_without_gpu_is_a_clear_error():
    q, k, v, _, _ = _inputs(200, 0, [4, 8], None)
    with pytest.raises(ValueError, match="flash.*CUDA.*Use backend='blocked'"):
        window_attention(q, k, v, [4, 8], backend="flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
@pytest.mark.parametrize("backend", ["flash", "flex", "blocked"])
def test_gpu_backends_equal_dense(backend):
    windows = [1, 16, None, 100]
    q, k, v, _, _ = _inputs(257, 31, windows, None, grad=False)
    q, k, v = (t.cuda().to(torch.bfloat16 if backend == "flash" else torch.float32) for t in (q, k, v))
    reason = unsupported_reason(backend, q, k, v, windows)
    if reason is not None:
        pytest.skip(reason)
    ts = [t.requires_grad_() for t in (q, k, v)]
    ref = dense_window_attention(*(t.float() for t in ts), windows)
    out = window_attention(q, k, v, windows, backend=backend)
    tol = dict(atol=2e-2, rtol=2e-2) if backend == "flash" else dict(atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.float(), ref, **tol)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out.float(), ts, g), torch.autograd.grad(ref, ts, g)):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_bad_inputs_are_clear_errors():
    q, k, v, _, _ = _inputs(20, 0, [4, 8], None)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'.*blocked"):
        window_attention(q, k, v, [4, 8], backend="fast")
    with pytest.raises(ValueError, match="one window per head"):
        window_attention(q, k, v, [4], backend="blocked")
    with pytest.raises(ValueError, match="windows must be >= 1"):
        window_attention(q, k, v, [0, 8], backend="blocked")
    with pytest.raises(ValueError, match="at least as long as queries"):
        window_attention(q, k[:, :, :10], v[:, :, :10], [4, 8])
    with pytest.raises(ValueError, match="pos_scores must be"):
        window_attention(q, k, v, [4, 8], pos_scores=torch.zeros(2, 2, 19, 5))
    with pytest.raises(ValueError, match="dropout_p"):
        window_attention(q, k, v, [4, 8], dropout_p=1.0)


def test_auto_picks_blocked_for_training_on_cpu_and_dense_when_tiny():
    q, k, v, _, _ = _inputs(300, 0, [4, 8], None)
    assert select_backend(q, k, v, [4, 8]) == "blocked"
    q, k, v, _, _ = _inputs(16, 0, [4, 8], None)
    assert select_backend(q, k, v, [4, 8]) == "dense"


def test_blocked_memory_is_linear_in_window_not_length(monkeypatch):
    """The windowed path never builds an (Lq, Lk) tensor: record the largest tensor each
    attention call (fused SDPA or the small-span matmul path) receives."""
    seen = []

    def spy(real):
        def wrapped(q, k, v, attn_mask=None, **kw):
            seen.append(max(t.numel() for t in (q, k, v, attn_mask) if t is not None))
            return real(q, k, v, attn_mask=attn_mask, **kw)

        return wrapped

    monkeypatch.setattr(blocked_mod.F, "scaled_dot_product_attention",
                        spy(blocked_mod.F.scaled_dot_product_attention))
    monkeypatch.setattr(blocked_mod, "_attend_small", spy(blocked_mod._attend_small))
    lq, windows = 2048, [16, 16, 64, 64]
    q, k, v, ps, _ = _inputs(lq, 0, windows, 32, batch=1, grad=False)
    blocked_window_attention(q, k, v, windows, 2, ps)
    assert len(seen) == 2  # one attention call per window group
    # per group of 2 heads: at most ~ (block + window + sinks) keys per query, far below Lq * Lk
    assert max(seen) <= 2 * lq * (128 + 64 + 2) * 2
    assert max(seen) < 2 * lq * lq // 4


def test_dropout_is_applied_and_unbiased():
    windows = [3, None]
    q, k, v, _, _ = _inputs(40, 0, windows, None, batch=1, grad=False)
    ref = dense_window_attention(q, k, v, windows)
    torch.manual_seed(0)
    for backend in ("blocked", "dense"):
        outs = torch.stack(
            [window_attention(q, k, v, windows, dropout_p=0.5, backend=backend) for _ in range(200)]
        )
        assert not torch.allclose(outs[0], ref), f"{backend}: dropout had no effect"
        # E[dropout(P) V] = P V: the mean of 200 draws is close to the reference
        err = (outs.mean(0) - ref).abs().mean() / ref.abs().mean()
        assert err < 0.1, f"{backend}: dropout biased the output (relative error {err:.3f})"


def test_scale_is_honoured():
    windows = [5, None]
    q, k, v, ps, _ = _inputs(64, 7, windows, 9, grad=False)
    for backend in ("blocked", "auto"):
        out = window_attention(q, k, v, windows, pos_scores=ps, scale=0.3, backend=backend)
        _assert_close(out, dense_window_attention(q, k, v, windows, 0, ps, scale=0.3), backend)


def test_inputs_are_checked_once_per_call(monkeypatch):
    """window_attention checks the inputs once and calls the backends' unchecked forms; the
    public backend functions still check when called directly."""
    calls = []
    real = dispatch_mod.check_inputs
    monkeypatch.setattr(dispatch_mod, "check_inputs", lambda *a: calls.append(1) or real(*a))

    def recheck(*a):
        raise AssertionError("a backend re-checked inputs the dispatcher had checked")

    for mod in (dense_mod, blocked_mod, flex_mod):
        monkeypatch.setattr(mod, "check_inputs", recheck)
    q, k, v, _, _ = _inputs(40, 3, [4, None], None, grad=False)
    backends = ["dense", "blocked"] + ([] if flex_mod.IMPORT_ERROR else ["flex"])
    for backend in backends:
        with torch.no_grad():
            window_attention(q, k, v, [4, None], backend=backend)
    assert len(calls) == len(backends)
    monkeypatch.undo()
    for fn in (dense_window_attention, blocked_window_attention):
        with pytest.raises(ValueError, match="one window per head"):
            fn(q, k, v, [4])
    with pytest.raises(ValueError, match="dropout_p"):
        dense_window_attention(q, k, v, [4, None], dropout_p=1.5)


@pytest.mark.parametrize("r", [3, 12, 20])  # R below, equal to and above Lk
def test_distance_bias_is_the_gather_by_copies(r):
    """dense.distance_bias (copies) == dense.distance_scores (gather) at every causal pair, in
    values and in the gradient it passes to pos_scores."""
    from fairseq_mswa.kernels.dense import distance_bias, distance_scores

    lq, lk = 7, 12  # a memory prefix of 5 keys
    causal = (torch.arange(lk - lq, lk)[:, None] >= torch.arange(lk)[None, :])
    ps = torch.randn(2, 3, lq, r, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, lq, lk, dtype=torch.float64) * causal
    a, b = distance_bias(ps, lk), distance_scores(ps, lk)
    torch.testing.assert_close(a[..., causal], b[..., causal], rtol=0, atol=0)
    ga, = torch.autograd.grad((a * w).sum(), ps)
    gb, = torch.autograd.grad((b * w).sum(), ps)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("windows,sinks,r", [([None, None], 0, 120), ([None, 40], 2, 30),
                                             ([None, None], 0, None)])
def test_full_heads_in_query_blocks_equal_dense(windows, sinks, r, monkeypatch):
    """Full heads with memory run in FULL_BLOCK query blocks (the last one shorter), each over
    the keys up to its last query: the dense result, outputs and gradients."""
    monkeypatch.setattr(blocked_mod, "FULL_BLOCK", 16)
    q, k, v, ps, ts = _inputs(61, 23, windows, r)
    ref = dense_window_attention(q, k, v, windows, sinks, ps)
    ref_grads = _grads(ref, ts)
    out = blocked_window_attention(q, k, v, windows, sinks, ps, block_size=64)
    _assert_close(out, ref, "output")
    for name, a, b in zip("qkvp", _grads(out, ts), ref_grads):
        _assert_close(a, b, f"grad {name}")
