"""The per-head rolling K/V cache (modules/kv_cache.py) against the dense reference kernel: outputs
(decode steps and prompt chunks, sinks, full heads, distance scores, beam reorder, full-attention
decode) and the bytes it holds (the sum of the windows, the paper's 0.879 of SWA)."""

import pytest
import torch

from fairseq_mswa.kernels.dense import dense_window_attention, visibility_mask
from fairseq_mswa.modules.kv_cache import RecurrentStateCache, WindowKVCache, window_groups
from fairseq_mswa.schedule import build_schedule

# non-contiguous groups (4 at heads 0 and 2), a full head, windows below and above the chunks
WINDOWS = [4, 1, 4, None, 7]
CHUNKS = [1, 5, 1, 1, 13, 1, 2, 9, 1, 1, 6]  # 41 tokens: every ring rolled over several times


def _qkv(b=2, h=5, n=41, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def _run_chunks(cache, q, k, v, chunks, pos_scores=None):
    outs, t = [], 0
    for c in chunks:
        ps = None if pos_scores is None else pos_scores[:, :, t:t + c]
        outs.append(cache.attend(q[:, :, t:t + c], k[:, :, t:t + c], v[:, :, t:t + c], pos_scores=ps))
        t += c
    return torch.cat(outs, dim=2)


def test_window_groups_keep_first_appearance_order():
    assert window_groups([4, 1, 4, None, 7]) == [(4, [0, 2]), (1, [1]), (None, [3]), (7, [4])]


@pytest.mark.parametrize("sinks", [0, 2])
@pytest.mark.parametrize("chunks", [CHUNKS, [1] * 41, [41]], ids=["mixed", "tokens", "prompt"])
def test_cache_matches_dense_reference(sinks, chunks):
    q, k, v = _qkv()
    ref = dense_window_attention(q, k, v, WINDOWS, sink_tokens=sinks)
    cache = WindowKVCache(WINDOWS, sink_tokens=sinks)
    out = _run_chunks(cache, q, k, v, chunks)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert cache.length == 41


def test_cache_distance_scores_match_dense_reference():
    """The Transformer-XL use: position-free keys, the position term by distance (clamped)."""
    q, k, v = _qkv()
    pos = torch.randn(2, 5, 41, 6, dtype=torch.float64)  # R = 6 < the full head's distances
    ref = dense_window_attention(q, k, v, WINDOWS, sink_tokens=1, pos_scores=pos)
    out = _run_chunks(WindowKVCache(WINDOWS, sink_tokens=1), q, k, v, CHUNKS, pos_scores=pos)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_pieces_give_distances_and_visibility():
    q, k, v = _qkv(n=12)
    cache = WindowKVCache(WINDOWS, sink_tokens=1)
    cache.update(k[:, :, :10], v[:, :, :10])
    qpos = torch.tensor([10])
    sink, ring = cache.pieces(0, qpos)  # window 4: the sink, then the ring of 4 slots
    sink_pos, ring_pos = 10 - sink.dist[0], 10 - ring.dist[0]
    assert sink_pos.tolist() == [0] and sink.visible.tolist() == [[True]]
    assert sorted(ring_pos.tolist()) == [6, 7, 8, 9]
    assert ring.visible[0, ring_pos == 6].item() is False  # distance 4 = w: out
    torch.testing.assert_close(ring.k[:, 0, ring_pos.argsort()], k[:, 0, 6:10])
    full = cache.pieces(2, qpos)[0]  # group 2 = the full head: everything, in order
    assert (10 - full.dist[0]).tolist() == list(range(10)) and full.visible.all()


def test_bytes_are_the_sum_of_the_windows():
    b, d = 3, 16
    windows = [2, 2, 4, 4, 8, 8, 16, 16]
    for sinks in (0, 3):
        cache = WindowKVCache(windows, sink_tokens=sinks)
        x = torch.randn(b, 8, 40, d)
        for t in range(40):
            cache.attend(x[:, :, t:t + 1], x[:, :, t:t + 1], x[:, :, t:t + 1])
        assert cache.nbytes() == b * (sum(windows) + sinks * 8) * 2 * d * 4
    # a full head grows with the context, a windowed one does not
    cache = WindowKVCache([None, 4])
    cache.update(x[:, :2, :30], x[:, :2, :30])
    assert cache.nbytes() == b * (30 + 4) * 2 * d * 4


def test_paper_mswa_cache_is_0879_of_swa():
    """12 layers x 8 heads, base 128, context 2048 > every window: 225/256 of SWA's bytes."""
    b, d, n = 1, 4, 2048
    x = torch.zeros(b, 8, n, d)
    total = {}
    for pattern in ("swa", "mswa"):
        sched = build_schedule(12, 8, 128, pattern)
        total[pattern] = 0
        for layer in sched.windows:
            cache = WindowKVCache(layer)
            cache.update(x, x)
            assert cache.nbytes() == b * sum(layer) * 2 * d * 4
            total[pattern] += cache.nbytes()
    assert total["mswa"] / total["swa"] == pytest.approx(225 / 256, abs=1e-12)  # 0.8789


def test_reorder_follows_the_beams():
    q, k, v = _qkv(b=3)
    order = torch.tensor([2, 0, 0])
    cache = WindowKVCache(WINDOWS, sink_tokens=2)
    first = _run_chunks(cache, q, k, v, [17])
    cache.reorder(order)
    rest = _run_chunks(cache, q[order, :, 17:], k[order, :, 17:], v[order, :, 17:], [1] * 24)
    ref = dense_window_attention(q[order], k[order], v[order], WINDOWS, sink_tokens=2)
    torch.testing.assert_close(torch.cat([first[order], rest], 2), ref, rtol=1e-10, atol=1e-10)


def test_full_attention_decode():
    """keep_all + full_attention_from P: queries < P keep their windows, later ones see all."""
    q, k, v = _qkv()
    p = 20
    cache = WindowKVCache(WINDOWS, sink_tokens=1, keep_all=True)
    first = _run_chunks(cache, q, k, v, [p])
    cache.set_full_attention_from(p)
    rest = _run_chunks(cache, q[:, :, p:], k[:, :, p:], v[:, :, p:], [1] * 10 + [11])
    mask = visibility_mask(41, 41, WINDOWS, 1)
    mask[:, p:] = torch.ones(41, 41, dtype=torch.bool).tril()[p:]
    scores = (q @ k.transpose(-1, -2)) * 8 ** -0.5
    ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(torch.cat([first, rest], 2), ref, rtol=1e-10, atol=1e-10)
    assert cache.nbytes() == 2 * 5 * 41 * 2 * 8 * 8  # nothing evicted
    with pytest.raises(ValueError, match="keep_all"):
        WindowKVCache(WINDOWS).set_full_attention_from(3)


def test_half_precision_and_bad_inputs():
    q, k, v = (t.float() for t in _qkv(n=9))
    out = WindowKVCache(WINDOWS).attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), dense_window_attention(q, k, v, WINDOWS), rtol=3e-2, atol=3e-2)
    with pytest.raises(ValueError, match="heads"):
        WindowKVCache(WINDOWS).attend(q[:, :3], k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match="window"):
        WindowKVCache([0, 2])
    with pytest.raises(ValueError, match="pos_scores"):
        WindowKVCache(WINDOWS).attend(q, k, v, pos_scores=torch.zeros(2, 5, 1, 3))


def test_recurrent_state_cache_interface():
    c = RecurrentStateCache()
    assert c.nbytes() == 0 and c.length == 0
    c.state = (torch.arange(6.0).view(3, 2), torch.arange(3.0))
    c.reorder(torch.tensor([2, 2, 0]))
    assert c.state[1].tolist() == [2.0, 2.0, 0.0] and c.nbytes() == 9 * 4



def test_growing_buffers_reserve_and_grow_without_copy_per_step():
    q, k, v = _qkv()
    ref = dense_window_attention(q, k, v, WINDOWS, sink_tokens=1)
    cache = WindowKVCache(WINDOWS, sink_tokens=1)
    cache.reserve(41)
    first = _run_chunks(cache, q, k, v, [10])
    full_group = cache.groups[2]
    ptr = full_group.k.data_ptr()
    rest = _run_chunks(cache, q[:, :, 10:], k[:, :, 10:], v[:, :, 10:], [1] * 31)
    assert full_group.k.data_ptr() == ptr and full_group.k.shape[2] == 41  # same storage
    torch.testing.assert_close(torch.cat([first, rest], 2), ref, rtol=1e-10, atol=1e-10)
