"""mswa_lm: stream layout, exact scoring, rank sharding, memory bookkeeping, dummy batches."""

import numpy as np
import pytest
import torch

from fairseq_mswa.stream import StreamMemory
from fairseq_mswa.tasks.mswa_lm import StreamDataset, _without_stream

PAD, EOS = 1, 2


def make(tokens, T=5, rows=3, shards=1, shard=0):
    return StreamDataset(np.asarray(tokens), T, rows, shards, shard, PAD, EOS)


def batches(ds):
    return [ds.collater([ds[i]]) for i in range(len(ds))]


@pytest.mark.parametrize("n,T,rows", [(50, 5, 3), (47, 7, 4), (10, 32, 2), (9, 1, 9)])
def test_every_token_scored_exactly_once(n, T, rows):
    tokens = np.arange(10, 10 + n)
    ds = make(tokens, T, rows)
    bs = batches(ds)
    targets = torch.cat([b["target"] for b in bs], 1)  # (rows, row_len)
    scored = targets[targets.ne(PAD)]
    assert sorted(scored.tolist()) == tokens.tolist()
    assert sum(b["ntokens"] for b in bs) == n
    # row r, read left to right, is a contiguous piece of the stream, and its input is the
    # previous token of the stream (</s> before the very first one)
    src = torch.cat([b["net_input"]["src_tokens"] for b in bs], 1)
    flat_src, flat_tgt = src[targets.ne(PAD)], targets[targets.ne(PAD)]
    assert flat_tgt.tolist() == tokens.tolist()
    assert flat_src.tolist() == [EOS] + tokens[:-1].tolist()
    assert [b["net_input"]["stream"].start for b in bs] == list(range(0, ds.row_len, T))


def test_too_many_streams_is_a_clear_error():
    with pytest.raises(ValueError, match="--batch-size"):
        make(np.arange(10, 14), 5, 5)


def test_ranks_own_their_rows_like_one_process_with_more_streams():
    tokens = np.arange(10, 110)
    one = batches(make(tokens, T=8, rows=4))
    r0 = batches(make(tokens, T=8, rows=2, shards=2, shard=0))
    r1 = batches(make(tokens, T=8, rows=2, shards=2, shard=1))
    assert len(one) == len(r0) == len(r1)
    assert sum(b["ntokens"] for b in r0 + r1) == 100
    for a, b0, b1 in zip(one, r0, r1):
        assert torch.equal(a["target"], torch.cat([b0["target"], b1["target"]]))
        assert a["ntokens"] == b0["ntokens"] + b1["ntokens"]


def test_memory_read_write_and_retry():
    m = StreamMemory()
    assert m.read(0) is None
    a, b = [torch.ones(1)], [torch.zeros(1)]
    m.write(0, 5, None, a)
    assert m.read(5) is a
    m.write(5, 5, a, b)
    assert m.read(5) is a  # the same batch again (OOM retry) reads its own input memory
    assert m.read(10) is b
    assert m.read(0) is None  # a new pass starts empty
    assert m.read(35) is None  # unknown position (resume): empty memory, logged


def test_dummy_batch_runs_without_memory():
    ds = make(np.arange(10, 60))
    sample = ds.collater([ds[0]])
    stripped = _without_stream(sample)
    assert "stream" not in stripped["net_input"] and "stream" in sample["net_input"]
    assert torch.equal(stripped["target"], sample["target"])
