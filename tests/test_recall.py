"""The ``recall`` task (multi-query associative recall) and ``recall_cross_entropy``: sequences as
documented, accuracy per distance bucket (a model that copies the right value scores 1.0, a
constant model scores chance), bad settings named, and the whole thing through fairseq-train and
fairseq-validate at tiny size, read by the study's parser."""

import json

import numpy as np
import pytest
import torch
from conftest import USER_DIR, run_cli

from fairseq_mswa.criterions.recall_cross_entropy import RecallCrossEntropyCriterion, recall_counts
from fairseq_mswa.tasks.recall import (RecallConfig, RecallError, RecallTask, bucket_of,
                                       parse_buckets)
from studies.recall import MODELS, parse_counts, reach

SPEC = dict(tokens_per_sample=128, num_pairs=8, num_keys=16, num_values=16, num_fillers=16,
            distance_buckets="1,4,8,16,32,64,128", train_sequences=64, valid_sequences=64,
            test_sequences=400, data_seed=3)


def _task(**overrides):
    return RecallTask.setup_task(RecallConfig(**{**SPEC, **overrides}))


def _split(task, split="test"):
    task.load_dataset(split)
    ds = task.datasets[split]
    return ds, ds.collater([ds[i] for i in range(len(ds))])


def test_sequences_hold_the_pairs_and_queries_they_say():
    task = _task()
    ds, batch = _split(task)
    src, tgt, dist = batch["net_input"]["src_tokens"], batch["target"], batch["distance"]
    pad = task.dictionary.pad()
    key0, val0 = 4, 4 + SPEC["num_keys"]
    for row in range(src.shape[0]):
        p = torch.nonzero(dist[row]).flatten()
        assert len(p) == SPEC["num_pairs"]
        keys = src[row, p]
        assert keys.ge(key0).all() and keys.lt(val0).all() and len(set(keys.tolist())) == len(p)
        d = dist[row, p]
        assert torch.equal(src[row, p - d], keys)  # the pair's key, d positions back
        assert torch.equal(tgt[row, p], src[row, p - d + 1])  # the value follows it
        assert tgt[row].ne(pad).sum() == len(p)  # only the values are scored
    assert batch["ntokens"] == SPEC["num_pairs"] * len(ds)
    # every bucket that fits gets about the same share of queries
    d = dist[dist > 0].numpy()
    shares = np.bincount(bucket_of(d, (1, 4, 8, 16, 32, 64, 128)), minlength=6) / len(d)
    assert np.all(np.abs(shares - 1 / 6) < 0.03), shares
    assert d.min() >= 2 and d.max() <= SPEC["tokens_per_sample"] - 1


def test_data_are_deterministic_and_splits_differ():
    a, b = _split(_task())[1], _split(_task())[1]
    assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
    valid = _split(_task(), "valid")[1]["net_input"]["src_tokens"]
    assert not torch.equal(valid, a["net_input"]["src_tokens"][: len(valid)])
    other = _split(_task(data_seed=4))[1]["net_input"]["src_tokens"]
    assert not torch.equal(other, a["net_input"]["src_tokens"])


def _copying_logits(src, vocab):
    """A model that recalls: at each position the token that followed the latest earlier
    occurrence of the current token (logits one-hot)."""
    b, n = src.shape
    out = torch.zeros(b, n, vocab)
    for r in range(b):
        last = {}
        for p in range(n):
            t = int(src[r, p])
            if t in last and last[t] + 1 < n:
                out[r, p, int(src[r, last[t] + 1])] = 1.0
            last[t] = p
    return out


