"""fairseq_mswa.cost.tiles: tile-granular attention work, exact against FlexAttention's block masks
(built on CPU), the tile chooser, the decoder's accounting; studies.tiles: the CPU blocked kernel's
accounting and the report (python scripts/tiles.py)."""

import ast
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fairseq_mswa.cost import tiles
from studies import tiles as tiles_study
from studies.tiles import blocked_layer_scores
from fairseq_mswa.cost.tiles import (
    GPU_TILES,
    PAPER_TILES,
    TileError,
    call_tile_work,
    choose_tiles,
    decode_kv_bytes,
    head_tiles,
    layer_tile_work,
    paper_schedules,
    pass_memory,
    pass_windows,
    schedule_tile_work,
    tile_efficiency,
    tile_ratio,
    visible_pairs,
)

ROOT = Path(__file__).resolve().parents[1]


def flex_block_mask_tiles(windows, segment, memory, tile, sinks=0):
    """Non-empty blocks (partial + full) per head of the block mask FlexAttention builds for
    kernels/flex.py's mask logic (``_mask_mod``, ``_window_tensor``) at BLOCK_SIZE=tile."""
    from torch.nn.attention.flex_attention import create_block_mask

    from fairseq_mswa.kernels.flex import _mask_mod, _window_tensor

    lk = segment + memory
    bm = create_block_mask(_mask_mod(_window_tensor(windows, lk, "cpu"), memory, sinks), None,
                           len(windows), segment, lk, device="cpu", BLOCK_SIZE=tile)
    full = bm.full_kv_num_blocks
    per_head = bm.kv_num_blocks.sum(-1) + (0 if full is None else full.sum(-1))
    return [int(x) for x in per_head[0]]


CASES = [  # (segment, memory, windows, sinks)
    (64, 0, [1, 2, 8, 16, 33, None], 0),
    (64, 7, [8, 8, 16, 32], 0),
    (50, 13, [1, 3, 16, None], 2),  # neither length a multiple of the blocks
    (48, 31, [4, 32, 5, 17], 3),
    (96, 63, [64, 16, 8, 64], 0),
]


@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (16, 32), (8, 8), (32, 32), (64, 16)])
@pytest.mark.parametrize("segment,memory,windows,sinks", CASES)
def test_head_tiles_equal_flex_block_mask(segment, memory, windows, sinks, tile):
    got = [head_tiles(segment, memory, w, tile, sinks) for w in windows]
    assert got == flex_block_mask_tiles(windows, segment, memory, tile, sinks)
    assert call_tile_work(windows, segment, memory, tile, sinks) == sum(got) * tile[0] * tile[1]


def test_paper_layer_equals_flex_block_mask_at_128():
    """One MSWA layer of the paper (windows 64..512, memory 511, segment 512) at the default
    128 x 128 blocks and at 64 x 32: the layer's heads in one call, as a merged pass builds it."""
    mswa, _ = paper_schedules()
    layer = list(mswa.windows[-1])
    for tile in [(128, 128), (64, 32)]:
        assert ([head_tiles(512, 511, w, tile) for w in layer]
                == flex_block_mask_tiles(layer, 512, 511, tile))


def test_one_by_one_tiles_are_the_visible_keys():
    """1 x 1 tiles count every visible (query, key) pair: min(w, keys up to the query)."""
    from fairseq_mswa.cost.flops import _visible_keys

    for w, mem in [(8, 0), (8, 7), (128, 127), (512, 100), (None, 30)]:
        assert visible_pairs([w], 200, mem) == _visible_keys(w, mem, 200)


def test_paper_table_of_issue_29():
    """The MSWA / SWA tile-work ratios the issue quotes, at segment 512 and 2048 alike."""
    mswa, swa = paper_schedules()
    want = [1.156, 1.000, 1.000, 0.938, 0.925, 0.896, 0.879]
    for seg in (512, 2048):
        assert [round(tile_ratio(mswa, swa, seg, t), 3) for t in PAPER_TILES] == want
    assert tile_ratio(mswa, swa, 512, (1, 1)) == pytest.approx(10800 / 12288)


