"""Window schedules: where the window of head j in layer i is decided.

A *schedule* gives every attention head of every layer its window ``w``: a query sees the
``w`` keys ending at itself (itself included). ``None`` marks a head with full causal
attention. This module is pure Python (no torch, no fairseq) so that the cost model and the
paper's tables can be checked anywhere.

Patterns (MSWA paper, Sec. 3-4, Table 1), for base window ``w`` and ``groups = 4``:

* ``full``    every head full attention.
* ``swa``     every head window ``w``.
* ``mswa-h``  heads in 4 groups with ``w/4, w/2, w, 2w`` in every layer (Sec. 4.1).
* ``mswa-l``  layers in 4 groups with ``w/4, w/2, w, 2w``, all heads of a layer alike (Sec. 4.2).
* ``mswa``    both: layer group base ``w_i`` in ``w/4 .. 2w``, heads ``w_i/4 .. 2 w_i`` (Sec. 4.3).

Groups are ranges (Table 1): with ``l`` layers and ``G`` groups, the 1-indexed layer ``t`` is in
group ``g`` (0-indexed) iff ``g * l / G < t <= (g + 1) * l / G``, i.e. ``g = ceil(t * G / l) - 1``
(:func:`group_of`); heads likewise within a layer. When ``G`` divides ``l`` the groups are the
``l / G`` consecutive layers of the paper; otherwise the ranges give unequal groups (``l = 6``:
sizes 1, 2, 1, 2; ``l = 5``: 1, 1, 1, 2), and with ``l < G`` some groups are empty.

Variations (Table 6): ``geometric`` (x2 per group, the paper's default), ``arithmetic``
(``w/2, 3w/4, w, 5w/4``: base 128 -> 64, 96, 128, 160) and ``decreasing`` (the layer allocation
reversed: deep layers get the small windows). The paper's arithmetic example fixes only the layer
windows; here the arithmetic multipliers split the heads too (the default reading). The other
reading, heads split geometrically, is ``head_variation="geometric"``; ``python -m
fairseq_mswa.cost --table 6`` prints the cost of both.

SWAA knobs (Yu et al., "SWAA: Sliding Window Attention Adaptation ...", arXiv 2512.10411) live here too: ``full_attn_layers`` keep full attention
whatever the pattern, and ``sink_tokens`` k makes the first k keys visible to every query.

``WindowSchedule.cost`` is the one cost a schedule knows (Sec. 3.2): the sum over all heads of
all layers of the keys a query attends to (a full-attention head counts the sequence length
``n``; sink tokens add ``k`` per windowed head). Everything else about cost (linear-attention
layers, the paper's tables) lives in :mod:`fairseq_mswa.cost`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple, Union

import math

PATTERNS = ("full", "swa", "mswa-h", "mswa-l", "mswa")
VARIATIONS = ("geometric", "arithmetic", "decreasing")

Window = Optional[int]  # None = full causal attention


class ScheduleError(ValueError):
    """A window schedule that cannot be built; the message names the fix."""


def group_multipliers(variation: str, groups: int = 4) -> Tuple[Fraction, ...]:
    """Window multipliers of the ``groups`` groups, shallow-to-deep / first-to-last head.

    With anchor a = max(groups - 2, 0) (the group that keeps the base window):
    geometric: 2^(g - a)               -> 1/4, 1/2, 1, 2 for 4 groups
    arithmetic: 1 + (g - a) / groups   -> 1/2, 3/4, 1, 5/4 for 4 groups
    ``decreasing`` uses the geometric multipliers (the caller reverses the layer order).
    """
    if variation not in VARIATIONS:
        raise ScheduleError(
            f"unknown window variation {variation!r}: use one of {', '.join(VARIATIONS)}"
        )
    if groups < 1:
        raise ScheduleError(f"groups must be >= 1, got {groups}")
    anchor = max(groups - 2, 0)
    if variation == "arithmetic":
        return tuple(1 + Fraction(g - anchor, groups) for g in range(groups))
    return tuple(Fraction(2) ** (g - anchor) for g in range(groups))


def group_of(index: int, count: int, groups: int) -> int:
    """Group (0-indexed) of the 0-indexed layer / head ``index`` out of ``count`` split into
    ``groups`` ranges: the 1-indexed ``t = index + 1`` is in group ``g`` iff
    ``g * count / groups < t <= (g + 1) * count / groups`` (Table 1's ranges).
    Equal to ``index // (count // groups)`` when ``groups`` divides ``count``."""
    if not 0 <= index < count:
        raise ScheduleError(f"index {index} is outside 0..{count - 1}")
    return ((index + 1) * groups - 1) // count


@dataclass(frozen=True)
class WindowSchedule:
    """Windows of every head of every layer: ``windows[layer][head]`` (None = full)."""

    windows: Tuple[Tuple[Window, ...], ...]
    sink_tokens: int = 0

    def __post_init__(self):
        if not self.windows:
            raise ScheduleError("a window schedule needs at least one layer")
        heads = len(self.windows[0])
        for i, layer in enumerate(self.windows):
            if len(layer) != heads or heads == 0:
                raise ScheduleError(
                    f"layer {i} has {len(layer)} heads, layer 0 has {heads}: every layer "
                    "needs the same (non-zero) number of heads"
                )
            for j, w in enumerate(layer):
                if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                    raise ScheduleError(
                        f"window of layer {i} head {j} is {w!r}: windows must be integers >= 1 "
                        "(or null for full attention); use a larger base window"
                    )
        if not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ScheduleError(f"sink_tokens must be an integer >= 0, got {self.sink_tokens!r}")

    @property
    def num_layers(self) -> int:
        return len(self.windows)

    @property
    def num_heads(self) -> int:
        return len(self.windows[0])

    def layer(self, i: int) -> Tuple[Window, ...]:
        """Windows of the heads of layer ``i``."""
        return self.windows[i]

    def max_window(self, i: int) -> Window:
        """Largest window of layer ``i``; None if one of its heads has full attention."""
        layer = self.windows[i]
        return None if any(w is None for w in layer) else max(layer)

    def cost(self, seq_len: Optional[int] = None) -> int:
        """Sum over all heads of all layers of the keys each query attends to (Sec. 3.2).

        A full head counts ``seq_len`` (required when the schedule has full heads); a windowed
        head counts ``w`` plus the sink tokens.
        """
        total = 0
        for layer in self.windows:
            for w in layer:
                if w is None:
                    if seq_len is None:
                        raise ScheduleError("the cost of full attention needs seq_len")
                    total += seq_len
                else:
                    total += w + self.sink_tokens
        return total

    def window_range(self) -> Tuple[Window, Window]:
        """(smallest, largest) window; None stands for full attention."""
        flat = [w for layer in self.windows for w in layer]
        finite = [w for w in flat if w is not None]
        lo = min(finite) if finite else None
        hi = None if any(w is None for w in flat) else max(finite)
        return lo, hi

    def to_json(self) -> str:
        return json.dumps([list(layer) for layer in self.windows])


def parse_layer_list(spec) -> List[int]:
    """``--full-attn-layers``: '0,11' -> [0, 11]; also accepts a list or an int."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, (list, tuple)):
        return [int(x) for x in spec]
    try:
        return [int(x) for x in str(spec).replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ScheduleError(
            f"--full-attn-layers must be comma-separated layer indices such as '0,11', got {spec!r}"
        ) from None


def parse_explicit_windows(spec: Union[str, Sequence], num_layers: int, num_heads: int):
    """Parse an explicit schedule: a JSON list with one entry per layer, each entry either one
    window for the whole layer or a list of one window per head (null = full attention)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ScheduleError(
                f"--attn-windows is not valid JSON ({e}); example for 2 layers x 4 heads: "
                "'[[8,16,32,64],[16,32,64,null]]'"
            ) from None
    if not isinstance(spec, (list, tuple)) or len(spec) != num_layers:
        got = len(spec) if isinstance(spec, (list, tuple)) else type(spec).__name__
        raise ScheduleError(
            f"--attn-windows needs one entry per layer ({num_layers} layers), got {got}"
        )
    rows = []
    for i, entry in enumerate(spec):
        if entry is None or isinstance(entry, int):
            rows.append((entry,) * num_heads)
        elif isinstance(entry, (list, tuple)) and len(entry) == num_heads:
            rows.append(tuple(entry))
        else:
            raise ScheduleError(
                f"--attn-windows entry of layer {i} must be one window or a list of {num_heads} "
                f"windows (one per head), got {entry!r}"
            )
    return tuple(rows)


def build_schedule(
    num_layers: int,
    num_heads: int,
    base_window: Optional[int] = None,
    pattern: str = "mswa",
    variation: str = "geometric",
    groups: int = 4,
    windows: Union[None, str, Sequence] = None,
    full_attn_layers: Sequence[int] = (),
    sink_tokens: int = 0,
    head_variation: Optional[str] = None,
) -> WindowSchedule:
    """Window of every head of every layer.

    Args:
        num_layers, num_heads: shape of the model (layers here are the *windowed* layers; a
            hybrid model maps them onto its local-attention layers).
        base_window: the paper's ``w`` (ignored for ``full``).
        pattern: one of ``PATTERNS``.
        variation: one of ``VARIATIONS``.
        groups: number of head groups and of layer groups (the paper uses 4).
        windows: explicit per-layer / per-head windows (JSON string or list); overrides
            ``pattern``.
        full_attn_layers: layer indices that keep full attention (SWAA "non-sliding layers").
        sink_tokens: k first keys every query also sees (SWAA "keep first").
        head_variation: variation of the head groups when it differs from ``variation`` (the
            other reading of the paper's arithmetic example: ``variation="arithmetic",
            head_variation="geometric"``); None = ``variation``.
    """
    if num_layers < 1 or num_heads < 1:
        raise ScheduleError(f"need layers >= 1 and heads >= 1, got {num_layers} x {num_heads}")
    if windows is not None and windows != "" and windows != []:
        rows = parse_explicit_windows(windows, num_layers, num_heads)
    else:
        rows = _pattern_rows(num_layers, num_heads, base_window, pattern, variation, groups,
                             head_variation)
    full = set()
    for i in full_attn_layers:
        if not -num_layers <= i < num_layers:
            raise ScheduleError(
                f"full-attention layer {i} does not exist: layers are 0..{num_layers - 1}"
            )
        full.add(i % num_layers)
    rows = tuple((None,) * num_heads if i in full else row for i, row in enumerate(rows))
    return WindowSchedule(windows=rows, sink_tokens=sink_tokens)


def _pattern_rows(num_layers, num_heads, base_window, pattern, variation, groups,
                  head_variation=None):
    if pattern not in PATTERNS:
        raise ScheduleError(
            f"unknown attention pattern {pattern!r}: use one of {', '.join(PATTERNS)} "
            "(or explicit --attn-windows)"
        )
    if pattern == "full":
        return tuple((None,) * num_heads for _ in range(num_layers))
    if base_window is None or not isinstance(base_window, int) or base_window < 1:
        raise ScheduleError(
            f"pattern {pattern!r} needs --base-window N with N >= 1, got {base_window!r}"
        )
    layer_mult = group_multipliers(variation, groups)
    if variation == "decreasing":
        layer_mult = layer_mult[::-1]
    head_variation = variation if head_variation is None else head_variation
    head_mult = group_multipliers("geometric" if head_variation == "decreasing" else head_variation,
                                  groups)
    vary_heads = pattern in ("mswa-h", "mswa")
    vary_layers = pattern in ("mswa-l", "mswa")
    # multiplier of every (layer, head): layer group x head group (Table 1's ranges)
    mult = [
        [
            (layer_mult[group_of(i, num_layers, groups)] if vary_layers else Fraction(1))
            * (head_mult[group_of(j, num_heads, groups)] if vary_heads else Fraction(1))
            for j in range(num_heads)
        ]
        for i in range(num_layers)
    ]
    _check_base_window(base_window, [m for row in mult for m in row], pattern, variation, groups)
    return tuple(tuple(int(base_window * m) for m in row) for row in mult)


def _check_base_window(base_window, multipliers, pattern, variation, groups) -> None:
    """Every window ``base_window * m`` must be an integer >= 1; else name the base windows
    that work: multiples of the least common denominator of the multipliers in use, at least
    1 / (smallest multiplier)."""
    divisor = 1
    for m in set(multipliers):
        divisor = divisor * m.denominator // math.gcd(divisor, m.denominator)
    smallest = min(multipliers)
    least = divisor * max(1, math.ceil(1 / (smallest * divisor)))
    what = f"{pattern} with {groups} {variation} groups"
    bad = [m for m in multipliers if base_window * m < 1 or (base_window * m).denominator != 1]
    if not bad:
        return
    value = base_window * bad[0]
    problem = "is below 1" if value < 1 else f"= {float(value):g} is not an integer"
    raise ScheduleError(
        f"base window {base_window} x window multiplier {bad[0]} {problem}: {what} needs a "
        f"base window that is a multiple of {divisor} and at least {least} (multipliers "
        f"{', '.join(str(x) for x in sorted(set(multipliers)))}), or explicit --attn-windows"
    )
