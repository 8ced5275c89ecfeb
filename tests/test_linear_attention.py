"""Taylor linear attention kernels, RoPE, and the linear / local attention layers (fp32 / fp64, CPU)."""

import math

import pytest
import torch

from fairseq_mswa.kernels.dense import dense_window_attention
from fairseq_mswa.kernels.linear_attention import (
    empty_state,
    fla_parallel_based,
    fla_parallel_based_available,
    linear_attention_chunked,
    linear_attention_quadratic,
    linear_attention_recurrent,
    taylor_feature_map,
    taylor_kernel,
)
from fairseq_mswa.modules.feedforward import SwiGLU, swiglu_hidden_dim
from fairseq_mswa.modules.linear_layer import TaylorLinearAttention
from fairseq_mswa.modules.local_attention import LocalAttention
from fairseq_mswa.modules.norms import RMSNorm
from fairseq_mswa.modules.rotary import RotaryEmbedding, apply_rotary, rotary_cos_sin
from fairseq_mswa.cost import linear_attention_layer_cost, taylor_feature_count


def _qkv(b=2, h=3, length=37, d=16, dv=8, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, length, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, length, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, length, dv, generator=g, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


# --- feature map ------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [4, 16])
def test_feature_map_gives_taylor_kernel(d):
    q, k, _ = _qkv(length=11, d=d, dtype=torch.float64)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    expected = 1 + s + s * s / 2
    for compact in (True, False):
        fq, fk = taylor_feature_map(q, compact), taylor_feature_map(k, compact)
        assert fq.shape[-1] == taylor_feature_count(d, compact)
        torch.testing.assert_close(fq @ fk.transpose(-1, -2), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(taylor_kernel(q, k), expected)


def test_feature_counts_153_and_273_and_layer_cost():
    x = torch.randn(5, 16, dtype=torch.float64)
    assert taylor_feature_map(x, compact=True).shape == (5, 153)
    assert taylor_feature_map(x, compact=False).shape == (5, 273)
    # compact and full maps give the same kernel
    y = torch.randn(7, 16, dtype=torch.float64)
    kc = taylor_feature_map(x) @ taylor_feature_map(y).T
    kf = taylor_feature_map(x, False) @ taylor_feature_map(y, False).T
    assert (kc - kf).abs().max() < 1e-12
    # Based's explicit form: [1, x / d^(1/4), flatten(x outer x) / (sqrt(2) sqrt(d))]
    based = torch.cat(
        [torch.ones(5, 1, dtype=x.dtype), x / 16 ** 0.25,
         (x[:, :, None] * x[:, None, :]).flatten(1) / (2 ** 0.5 * 4)], dim=-1
    )
    torch.testing.assert_close(taylor_feature_map(x, compact=False), based)
    assert linear_attention_layer_cost(8, 64, 16) == pytest.approx(8 * 153 * 65 / 128)


def test_kernel_is_at_least_half():
    q, k, _ = _qkv(length=64, d=16, dtype=torch.float64)
    a = taylor_kernel(q * 10, k * 10)  # large scores of both signs
    assert a.min() >= 0.5 - 1e-12


# --- three forms agree ------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 5, 16, 37, 64, 100])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_chunked_equals_quadratic_forward_fp64(length, chunk_size):
    q, k, v = _qkv(length=length, dtype=torch.float64)
    ref = linear_attention_quadratic(q, k, v)
    out, state = linear_attention_chunked(q, k, v, chunk_size=chunk_size)
    assert state is None
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length,chunk_size", [(37, 8), (64, 16), (50, 64), (1, 4)])
def test_chunked_quadratic_recurrent_outputs_and_grads_fp32(length, chunk_size):
    q, k, v = _qkv(length=length, d=16, dv=12, requires_grad=True)
    grad_out = torch.randn(2, 3, length, 12, generator=torch.Generator().manual_seed(5))

    def run(fn):
        for x in (q, k, v):
            x.grad = None
        out = fn()
        (out * grad_out).sum().backward()
        return out.detach(), [x.grad.clone() for x in (q, k, v)]

    ref, ref_g = run(lambda: linear_attention_quadratic(q, k, v))
    chk, chk_g = run(lambda: linear_attention_chunked(q, k, v, chunk_size=chunk_size)[0])
    rec, rec_g = run(lambda: linear_attention_recurrent(q, k, v)[0])
    for out, grads in ((chk, chk_g), (rec, rec_g)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for g, g_ref in zip(grads, ref_g):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_gradcheck_chunked_fp64():
    q, k, v = _qkv(b=1, h=1, length=9, d=4, dv=3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: linear_attention_chunked(q, k, v, chunk_size=4)[0], (q, k, v)
    )


def test_states_carry_across_calls():
    """Chunked with an initial state == one chunked call == the recurrent state, in pieces."""
    q, k, v = _qkv(length=45, dtype=torch.float64)
    full, (s_full, z_full) = linear_attention_chunked(q, k, v, 8, output_final_state=True)
    a, state = linear_attention_chunked(q[:, :, :20], k[:, :, :20], v[:, :, :20], 8,
                                        output_final_state=True)
    b, (s_b, z_b) = linear_attention_chunked(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], 16,
                                             initial_state=state, output_final_state=True)
    torch.testing.assert_close(torch.cat([a, b], 2), full)
    torch.testing.assert_close(s_b, s_full)
    torch.testing.assert_close(z_b, z_full)
    # the recurrent form token by token, from a zero state
    state = empty_state(2, 3, 16, 8, dtype=torch.float64)
    outs = []
    for t in range(45):
        o, state = linear_attention_recurrent(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), full)
    torch.testing.assert_close(state[0], s_full)
    torch.testing.assert_close(state[1], z_full)
    # the state has a fixed size: features x head_dim plus the normaliser
    assert state[0].shape == (2, 3, 153, 8) and state[1].shape == (2, 3, 153)


def test_padding_keys_do_not_leak_into_final_state():
    """A length that is not a multiple of the chunk: padded keys stay out of S and z."""
    q, k, v = _qkv(length=13, dtype=torch.float64)
    _, (s, z) = linear_attention_chunked(q, k, v, chunk_size=8, output_final_state=True)
    phi_k = taylor_feature_map(k)
    torch.testing.assert_close(z, phi_k.sum(2))
    torch.testing.assert_close(s, phi_k.transpose(-1, -2) @ v)


def test_chunked_memory_is_linear_in_length():
    """Saved activations of the chunked form grow linearly with L (the quadratic one with L^2)."""
    def saved_numel(fn, length):
        q, k, v = _qkv(b=1, h=1, length=length, d=16, dv=16, requires_grad=True)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(q, k, v)
        return total

    chunked = lambda q, k, v: linear_attention_chunked(q, k, v, chunk_size=64)[0]  # noqa: E731
    c1, c4 = saved_numel(chunked, 512), saved_numel(chunked, 2048)
    q1, q4 = saved_numel(linear_attention_quadratic, 512), saved_numel(linear_attention_quadratic, 2048)
    assert c4 / c1 < 4.5, (c1, c4)
    assert q4 / q1 > 10, (q1, q4)


def test_half_precision_inputs_keep_dtype_and_match():
    q, k, v = _qkv(length=40)
    out, _ = linear_attention_chunked(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk_size=16)
    assert out.dtype == torch.bfloat16
    ref = linear_attention_quadratic(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(length=8)
    with pytest.raises(ValueError, match="same shape"):
        linear_attention_chunked(q, k[..., :8], v)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_chunked(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention_chunked(q, k, v, initial_state=empty_state(2, 3, 16, 8, compact=False))
    with pytest.raises(RuntimeError, match="CUDA"):
        fla_parallel_based(q, k, v)
    assert not fla_parallel_based_available(q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's Based kernel needs CUDA")
def test_fla_based_matches_chunked_on_cuda():
    q, k, v = (x.cuda() for x in _qkv(length=128, d=16, dv=64))
    if not fla_parallel_based_available(q):
        pytest.skip("fla-core not installed")
    torch.testing.assert_close(
        fla_parallel_based(q, k, v), linear_attention_chunked(q, k, v)[0], rtol=1e-3, atol=1e-3
    )


# --- RoPE -------------------------------------------------------------------------------------

def test_rope_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(pq, pk):
        cq, sq = rotary_cos_sin(torch.tensor([pq]), 16)
        ck, sk = rotary_cos_sin(torch.tensor([pk]), 16)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    assert torch.allclose(score(7, 3), score(1007, 1003), atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-3)
    # rotation preserves norms
    c, s = rotary_cos_sin(torch.arange(50), 16)
    x = torch.randn(50, 16)
    torch.testing.assert_close(apply_rotary(x, c, s).norm(dim=-1), x.norm(dim=-1))


def test_rope_before_feature_map_is_shift_invariant():
    """Shifting every position by a constant leaves linear attention outputs unchanged."""
    q, k, v = _qkv(length=40, d=16, dtype=torch.float64)
    rope = RotaryEmbedding(16)
    out0, _ = linear_attention_chunked(*rope(q, k, offset=0), v, chunk_size=16)
    out1, _ = linear_attention_chunked(*rope(q, k, offset=913), v, chunk_size=16)
    torch.testing.assert_close(out0, out1, rtol=1e-9, atol=1e-9)
    # and RoPE matters: the same tokens without rotation give another output
    assert (linear_attention_chunked(q, k, v, chunk_size=16)[0] - out0).abs().max() > 1e-3


def test_rotary_half_precision_is_rotated_in_float32():
    q, k, _ = _qkv(length=300, d=16)
    rope = RotaryEmbedding(16)
    qb, kb = rope(q.bfloat16(), k.bfloat16(), offset=1700)
    q32, k32 = rope(q.bfloat16().float(), k.bfloat16().float(), offset=1700)
    assert qb.dtype == kb.dtype == torch.bfloat16
    torch.testing.assert_close(qb, q32.bfloat16())
    torch.testing.assert_close(kb, k32.bfloat16())


def test_rotary_rejects_odd_dim():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15)


# --- layers -----------------------------------------------------------------------------------

def test_linear_layer_shift_invariant_and_causal():
    torch.manual_seed(0)
    layer = TaylorLinearAttention(32, 4, feature_dim=8, chunk_size=8).double()
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    out, none = layer(x)
    assert none is None
    torch.testing.assert_close(layer(x, offset=500)[0], out, rtol=1e-9, atol=1e-9)
    x2 = x.clone()
    x2[:, 20:] += 1.0
    torch.testing.assert_close(layer(x2)[0][:, :20], out[:, :20])
    # decoding token by token with the recurrent state == the parallel form; a chunk then tokens
    cache, outs = layer.init_cache(), []
    for t in range(30):
        o, cache = layer(x[:, t:t + 1], cache=cache, offset=t)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), out)
    assert cache.state[0].shape == (2, 4, taylor_feature_count(8), 8) and cache.length == 30
    assert cache.nbytes() == 2 * 4 * taylor_feature_count(8) * (8 + 1) * 8
    cache = layer.init_cache()
    first, _ = layer(x[:, :17], cache=cache)
    rest = [layer(x[:, t:t + 1], cache=cache, offset=t)[0] for t in range(17, 30)]
    torch.testing.assert_close(torch.cat([first] + rest, 1), out)
    with pytest.raises(ValueError, match="offset"):
        layer(x[:, :1], cache=cache, offset=3)


def test_local_layer_matches_dense_reference_and_is_shift_invariant():
    torch.manual_seed(0)
    windows = [1, 3, 8, None]
    layer = LocalAttention(32, 4, windows, backend="dense").double()
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    out = layer(x)[0]
    torch.testing.assert_close(layer(x, offset=321)[0], out, rtol=1e-9, atol=1e-9)
    # by hand: projections, RoPE, dense reference, output projection
    b, n = 2, 20
    heads = lambda t: t.view(b, n, 4, 8).transpose(1, 2)  # noqa: E731
    q, k = layer.rotary(heads(layer.q_proj(x)), heads(layer.k_proj(x)))
    ref = dense_window_attention(q, k, heads(layer.v_proj(x)), windows)
    torch.testing.assert_close(out, layer.out_proj(ref.transpose(1, 2).reshape(b, n, 32)))


@pytest.mark.parametrize("backend", ["blocked", "auto"])
def test_local_layer_backends_match_dense(backend):
    torch.manual_seed(0)
    layer = LocalAttention(32, 4, [2, 4, 16, None], sink_tokens=2, backend="dense")
    x = torch.randn(2, 150, 32, requires_grad=True)
    ref = layer(x)[0]
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    layer.backend = backend
    out = layer(x)[0]
    (g,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_local_layer_cache_is_bounded_and_exact():
    torch.manual_seed(0)
    layer = LocalAttention(16, 2, [2, 5], sink_tokens=1, backend="dense").double()
    x = torch.randn(1, 25, 16, dtype=torch.float64)
    full = layer(x)[0]
    cache = layer.init_cache()
    outs = []
    for t in range(25):
        o, cache = layer(x[:, t:t + 1], cache=cache, offset=t)
        outs.append(o)
        # per head its window plus the sink: (2 + 1) + (5 + 1) keys and values of 8 float64
        assert cache.nbytes() == (3 + 6) * 2 * 8 * 8
    torch.testing.assert_close(torch.cat(outs, 1), full)


def test_norm_and_swiglu():
    x = torch.randn(3, 5, 16) * 7
    y = RMSNorm(16)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), rtol=1e-4, atol=1e-4)
    assert swiglu_hidden_dim(512) == 1536
    ff = SwiGLU(16, 24)
    assert ff(x).shape == x.shape
    h = torch.nn.functional.silu(ff.w1(x)) * ff.w3(x)
    torch.testing.assert_close(ff(x), ff.w2(h))
