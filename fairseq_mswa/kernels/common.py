"""What every window-attention backend shares: the window type, the backend names, the input
checks, "a window that reaches every key is full attention" and grouping heads by window.

Shapes (all backends): q (B, H, Lq, D); k, v (B, H, Lk, D) with Lk >= Lq (the first Lk - Lq keys
are a memory prefix); ``windows`` one entry per head (int >= 1, or None = full causal
attention); ``pos_scores`` (B, H, Lq, R) or None; ``sink_logits`` (H,) or None. Semantics: :mod:`fairseq_mswa.kernels.dense`.
"""

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..schedule import Window  # noqa: F401  (one head's window; None = full causal attention)

Windows = Sequence[Window]  # one per head

# ``window_attention(backend=...)`` and the ``--attn-backend`` flag; ``auto`` picks one of the rest
BACKENDS = ("auto", "dense", "blocked", "flex", "flash")


def check_inputs(q, k, v, windows: Windows, sink_tokens: int = 0, pos_scores=None,
                 dropout_p: float = 0.0, sink_logits=None) -> None:
    """Shape and argument checks common to all backends; raises ValueError naming the mismatch.

    ``window_attention`` runs them once per call; the public backend functions run them when
    called directly, their ``_unchecked`` forms (used by the dispatcher) do not."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (batch, heads, length, head_dim)")
    b, h, lq, _ = q.shape
    if k.shape[:2] != (b, h) or v.shape[:3] != k.shape[:3] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[2] < lq:
        raise ValueError(f"keys ({k.shape[2]}) must be at least as long as queries ({lq})")
    if len(windows) != h:
        raise ValueError(f"got {len(windows)} windows for {h} heads: give one window per head")
    for w in windows:
        if w is not None and w < 1:
            raise ValueError(f"window {w} < 1: windows must be >= 1 (None = full attention)")
    if sink_tokens < 0:
        raise ValueError("sink_tokens must be >= 0")
    if pos_scores is not None and (pos_scores.dim() != 4 or pos_scores.shape[:3] != (b, h, lq)):
        raise ValueError(
            f"pos_scores must be (batch, heads, queries, R) = ({b}, {h}, {lq}, R), "
            f"got {tuple(pos_scores.shape)}"
        )
    if sink_logits is not None and (sink_logits.dim() != 1 or sink_logits.shape[0] != h):
        raise ValueError(f"sink_logits must be (heads,) = ({h},): one learned sink logit per head, "
                         f"got {tuple(sink_logits.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def effective_window(window: Optional[int], lk: int) -> Optional[int]:
    """``None`` when the window reaches every key (w >= Lk is full causal attention)."""
    return None if window is None or window >= lk else int(window)


def window_groups(windows: Windows) -> List[Tuple[Optional[int], List[int]]]:
    """Heads grouped by window, in order of first appearance: [(w, [heads])] (None = full)."""
    groups: Dict[Optional[int], List[int]] = {}
    for h, w in enumerate(windows):
        groups.setdefault(w, []).append(h)
    return list(groups.items())


def group_heads(windows: Windows, lk: int) -> "HeadGroups":
    """Heads grouped by *effective* window for ``lk`` keys (a window reaching every key is full);
    one shared :class:`HeadGroups` per distinct grouping (its index tensors are built once)."""
    return _head_groups(tuple(effective_window(w, lk) for w in windows))


@lru_cache(maxsize=256)
def _head_groups(windows: Tuple[Window, ...]) -> "HeadGroups":
    return HeadGroups(windows)


class HeadGroups:
    """The one grouping of heads by window that every kernel, layer and cache uses.

    ``groups`` = [(w, [heads])] in order of first appearance (:func:`window_groups`); "group
    order" lists the heads group after group. A tensor with heads along ``dim`` (``unit`` rows per
    head, e.g. ``head_dim`` rows of a projection weight) is cut into one piece per group by
    :meth:`split` and put back into head order by :meth:`merge`. When every group is a run of
    consecutive heads (SWA, the MSWA schedules) both are views / one concatenation; otherwise one
    ``index_select`` reorders first (its backward is one scatter, not a zero gradient per group).

    Example: windows [4, 1, 4, 7] -> groups [(4, [0, 2]), (1, [1]), (7, [3])], order [0, 2, 1, 3].
    """

    def __init__(self, windows: Windows):
        self.windows = tuple(windows)
        self.groups = window_groups(self.windows)
        self.order = [h for _, heads in self.groups for h in heads]
        self.sizes = [len(heads) for _, heads in self.groups]
        self.in_order = self.order == list(range(len(self.order)))
        self._index_cache: Dict[Tuple[str, int, int, object], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    @property
    def num_heads(self) -> int:
        return len(self.windows)

    def rows(self, heads: Sequence[int], unit: int = 1):
        """Rows ``h * unit + [0, unit)`` of ``heads``: a slice when the heads are consecutive
        (a view), else a list of rows (an index)."""
        heads = list(heads)
        if heads == list(range(heads[0], heads[0] + len(heads))):
            return slice(heads[0] * unit, (heads[-1] + 1) * unit)
        return [h * unit + i for h in heads for i in range(unit)]

    def _index(self, kind: str, unit: int, device) -> torch.Tensor:
        key = (kind, unit, torch.device(device) if device is not None else None)
        idx = self._index_cache.get(key)
        if idx is None:
            heads = self.order if kind == "order" else self.inverse
            idx = torch.tensor([h * unit + i for h in heads for i in range(unit)], device=device)
            self._index_cache[key] = idx
        return idx

    @property
    def inverse(self) -> List[int]:
        """``inverse[h]`` = position of head h in group order."""
        return sorted(range(len(self.order)), key=self.order.__getitem__)

    def to_group_order(self, x: torch.Tensor, dim: int, unit: int = 1) -> torch.Tensor:
        """Heads along ``dim`` (``unit`` entries each) put into group order (x itself if it is)."""
        if self.in_order:
            return x
        return x.index_select(dim, self._index("order", unit, x.device))

    def split(self, x: torch.Tensor, dim: int, unit: int = 1) -> Tuple[torch.Tensor, ...]:
        """x with heads along ``dim`` -> one piece per group (group order)."""
        return self.to_group_order(x, dim, unit).split([n * unit for n in self.sizes], dim=dim)

    def merge(self, parts: Sequence[torch.Tensor], dim: int, unit: int = 1) -> torch.Tensor:
        """Pieces per group (as :meth:`split` gives) -> one tensor in head order."""
        out = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=dim)
        if self.in_order:
            return out
        return out.index_select(dim, self._index("inverse", unit, out.device))

    def __repr__(self) -> str:
        return "HeadGroups(" + ", ".join(f"w={w}:{heads}" for w, heads in self.groups) + ")"