@pytest.mark.parametrize("tile", [(128, 128), (64, 32), (16, 16)])
def test_grouped_and_merged_passes_do_the_same_tile_work_at_paper_shape(tile):
    mswa, _ = paper_schedules()
    assert (schedule_tile_work(mswa, 512, tile, "grouped")
            == schedule_tile_work(mswa, 512, tile, "merged")
            == schedule_tile_work(mswa, 512, tile, (2, 1, 1)))


def test_memory_alignment_moves_tiles():
    """A window of 8 at 128 x 128 tiles: two tiles per query block whatever the memory (the
    block's 128 queries and 7 earlier keys span 135 keys), but one with no memory and w = 1."""
    assert head_tiles(512, 7, 8, (128, 128)) == 8
    assert head_tiles(512, 511, 8, (128, 128)) == 8
    assert head_tiles(512, 0, 1, (128, 128)) == 4


def test_pass_helpers():
    ws = [8, 8, 16, 16, 32, 32, 64, 64]
    assert pass_windows(ws, (2, 1, 1)) == [[8, 8, 16, 16], [32, 32], [64, 64]]
    assert pass_memory([8, 16], 511) == 15
    assert pass_memory([8, None], 100) == 100
    with pytest.raises(TileError, match="adding up to 4"):
        pass_windows(ws, (2, 1))
    with pytest.raises(TileError, match="one per pass"):
        layer_tile_work(ws, 64, 63, [(16, 16)] * 2, "grouped")
    with pytest.raises(TileError, match="q_block, kv_block"):
        head_tiles(64, 0, 8, (0, 16))
    with pytest.raises(TileError, match="window"):
        head_tiles(64, 0, 0, (16, 16))


def test_efficiency_model():
    assert tile_efficiency((128, 128)) == 1.0
    effs = [tile_efficiency(t) for t in PAPER_TILES]
    assert effs == sorted(effs, reverse=True)  # smaller tiles: lower rate per pair
    # the anchor: flash-attn 2's 64 x 256 is 27 % slower than 128 x 128 (head dim 64)
    assert 1 / tile_efficiency((64, 256)) == pytest.approx(1.27, abs=0.005)


def _brute_force(windows, segment, memory, allowed, batch, pass_seconds, eff):
    """Every partition x every tile per pass, costed independently of choose_tiles."""
    groups = tiles.window_groups(windows)
    n, best = len(groups), None
    for cuts in itertools.product((0, 1), repeat=n - 1):
        sizes, run = [], 1
        for c in cuts:
            if c:
                sizes.append(run)
                run = 1
            else:
                run += 1
        sizes.append(run)
        passes = pass_windows(windows, tuple(sizes))
        for ts in itertools.product(allowed, repeat=len(passes)):
            secs = sum(pass_seconds + batch * 768 * call_tile_work(p, segment,
                                                                    pass_memory(p, memory), t)
                       / (1e12 * eff(t)) for p, t in zip(passes, ts))
            if best is None or secs < best[0] - 1e-15:
                best = (secs, tuple(sizes), ts)
    return best


@pytest.mark.parametrize("pass_seconds", [0.0, 2e-6, 1.0])
def test_choose_tiles_is_optimal_under_its_model(pass_seconds):
    windows = [8, 8, 16, 16, 32, 32, 64, 64]
    allowed = [(64, 64), (32, 32), (16, 16), (64, 16)]
    plan = choose_tiles(windows, 96, 63, allowed, batch=4, head_dim=64, pass_seconds=pass_seconds,
                        flops_per_second=1e12)
    secs, sizes, ts = _brute_force(windows, 96, 63, allowed, 4, pass_seconds, tile_efficiency)
    assert plan.seconds == pytest.approx(secs)
    assert plan.partition == sizes and plan.tiles == ts
    assert plan.tile_work == sum(p.tile_work for p in plan.passes)
    if pass_seconds == 1.0:
        assert plan.partition == (4,)  # a costly pass: everything in one


