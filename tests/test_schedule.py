"""Window schedules: the paper's Table 1, variations, SWAA knobs, and errors that name the fix."""

import json

import pytest

from fairseq_mswa.schedule import (
    ScheduleError,
    build_schedule,
    group_multipliers,
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
        (dict(num_layers=12, num_heads=6, base_window=128, pattern="mswa"), "divisible by 4"),
        (dict(num_layers=10, num_heads=8, base_window=128, pattern="mswa-l"), "divisible by 4"),
        (dict(num_layers=12, num_heads=8, base_window=8, pattern="mswa"), "below 1"),
        (dict(num_layers=12, num_heads=8, base_window=100, pattern="mswa"), "not an integer"),
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

