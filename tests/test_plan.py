"""The layout cost model of XL layers (kernels/plan.py): merged at small shapes, grouped at the
paper's, partitions between them, and a single window group never split."""

import pytest
import torch

from fairseq_mswa.kernels.plan import best_partition, compositions, layout_seconds, pass_windows
from fairseq_mswa.modules.xl_attention import RelMultiheadWindowAttention
from fairseq_mswa.schedule import build_schedule


def test_small_shapes_merge_and_the_paper_shape_does_not():
    small = build_schedule(4, 4, 32, "mswa")
    assert best_partition(tuple(small.layer(0)), 8, 128, small.max_window(0) - 1, 16) == (4,)
    paper = build_schedule(12, 8, 128, "mswa")
    assert all(len(best_partition(tuple(paper.layer(i)), 1, 2048, paper.max_window(i) - 1, 64)) > 1
               for i in range(12))
    # grouped pays one fixed cost per group, merged one in all
    w = paper.layer(11)
    assert layout_seconds(w, (1, 1, 1, 1), 1, 4, 0, 64) > layout_seconds(w, (4,), 1, 4, 0, 64)


def test_partitions_cut_consecutive_groups():
    assert sorted(compositions(3)) == [(1, 1, 1), (1, 2), (2, 1), (3,)]
    assert len(list(compositions(4))) == 8
    assert pass_windows([2, 2, 4, 4, 8, 8], (1, 2)) == [[2, 2], [4, 4, 8, 8]]
    with pytest.raises(ValueError, match="does not cut the 3 window groups"):
        pass_windows([2, 4, 8], (2, 2))
    with pytest.raises(ValueError, match="partition such as"):
        RelMultiheadWindowAttention(32, 4, (2, 4, 8, 16), strategy="fast")
    with pytest.raises(ValueError, match="does not cut"):
        RelMultiheadWindowAttention(32, 4, (2, 4, 8, 16), strategy=(2, 1))


@pytest.mark.parametrize("windows", [(2, 4, 8, 16), (4, 1, 4, 7)], ids=["in-order", "reordered"])
def test_every_partition_gives_the_same_layer(windows):
    layer = RelMultiheadWindowAttention(32, 4, windows, strategy="grouped").double()
    assert layer._partition(1, 16, 3) == (1,) * len(layer.groups)
    x = torch.randn(2, 20, 32, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(2, 15, 32, dtype=torch.float64)
    ref = layer(x, mem)
    ref_grads = torch.autograd.grad(ref.sum(), [x] + list(layer.parameters()), allow_unused=True)
    for sizes in list(compositions(len(layer.groups))) + ["merged", "auto"]:
        layer.strategy = sizes
        out = layer(x, mem)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-11, msg=f"output of {sizes}")
        grads = torch.autograd.grad(out.sum(), [x] + list(layer.parameters()), allow_unused=True)
        for a, b in zip(grads, ref_grads):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"grads of {sizes}")


def test_one_group_is_one_pass():
    layer = RelMultiheadWindowAttention(32, 4, (4, 4, 4, 4), strategy="merged")
    assert layer._partition(1, 16, 3) == (1,)


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
