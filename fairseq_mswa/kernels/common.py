"""What every window-attention backend shares: the window type, the backend names, the input
checks, "a window that reaches every key is full attention" and grouping heads by window.

Shapes (all backends): q (B, H, Lq, D); k, v (B, H, Lk, D) with Lk >= Lq (the first Lk - Lq keys
are a memory prefix); ``windows`` one entry per head (int >= 1, or None = full causal
attention); ``pos_scores`` (B, H, Lq, R) or None. Semantics: :mod:`fairseq_mswa.kernels.dense`.
"""

from typing import Dict, List, Optional, Sequence, Tuple

Windows = Sequence[Optional[int]]  # one per head; None = full causal attention

# ``window_attention(backend=...)`` and the ``--attn-backend`` flag; ``auto`` picks one of the rest
BACKENDS = ("auto", "dense", "blocked", "flex", "flash")


def check_inputs(q, k, v, windows: Windows, sink_tokens: int = 0, pos_scores=None,
                 dropout_p: float = 0.0) -> None:
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
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def effective_window(window: Optional[int], lk: int) -> Optional[int]:
    """``None`` when the window reaches every key (w >= Lk is full causal attention)."""
    return None if window is None or window >= lk else int(window)


def window_groups(windows: Windows) -> List[Tuple[Optional[int], List[int]]]:
    """Heads grouped by window, in order of first appearance: [(w, [heads])] (None = full).
    The one grouping every kernel, layer and cache uses."""
    groups: Dict[Optional[int], List[int]] = {}
    for h, w in enumerate(windows):
        groups.setdefault(w, []).append(h)
    return list(groups.items())


def group_heads(windows: Windows, lk: int) -> List[Tuple[Optional[int], List[int]]]:
    """Heads grouped by *effective* window for ``lk`` keys (a window reaching every key is full)."""
    return window_groups([effective_window(w, lk) for w in windows])