def test_choose_tiles_without_overhead_or_rate_loss_takes_the_least_work():
    plan = choose_tiles([8, 8, 512, 512], 256, 511, GPU_TILES, pass_seconds=0.0,
                        efficiency=lambda t: 1.0)
    # the smallest tiles; one pass, since passes cost nothing but do not save work either
    # (fewer passes win ties)
    assert plan.partition == (2,) and plan.tiles == ((16, 16),)
    assert plan.tile_work == layer_tile_work([8, 8, 512, 512], 256, 511, (16, 16), "grouped")
    # with a uniform shape forced, the small windows still want their own pass and tiles
    split = choose_tiles([8, 8, 512, 512], 256, 511, [(16, 16), (128, 128)], pass_seconds=0.0)
    assert split.partition == (1, 1) and split.tiles == ((16, 16), (128, 128))


def test_choose_tiles_errors_name_the_fix():
    with pytest.raises(TileError, match="at least one allowed tile"):
        choose_tiles([8], 64, 7, [])
    with pytest.raises(TileError, match="batch >= 1"):
        choose_tiles([8], 64, 7, batch=0)


def test_paper_targets():
    """At the paper's shape: MSWA at its chosen tiles does <= 0.95 of SWA's work at SWA's chosen
    tiles; at equal tiles only key blocks <= 32 meet 0.95."""
    r = tiles_study.tiles_report(with_blocked=False)
    t = r["targets"]
    assert t["same_tiles_met_at"] == ["64x32", "32x32", "16x16"]
    assert all(v["met"] for v in t["chosen_tile_work"].values())
    for c in r["chooser"]:
        swa_layers = c["swa"]["layers"]
        assert len(swa_layers) == 1 and swa_layers[0]["partition"] == [1]


