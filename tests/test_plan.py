"""The layout cost model of XL layers (kernels/plan.py): merged at small shapes, grouped at the
paper's, and a single window group never merged."""

import torch

from fairseq_mswa.kernels.plan import layer_seconds, prefer_merged
from fairseq_mswa.modules.xl_attention import RelMultiheadWindowAttention
from fairseq_mswa.schedule import build_schedule


def test_small_shapes_merge_and_the_paper_shape_groups():
    small = build_schedule(4, 4, 32, "mswa")
    assert prefer_merged(small.layer(0), 8, 128, small.max_window(0) - 1, 16)
    paper = build_schedule(12, 8, 128, "mswa")
    assert not any(prefer_merged(paper.layer(i), 1, 2048, paper.max_window(i) - 1, 64)
                   for i in range(12))
    # grouped pays one fixed cost per group, merged one in all
    w = paper.layer(11)
    assert layer_seconds(w, 1, 4, 0, 64, merged=False) > layer_seconds(w, 1, 4, 0, 64, merged=True)


def test_one_group_is_never_merged_and_strategies_agree():
    layer = RelMultiheadWindowAttention(32, 4, (4, 4, 4, 4), strategy="merged")
    assert not layer._merged(1, 16, 3)
    layer = RelMultiheadWindowAttention(32, 4, (2, 4, 8, 16), strategy="auto").double()
    x, mem = torch.randn(2, 20, 32, dtype=torch.float64), torch.randn(2, 15, 32, dtype=torch.float64)
    outs = []
    for s in ("grouped", "merged", "auto"):
        layer.strategy = s
        outs.append(layer(x, mem))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-10, atol=1e-11)