class _Fixed(torch.nn.Module):
    """A fairseq-like model returning fixed logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src_tokens, src_lengths=None):
        return self.logits, None

    def get_normalized_probs(self, net_output, log_probs=True):
        return torch.log_softmax(net_output[0].float() * 50, dim=-1)

    def get_targets(self, sample, net_output):
        return sample["target"]


def _accuracy(task, batch, logits):
    crit = RecallCrossEntropyCriterion(task, sentence_avg=False)
    _, _, log = crit(_Fixed(logits), batch)
    hits = sum(v for k, v in log.items() if k.startswith("hits_"))
    queries = sum(v for k, v in log.items() if k.startswith("queries_"))
    assert queries == batch["ntokens"]
    return hits / queries, log


def test_a_copying_model_scores_one_and_a_constant_model_chance():
    task = _task()
    _, batch = _split(task)
    src = batch["net_input"]["src_tokens"]
    vocab = len(task.dictionary)
    acc, log = _accuracy(task, batch, _copying_logits(src, vocab))
    assert acc == 1.0
    assert {k for k in log if k.startswith("queries_")} == {
        f"queries_{lo}_{hi}" for lo, hi in zip([1, 4, 8, 16, 32, 64], [4, 8, 16, 32, 64, 128])}
    constant = torch.zeros(*src.shape, vocab)
    constant[..., 4 + SPEC["num_keys"]] = 1.0  # always the first value
    acc, _ = _accuracy(task, batch, constant)
    n, p = batch["ntokens"], 1 / SPEC["num_values"]
    assert abs(acc - p) < 4 * (p * (1 - p) / n) ** 0.5, acc


def test_counts_per_bucket_and_the_study_parser():
    logits = torch.zeros(1, 6, 9)
    logits[0, [1, 3, 5], [2, 7, 8]] = 1.0
    target = torch.tensor([[1, 2, 1, 5, 1, 8]])
    distance = torch.tensor([[0, 3, 0, 10, 0, 40]])
    assert recall_counts(logits, target, distance, (1, 4, 16, 64)) == {
        (1, 4): (1, 1), (4, 16): (0, 1), (16, 64): (1, 1)}
    line = ('2026-12-05 | INFO | test | {"test_loss": "1.2", "test_hits_1_4": "3", '
            '"test_queries_1_4": "4", "test_hits_4_8": "0", "test_queries_4_8": "2"}')
    assert parse_counts("noise\n" + line, "test") == {"1_4": [3, 4], "4_8": [0, 2]}


def test_reach_of_the_study_models():
    by = {m.name: reach(m) for m in MODELS}
    assert by["xl_full"]["largest_window"] is None
    assert by["xl_swa"]["largest_window"] == 16 and by["xl_swa"]["receptive_field"] == 60
    assert by["xl_mswa"]["largest_window"] == 64 and by["xl_mswa"]["receptive_field"] == 116
    assert by["xl_mswa"]["relative_cost"] == pytest.approx(225 / 256, abs=1e-4)
    assert by["linear_mswa"]["largest_window"] == 64 and by["linear_mswa"]["receptive_field"] is None
    # the hybrid's two linear layers cost the same under both schedules: the ratio is nearer 1
    assert 225 / 256 < by["linear_mswa"]["relative_cost"] < 1 == by["linear_swa"]["relative_cost"]


@pytest.mark.parametrize("settings, match", [
    (dict(distance_buckets="4,2"), "increasing"),
    (dict(distance_buckets="a,b"), "comma-separated integers"),
    (dict(num_pairs=12, tokens_per_sample=32, distance_buckets="1,4,8"), "fewer --num-pairs"),
    (dict(num_keys=4), "--num-keys"),
])
def test_bad_settings_are_named(settings, match):
    with pytest.raises(RecallError, match=match):
        _task(**settings)


def test_bucket_parsing():
    assert parse_buckets("1, 4,16") == (1, 4, 16)
    with pytest.raises(RecallError):
        parse_buckets("7")


def test_train_and_validate_through_the_clis(tmp_path):
    task_args = ["--task", "recall", "--tokens-per-sample", "64", "--num-pairs", "4",
                 "--num-keys", "8", "--num-values", "8", "--distance-buckets", "1,8,64",
                 "--train-sequences", "64", "--valid-sequences", "16", "--test-sequences", "32"]
    run_cli("train", "--user-dir", USER_DIR, *task_args, "--criterion", "recall_cross_entropy",
            "--arch", "transformer_xl_mswa_tiny", "--batch-size", "8", "--optimizer", "adam",
            "--lr", "1e-3", "--max-update", "6", "--save-dir", tmp_path / "ck", "--cpu",
            "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "json")
    out = run_cli("validate", "--user-dir", USER_DIR, "--task", "recall", "--criterion",
                  "recall_cross_entropy", "--path", tmp_path / "ck" / "checkpoint_last.pt",
                  "--valid-subset", "test", "--batch-size", "16", "--log-format", "json",
                  "--cpu", "--num-workers", "0")
    counts = parse_counts(out, "test")
    assert set(counts) == {"1_8", "8_64"}
    assert sum(q for _, q in counts.values()) == 32 * 4
    assert all(0 <= h <= q for h, q in counts.values())
    stats = json.loads(out[out.rindex("{"):out.rindex("}") + 1])
    assert 0.0 <= float(stats["test_acc"]) <= 100.0
