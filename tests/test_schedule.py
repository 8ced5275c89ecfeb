"""Window schedules: the paper's Table 1, variations, SWAA knobs, and errors that name the fix."""

import json

import pytest

from fairseq_mswa.schedule import (
    ScheduleError,
    build_schedule,
    group_multipliers,
    group_of,
)


def test_table1_mswa_windows():
    """Table 1: layer group i, head group j -> w * 2^(i + j - 4) for base w (i, j in 0..3)."""
    w = 128
    s = build_schedule(12, 8, w, "mswa")
    for layer in range(12):
        for head in range(8):
            i, j = layer // 3, head // 2
            assert s.windows[layer][head] == w * 2 ** (i + j) // 16
    assert s.window_range() == (8, 512)
    assert s.cost() == 10800  # 15/16 * 15/16 * 12288 rounded as Eq. 11 says ~ 7/8 of SWA


@pytest.mark.parametrize("layers,heads", [(12, 8), (4, 4), (8, 16)])
def test_cost_equations_8_9_10(layers, heads):
    w = 256
    swa = build_schedule(layers, heads, w, "swa").cost()
    assert swa == w * heads * layers
    assert build_schedule(layers, heads, w, "mswa-h").cost() * 16 == swa * 15  # Eq. 8
    assert build_schedule(layers, heads, w, "mswa-l").cost() * 16 == swa * 15  # Eq. 9
    assert build_schedule(layers, heads, w, "mswa").cost() * 256 == swa * 225  # Eq. 10


def test_mswa_h_and_l_shapes():
    h = build_schedule(4, 8, 64, "mswa-h")
    assert all(row == (16, 16, 32, 32, 64, 64, 128, 128) for row in h.windows)
    l = build_schedule(4, 8, 64, "mswa-l")
    assert [row[0] for row in l.windows] == [16, 32, 64, 128]
    assert all(len(set(row)) == 1 for row in l.windows)


def test_full_and_swa():
    f = build_schedule(3, 2, None, "full")
    assert f.windows == ((None, None),) * 3
    assert f.cost(seq_len=100) == 600
    with pytest.raises(ScheduleError, match="seq_len"):
        f.cost()
    assert build_schedule(3, 2, 7, "swa").windows == ((7, 7),) * 3


def test_variations():
    assert group_multipliers("geometric") == (0.25, 0.5, 1, 2)
    assert group_multipliers("arithmetic") == (0.5, 0.75, 1, 1.25)
    arith = build_schedule(4, 4, 128, "mswa-l", "arithmetic")
    assert [row[0] for row in arith.windows] == [64, 96, 128, 160]  # Table 6's example
    dec = build_schedule(12, 8, 128, "mswa", "decreasing")
    inc = build_schedule(12, 8, 128, "mswa")
    assert dec.windows == inc.windows[::-1]
    assert dec.windows[0][-1] == 512 and dec.windows[-1][0] == 8
    assert dec.cost() == inc.cost()


def test_swaa_knobs():
    s = build_schedule(4, 4, 16, "swa", full_attn_layers=[0, -1], sink_tokens=4)
    assert s.windows[0] == (None,) * 4 and s.windows[3] == (None,) * 4
    assert s.windows[1] == (16,) * 4
    assert s.sink_tokens == 4
    # windowed heads pay for their sinks, full heads for the sequence
    assert s.cost(seq_len=100) == 2 * 4 * 100 + 2 * 4 * (16 + 4)


