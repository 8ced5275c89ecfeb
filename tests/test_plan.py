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


def test_fit_constants_recovers_the_constants_that_made_the_times():
    from fairseq_mswa.kernels.plan import fit_constants, picks_faster

    call, rate = 5e-4, 3e10
    layers = []
    for passes_g, flops_g, flops_m in ((4, 1e8, 2e8), (4, 5e8, 4e8), (2, 3e9, 6e9), (4, 1e7, 3e7)):
        t_g = 1e-3 + passes_g * call + flops_g / rate  # a shared part that the difference drops
        t_m = 1e-3 + call + flops_m / rate
        layers.append({"median_s": {"grouped": t_g, "merged": t_m},
                       "passes": {"grouped": passes_g, "merged": 1},
                       "flops": {"grouped": flops_g, "merged": flops_m}})
    fit_call, fit_rate = fit_constants(layers)
    assert abs(fit_call / call - 1) < 1e-9 and abs(fit_rate / rate - 1) < 1e-9
    assert picks_faster(layers, fit_call, fit_rate) == 4
    assert fit_constants(layers[:1]) is None  # two unknowns need two layers
