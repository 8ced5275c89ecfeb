"""Compiled FlexAttention makes a known number of graphs per model and never falls back silently.

Counted on CPU with Dynamo's ``backend="eager"`` (Dynamo's guards and recompile rules are the
same as on CUDA; nothing is compiled). The model is the paper's 12 x 8 MSWA Transformer-XL (base
window 128, segments of 512, memory = each layer's largest window - 1) with a tiny width (head
dim 2: the shapes that decide the graphs are the lengths, not the width), run as a training run
makes it: three training segments with grad (the first without memory), then a validation pass
without grad (fresh memory, two segments of 512 and the streams' short last segment of 28
tokens, with memory: the eval-lm case that gave NaN).
torch's CPU backward check is lifted (``flex_cpu_backward``) only so that the training segments
trace with grad enabled, as on a GPU; no backward runs here.
"""

import pytest
import torch
from conftest import FakeTask, build_arch_model

from fairseq_mswa.kernels import capabilities, flex

# graphs one such run makes (flex.PAPER_MODEL_GRAPHS): per layer group (4 distinct largest windows) one signature for each
# of: training without memory, training with memory, validation without memory, validation with
# memory, the short last segment (with memory) = 4 x 5. (Another batch size, e.g. fewer streams
# in a last batch, adds its own signatures: flex.graph_signature.)
PAPER_RUN_GRAPHS = 20
assert flex.PAPER_MODEL_GRAPHS == PAPER_RUN_GRAPHS


def _paper_model():
    torch.manual_seed(0)
    return build_arch_model("transformer_xl_mswa", FakeTask(20), dict(
        decoder_layers=12, decoder_attention_heads=8, decoder_embed_dim=16,
        decoder_ffn_embed_dim=16, base_window=128, attn_pattern="mswa", tokens_per_sample=512,
        dropout=0.0, attn_backend="flex"))


def _run(model, batches):
    """Feed (batch, length) segments of one stream set through the decoder, memory carried."""
    mems = None
    for b, length in batches:
        _, mems = model.decoder.extract_features(torch.randint(4, 20, (b, length)), mems)


@pytest.fixture
def record_signatures(monkeypatch):
    """The graph_signature of every flex call (what decides its graph)."""
    seen = []
    inner = flex.flex_window_attention_unchecked

    def spy(q, k, v, windows, sink_tokens=0, pos_scores=None, dropout_p=0.0, scale=None,
            sink_logits=None, compiled=True, block_size=None):
        seen.append(flex.graph_signature(q, k, v, windows, sink_tokens, pos_scores, sink_logits,
                                         block_size))
        return inner(q, k, v, windows, sink_tokens, pos_scores, dropout_p, scale, sink_logits,
                     compiled, block_size)

    monkeypatch.setattr(flex, "flex_window_attention_unchecked", spy)  # what the dispatcher calls
    return seen


def test_paper_model_training_run_makes_a_stated_number_of_graphs(
        flex_cpu_backward, flex_eager_dynamo, record_signatures, monkeypatch):
    # the rules refuse flex for a CPU backward; the shapes with grad are what is counted here
    monkeypatch.setattr(capabilities, "_flex_reason", lambda needs, compiled: None)
    model = _paper_model()
    assert {len(layer.attn.groups) for layer in model.decoder.layers} == {4}
    calls = 0
    model.train()
    _run(model, [(2, 512)] * 3)  # training: no memory, then memory
    calls += 3 * 12
    assert flex_eager_dynamo() == 8, "training: 4 layer groups x (no memory, memory)"
    model.eval()
    with torch.no_grad():
        # validation: fresh memory, then with memory, then the streams' short last segment
        _run(model, [(2, 512), (2, 512), (2, 28)])
    calls += 3 * 12
    assert len(record_signatures) == calls, "every layer is one flex call (merged)"
    assert flex_eager_dynamo() == len(set(record_signatures)) == PAPER_RUN_GRAPHS
    assert PAPER_RUN_GRAPHS <= flex.RECOMPILE_LIMIT


def test_graphs_past_the_limit_raise_instead_of_running_unfused(flex_eager_dynamo, monkeypatch):
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 2)
    windows = [2, 4]
    with torch.no_grad():
        for lq in (8, 9):
            q = torch.randn(1, 2, lq, 16)
            flex.flex_window_attention(q, q, q, windows)
        assert flex_eager_dynamo() == 2
        q = torch.randn(1, 2, 10, 16)
        with pytest.raises(flex.FlexGraphLimitError, match="RECOMPILE_LIMIT.*blocked"):
            flex.flex_window_attention(q, q, q, windows)


def test_changing_memory_and_sinks_reuse_one_graph_per_shape(flex_eager_dynamo):
    """mem and sink counts are tensors: new values at the same shapes make no new graph."""
    windows = [3, None]
    with torch.no_grad():
        for sinks in (0, 1, 2):
            for lq, lk in ((8, 12), (10, 12)):
                q, k = torch.randn(1, 2, lq, 16), torch.randn(1, 2, lk, 16)
                ps = torch.randn(1, 2, lq, 5)
                flex.flex_window_attention(q, k, k, windows, sinks, ps)
    assert flex_eager_dynamo() == 2
