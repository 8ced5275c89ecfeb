"""``--flex-tiles``: FlexAttention's tiles per layer of transformer_xl_mswa (default torch's
128 x 128, an explicit QxK, or ``auto``: the tile chooser of fairseq_mswa.cost.tiles), and the
model's output unchanged by the tiles (eager flex against the default backend)."""

import pytest
import torch
from conftest import tiny_xl_model

from fairseq_mswa.cost.tiles import choose_tiles
from fairseq_mswa.schedule import ScheduleError


def _tiles(model):
    return [layer.attn.block_size for layer in model.decoder.layers]


def test_default_and_explicit_tiles():
    assert _tiles(tiny_xl_model()) == [None] * 4
    assert _tiles(tiny_xl_model(flex_tiles="64x32")) == [(64, 32)] * 4


def test_auto_takes_the_choosers_plan_per_layer():
    model = tiny_xl_model(flex_tiles="auto", attn_backend="flex")
    for layer, mem in zip(model.decoder.layers, model.decoder.mem_lens):
        attn = layer.attn
        windows = [w for w, heads in attn.groups for _ in heads]
        plan = choose_tiles(windows, 32, mem, head_dim=attn.head_dim, batch=16384 // 32)
        if len(plan.passes) == 1:
            assert attn.block_size == tuple(plan.tiles[0])
        else:
            assert attn.strategy == tuple(plan.partition)
            assert attn.block_size == [tuple(t) for t in plan.tiles]
    # small windows get smaller tiles than the widest layer's
    sizes = [b if isinstance(b, tuple) else b[0] for b in _tiles(model)]
    assert sizes[0][0] * sizes[0][1] <= sizes[-1][0] * sizes[-1][1]


@pytest.mark.parametrize("spec", ["12x16", "64", "big"])
def test_bad_tiles_are_named(spec):
    with pytest.raises(ScheduleError, match="--flex-tiles"):
        tiny_xl_model(flex_tiles=spec)


def test_tiles_do_not_change_the_output(flex_eager_dynamo):
    tok = torch.randint(4, 20, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_xl_model()(tok)[0]
        for spec in ("16x16", "32x16", "auto"):
            out = tiny_xl_model(flex_tiles=spec, attn_backend="flex")(tok)[0]
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
