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

Variations (Table 6): ``geometric`` (x2 per group, the paper's default), ``arithmetic``
(``w/2, 3w/4, w, 5w/4``: base 128 -> 64, 96, 128, 160, for layers and heads alike) and
``decreasing`` (the layer allocation reversed: deep layers get the small windows).

SWAA knobs (shared/papers/SWAA-notes.md) live here too: ``full_attn_layers`` keep full attention
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


def _exact_window(value: Fraction, what: str) -> int:
    if value < 1:
        raise ScheduleError(
            f"{what} = {value} is below 1: use a larger base window (MSWA needs base >= 16 with "
            "4 geometric groups) or fewer groups"
        )
    if value.denominator != 1:
        raise ScheduleError(
            f"{what} = {float(value):g} is not an integer: choose a base window divisible by the "
            "group factors (16 for geometric mswa, 8 for arithmetic) or give explicit --attn-windows"
        )
    return int(value)


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
    """
    if num_layers < 1 or num_heads < 1:
        raise ScheduleError(f"need layers >= 1 and heads >= 1, got {num_layers} x {num_heads}")
    if windows is not None and windows != "" and windows != []:
        rows = parse_explicit_windows(windows, num_layers, num_heads)
    else:
        rows = _pattern_rows(num_layers, num_heads, base_window, pattern, variation, groups)
    full = set()
    for i in full_attn_layers:
        if not -num_layers <= i < num_layers:
            raise ScheduleError(
                f"full-attention layer {i} does not exist: layers are 0..{num_layers - 1}"
            )
        full.add(i % num_layers)
    rows = tuple((None,) * num_heads if i in full else row for i, row in enumerate(rows))
    return WindowSchedule(windows=rows, sink_tokens=sink_tokens)


def _pattern_rows(num_layers, num_heads, base_window, pattern, variation, groups):
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
    mult = group_multipliers(variation, groups)
    vary_heads = pattern in ("mswa-h", "mswa")
    vary_layers = pattern in ("mswa-l", "mswa")
    if vary_heads and num_heads % groups:
        raise ScheduleError(
            f"{pattern} splits the {num_heads} heads of a layer into {groups} groups: use a "
            f"number of heads divisible by {groups}"
        )
    if vary_layers and num_layers % groups:
        raise ScheduleError(
            f"{pattern} splits the {num_layers} layers into {groups} groups: use a number of "
            f"layers divisible by {groups} (or explicit --attn-windows)"
        )
    layer_mult = mult[::-1] if variation == "decreasing" else mult
    rows = []
    for i in range(num_layers):
        w_i = Fraction(base_window)
        if vary_layers:
            w_i *= layer_mult[i * groups // num_layers]
        row = []
        for j in range(num_heads):
            w_ij = w_i * mult[j * groups // num_heads] if vary_heads else w_i
            row.append(_exact_window(w_ij, f"window of layer {i} head {j} ({pattern}, base {base_window})"))
        rows.append(tuple(row))
    return tuple(rows)