def test_blocked_scores_equal_what_the_kernel_computes(monkeypatch):
    """Count the scores of every attention call the CPU path makes (one XL layer's passes, each
    over its memory slice), by wrapping the blocked kernel's two attention functions."""
    from fairseq_mswa.kernels import blocked
    from fairseq_mswa.kernels.window_attention import window_attention

    counted = []
    small, sdpa = blocked._attend_small, blocked.F.scaled_dot_product_attention

    def count(fn):
        def wrapped(q, k, v, *args, **kwargs):
            counted.append(q[..., 0].numel() * k.shape[-2])
            return fn(q, k, v, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(blocked, "_attend_small", count(small))
    monkeypatch.setattr(blocked.F, "scaled_dot_product_attention", count(sdpa))
    windows, segment, memory, d = [8, 8, 16, 16, 32, 32, 64, 64], 160, 63, 8
    g = torch.Generator().manual_seed(0)
    for part in [(1, 1, 1, 1), (4,), (2, 1, 1), (1, 3)]:
        counted.clear()
        for ws in pass_windows(windows, part):
            m = pass_memory(ws, memory)
            q = torch.randn(1, len(ws), segment, d, generator=g)
            k = torch.randn(1, len(ws), segment + m, d, generator=g)
            window_attention(q, k, k, ws, merge_heads=len(set(ws)) > 1)
        assert sum(counted) == blocked_layer_scores(windows, segment, memory, part)[0], part


def test_decode_bytes_equal_what_the_cache_reads(monkeypatch):
    """Decode token by token through WindowKVCache and count the keys of the pieces it hands to
    the attention (ring, filled prefix, sink store)."""
    from fairseq_mswa.modules import kv_cache

    seen = []
    real = kv_cache.attend_pieces

    def count(q, pieces, *args, **kwargs):
        seen.append(sum(p.k.shape[2] for p in pieces))
        return real(q, pieces, *args, **kwargs)

    monkeypatch.setattr(kv_cache, "attend_pieces", count)
    windows, d, sinks = [2, 2, 4, 8, None], 4, 3
    cache = kv_cache.WindowKVCache(windows, sink_tokens=sinks)
    g = torch.Generator().manual_seed(0)
    for pos in range(20):
        seen.clear()
        x = torch.randn(1, len(windows), 1, d, generator=g)
        cache.attend(x, x, x)
        keys = sum(n * len([w for w in windows if w == gw])
                   for n, gw in zip(seen, [w for w, _ in tiles.window_groups(windows)]))
        assert 2 * keys * d * 4 == decode_kv_bytes(windows, pos, d, 4, sinks), pos


def test_decode_steady_state_is_the_per_key_cost():
    mswa, swa = paper_schedules()
    m = sum(decode_kv_bytes(layer, 4096) for layer in mswa.windows)
    s = sum(decode_kv_bytes(layer, 4096) for layer in swa.windows)
    assert m / s == pytest.approx(mswa.cost() / swa.cost())


def test_tiles_module_imports_neither_torch_nor_fairseq():
    tree = ast.parse((ROOT / "fairseq_mswa/cost/tiles.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top
                                                      if isinstance(n, ast.ImportFrom)]
    assert not any(x.split(".")[0] in ("torch", "fairseq") or "kernels" in x for x in names)


def test_cli_tiles(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/tiles.py", "--json", str(tmp_path / "t.json"),
         "--md", str(tmp_path / "t.md")],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert "| 512 | 1.156 | 1.000 | 1.000 | 0.938 | 0.925 | 0.896 | 0.879 |" in out.stdout
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["command"].startswith("python scripts/tiles.py")
    assert rec["git_commit"] and rec["machine"]["cpu_count"]
    assert "Command: `python scripts/tiles.py" in (tmp_path / "t.md").read_text()
    bad = subprocess.run([sys.executable, "scripts/tiles.py", "--train-bench", str(tmp_path / "x")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    pure = subprocess.run([sys.executable, "-m", "fairseq_mswa.cost", "--tiles"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert "     512    1.156    1.000    1.000    0.938    0.925    0.896    0.879" in pure.stdout


def test_flex_backward_blocks_divide_every_tile():
    from studies.bench_attention import flex_bwd_blocks, flex_kernel_options

    for t in GPU_TILES:
        m1, n1, m2, n2 = flex_bwd_blocks(t)
        assert t[0] % m1 == 0 and t[1] % n1 == 0 and t[0] % m2 == 0 and t[1] % n2 == 0
        assert n1 % m1 == 0 and m2 % n2 == 0 and min(m1, n1, m2, n2) >= 16
        assert flex_kernel_options(t)["fwd_BLOCK_M"] == t[0]


def test_bwd_config_patch_adds_and_restores():
    from torch._inductor.choices import InductorChoices

    from studies.bench_attention import _BwdConfigsForTiles

    orig = InductorChoices.get_flex_attention_bwd_configs
    with _BwdConfigsForTiles([(32, 16)]) as p:
        assert p.patched and InductorChoices.get_flex_attention_bwd_configs is not orig
    assert InductorChoices.get_flex_attention_bwd_configs is orig


def test_tile_sweep_rehearsal_on_cpu():
    """The sweep's CPU rehearsal: every configuration timed, its tile work recorded (as
    cost.tiles counts it), the summary filled; a spent budget lists the rest as skipped."""
    from studies.bench_attention import tile_sweep

    r = tile_sweep("cpu", "float32", reps=1, tiles=[(32, 32), (16, 16)])
    assert r["rehearsal"] and not r["backward"] and "say nothing about tiles" in r["note"]
    assert {(x["schedule"], x["tiles"]) for x in r["rows"]} == {
        (s, t) for s in ("mswa", "swa") for t in ("chosen", "32x32", "16x16")}
    assert all(x["median_s"] > 0 for x in r["rows"])
    mswa16 = next(x for x in r["rows"] if x["schedule"] == "mswa" and x["tiles"] == "16x16")
    mswa, _ = tiles.paper_schedules(16)
    assert mswa16["tile_work"] == schedule_tile_work(mswa, 64, (16, 16), "merged")
    assert set(r["summary"][0]["mswa_over_swa_same_tiles"]) == {"chosen", "32x32", "16x16"}
    spent = tile_sweep("cpu", "float32", reps=1, tiles=[(16, 16)], budget_s=-1)
    assert all(x.get("skipped") == "time budget spent" for x in spent["rows"])