def test_explicit_windows():
    s = build_schedule(2, 4, windows="[[1, 2, 3, null], 5]")
    assert s.windows == ((1, 2, 3, None), (5, 5, 5, 5))
    assert s.max_window(0) is None and s.max_window(1) == 5
    assert json.loads(s.to_json()) == [[1, 2, 3, None], [5, 5, 5, 5]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_layers=12, num_heads=8, base_window=8, pattern="mswa"), "below 1.*multiple of 16"),
        (dict(num_layers=12, num_heads=8, base_window=100, pattern="mswa"),
         "not an integer.*multiple of 16"),
        # mswa + arithmetic: 3/4 x 3/4 = 9/16, so the base must be a multiple of 16 (not 8)
        (dict(num_layers=12, num_heads=8, base_window=8, pattern="mswa", variation="arithmetic"),
         "9/16 = 4.5 is not an integer.*multiple of 16"),
        (dict(num_layers=12, num_heads=8, base_window=6, pattern="mswa-l", variation="arithmetic"),
         "multiple of 4"),
        (dict(num_layers=12, num_heads=8, base_window=128, pattern="sliding"), "unknown attention pattern"),
        (dict(num_layers=12, num_heads=8, base_window=128, variation="cubic"), "unknown window variation"),
        (dict(num_layers=12, num_heads=8, base_window=None, pattern="swa"), "--base-window"),
        (dict(num_layers=2, num_heads=4, windows="[[1,2,3,4]]"), "one entry per layer"),
        (dict(num_layers=2, num_heads=4, windows="[[1,2,3], 4]"), "list of 4 windows"),
        (dict(num_layers=2, num_heads=4, windows="[[1,2"), "not valid JSON"),
        (dict(num_layers=2, num_heads=4, windows="[0, 4]"), "integers >= 1"),
        (dict(num_layers=2, num_heads=4, base_window=4, pattern="swa", full_attn_layers=[5]), "does not exist"),
        (dict(num_layers=2, num_heads=4, base_window=4, pattern="swa", sink_tokens=-1), "sink_tokens"),
    ],
)
def test_bad_schedules_name_the_fix(kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        build_schedule(**kwargs)



def test_groups_are_table1_ranges():
    """Layer t (1-indexed) is in group g iff g*l/G < t <= (g+1)*l/G; divisible counts give the
    paper's consecutive equal groups."""
    for count in range(1, 25):
        for groups in (1, 2, 3, 4):
            for i in range(count):
                g, t = group_of(i, count, groups), i + 1
                assert g * count < t * groups <= (g + 1) * count
                if count % groups == 0:
                    assert g == i // (count // groups)
    assert [group_of(i, 6, 4) for i in range(6)] == [0, 1, 1, 2, 3, 3]
    assert [group_of(i, 5, 4) for i in range(5)] == [0, 1, 2, 3, 3]


def test_layers_and_heads_not_divisible_by_the_groups():
    six = build_schedule(6, 8, 128, "mswa-l")  # layer groups 1, 2, 1, 2
    assert [row[0] for row in six.windows] == [32, 64, 64, 128, 256, 256]
    five = build_schedule(5, 8, 128, "mswa-l")  # layer groups 1, 1, 1, 2
    assert [row[0] for row in five.windows] == [32, 64, 128, 256, 256]
    heads6 = build_schedule(4, 6, 64, "mswa-h")  # head groups 1, 2, 1, 2
    assert all(row == (16, 32, 32, 64, 128, 128) for row in heads6.windows)
    both = build_schedule(6, 6, 128, "mswa")
    assert both.windows[0] == (8, 16, 16, 32, 64, 64)
    assert both.windows[-1] == (64, 128, 128, 256, 512, 512)
    assert both.cost() == sum(sum(row) for row in both.windows)


def test_arithmetic_two_readings():
    """Default: the arithmetic multipliers split layers and heads; the other reading keeps the
    heads' geometric split (the paper's example fixes the layer windows only)."""
    both = build_schedule(12, 8, 128, "mswa", "arithmetic")
    layers_only = build_schedule(12, 8, 128, "mswa", "arithmetic", head_variation="geometric")
    assert [row[4] for row in both.windows[::3]] == [64, 96, 128, 160]  # Table 6's example
    assert [row[4] for row in layers_only.windows[::3]] == [64, 96, 128, 160]
    assert both.windows[0][:: 2] == (32, 48, 64, 80)
    assert layers_only.windows[0][::2] == (16, 32, 64, 128)
    assert both.cost() == 12288 * 7 * 7 // 64  # (7/8)^2 of SWA
    assert layers_only.cost() == 12288 * 7 * 15 // 128  # 7/8 x 15/16
