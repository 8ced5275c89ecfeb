"""Causal linear attention with the 2nd-order Taylor feature map (Based / Hedgehog), in three forms.

The kernel replaces ``exp(q.k / sqrt(d))`` by its 2nd-order Taylor expansion

    K(q, k) = phi(q) . phi(k) = 1 + s + s^2 / 2,    s = scale * q.k   (scale = 1 / sqrt(d) by default)

with ``phi(x) = [1, x', (x' outer x') / sqrt(2)]`` and ``x' = sqrt(scale) * x``, i.e. for d = 16
``phi(x) = [1, x / d^(1/4), (x outer x) / (sqrt(2) sqrt(d))]`` with 1 + 16 + 256 = 273 features. The
outer product is symmetric, so a *compact* map keeps the diagonal (weight 1/sqrt(2)) and the strict
upper triangle (weight 1, standing for both (i, j) and (j, i)): 1 + d + d(d+1)/2 = 153 features, same
kernel (``fairseq_mswa.taylor.taylor_feature_count``).

``K = ((s + 1)^2 + 1) / 2 >= 1/2`` for every (q, k), so the causal normaliser of query ``i``,
``sum_{j <= i} K(q_i, k_j)``, is at least ``1/2`` and never reaches zero; ``eps`` (default 1e-6, as in
flash-linear-attention's Based kernels) is added to it only as a guard for user-supplied states.

Output of query ``i``:  ``o_i = sum_{j <= i} K(q_i, k_j) v_j / (sum_{j <= i} K(q_i, k_j) + eps)``.

Three implementations that agree (tests/test_linear_attention.py):

* ``linear_attention_quadratic``: masked (L, L) kernel matrix; O(L^2) memory; the reference.
* ``linear_attention_chunked``: chunks of ``chunk_size``; the quadratic form inside a chunk, the states
  ``S = sum phi(k) v^T`` (F, D) and ``z = sum phi(k)`` (F) carried across chunks; O(L) memory,
  differentiable with autograd, runs anywhere. The training path. Returns (out, final state or
  None), like the recurrent form.
* ``linear_attention_recurrent``: one token at a time from a state ``(S, z)``; the decoding path.

``fla_parallel_based`` runs flash-linear-attention's Triton ``parallel_based`` kernel (fla-core) when
it is importable and the tensors are on CUDA (on the CPU only under Triton's interpreter,
``TRITON_INTERPRET=1``: scripts/install_triton_interpreter.sh, tests/test_fla_interpreter.py).

Shapes: ``q``, ``k``: (B, H, L, d); ``v``: (B, H, L, D); state ``S``: (B, H, F, D), ``z``: (B, H, F).
Half-precision inputs are computed in float32 (the states are sums over the whole sequence) and the
output is cast back to the input dtype.
"""

import math
from typing import Optional, Tuple

import torch

from ..taylor import taylor_feature_count  # noqa: F401  (F = 153 for d = 16, compact)

DEFAULT_EPS = 1e-6

State = Tuple[torch.Tensor, torch.Tensor]  # (S: (B, H, F, D), z: (B, H, F))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _check_qkv(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (batch, heads, length, dim)")
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v {tuple(v.shape)} must match q {tuple(q.shape)} in (batch, heads, length)"
        )


def taylor_feature_map(
    x: torch.Tensor, compact: bool = True, scale: Optional[float] = None
) -> torch.Tensor:
    """2nd-order Taylor features: (..., d) -> (..., F), phi(q).phi(k) = 1 + s + s^2/2, s = scale q.k.

    ``scale`` defaults to ``1 / sqrt(d)``. ``compact`` keeps the upper triangle of the outer product
    (F = 1 + d + d(d+1)/2 = 153 for d = 16) instead of all of it (F = 1 + d + d^2 = 273).
    """
    d = x.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    xs = x * math.sqrt(scale)
    ones = torch.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)
    if compact:
        i, j = torch.triu_indices(d, d, device=x.device)
        weight = torch.ones(i.shape, dtype=x.dtype, device=x.device)
        weight[i == j] = 2 ** -0.5
        second = xs[..., i] * xs[..., j] * weight
    else:
        second = (xs.unsqueeze(-1) * xs.unsqueeze(-2)).flatten(-2) * 2 ** -0.5
    return torch.cat([ones, xs, second], dim=-1)


def taylor_kernel(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """K = 1 + s + s^2/2 with s = scale * q k^T: (..., Lq, d) x (..., Lk, d) -> (..., Lq, Lk)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return 1 + s + 0.5 * s * s


def linear_attention_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Reference: the masked (L, L) Taylor-kernel matrix. q, k (B, H, L, d), v (B, H, L, D) ->
    (B, H, L, D). O(L^2) memory: for tests and short sequences."""
    _check_qkv(q, k, v)
    dtype = _compute_dtype(q)
    q, k, v_c = q.to(dtype), k.to(dtype), v.to(dtype)
    length = q.shape[2]
    a = taylor_kernel(q, k, scale)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    a = a.masked_fill(~causal, 0.0)
    out = torch.matmul(a, v_c) / (a.sum(-1, keepdim=True) + eps)
    return out.to(v.dtype)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the chunks before each chunk (dim 2): [0, x0, x0 + x1, ...]."""
    zero = torch.zeros_like(x[:, :, :1])
    return torch.cat([zero, torch.cumsum(x[:, :, :-1], dim=2)], dim=2)


def _intra_chunk(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, scale: Optional[float]):
    """Inside each chunk, the causal quadratic form. qc, kc: (B, H, N, C, d); vc: (B, H, N, C, D).
    Returns (numerator (B, H, N, C, D), denominator (B, H, N, C))."""
    c = qc.shape[-2]
    a = taylor_kernel(qc, kc, scale)  # (B, H, N, C, C)
    causal = torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()
    a = a.masked_fill(~causal, 0.0)
    return torch.matmul(a, vc), a.sum(-1)


def _chunk_states(phi_k: torch.Tensor, vc: torch.Tensor, initial_state: Optional[State]):
    """Across chunks: each chunk's state and the exclusive prefix sums of the states before it.
    phi_k: (B, H, N, C, F) (padded keys zeroed); vc: (B, H, N, C, D); initial_state: (S_0
    (B, H, F, D), z_0 (B, H, F)) or None. Returns (kv (B, H, N, F, D), ksum (B, H, N, F),
    kv_prev, ksum_prev) with S_0 / z_0 added to the prefix sums."""
    kv = torch.matmul(phi_k.transpose(-1, -2), vc)  # (B, H, N, F, D)
    ksum = phi_k.sum(-2)  # (B, H, N, F)
    kv_prev = _exclusive_cumsum(kv)
    ksum_prev = _exclusive_cumsum(ksum)
    if initial_state is not None:
        s0, z0 = initial_state
        b, h, _, feats, dv = kv.shape
        if s0.shape != (b, h, feats, dv) or z0.shape != (b, h, feats):
            raise ValueError(
                f"initial_state must be (S {(b, h, feats, dv)}, z {(b, h, feats)}), got "
                f"({tuple(s0.shape)}, {tuple(z0.shape)}): was it built with the same compact flag?"
            )
        kv_prev = kv_prev + s0.to(kv.dtype).unsqueeze(2)
        ksum_prev = ksum_prev + z0.to(kv.dtype).unsqueeze(2)
    return kv, ksum, kv_prev, ksum_prev


def linear_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    scale: Optional[float] = None,
    eps: float = DEFAULT_EPS,
    compact: bool = True,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
):
    """Chunk-parallel causal Taylor linear attention: O(L) memory, autograd-friendly.

    The sequence is cut into N = ceil(L / C) chunks of C = ``chunk_size`` (the last one padded; padded
    keys are masked out of the states). For chunk n with queries Q_n and keys K_n:

        intra  = tril(K(Q_n, K_n)) V_n                    quadratic form inside the chunk (C x C)
        inter  = phi(Q_n) S_{<n},  S_{<n} = S_0 + sum_{m<n} phi(K_m)^T V_m      (F x D)
        den    = rowsum(tril(K(Q_n, K_n))) + phi(Q_n) z_{<n},  z_{<n} = z_0 + sum_{m<n} phi(K_m)
        out    = (intra + inter) / (den + eps)

    Args:
        q, k: (B, H, L, d); v: (B, H, L, D).
        chunk_size: C; memory is O(L (F D / C + C + F)) per head instead of O(L^2).
        initial_state: optional (S_0 (B, H, F, D), z_0 (B, H, F)) from earlier tokens.
        output_final_state: also compute the state after the last token.

    Returns:
        (out (B, H, L, D), final state (S, z) or None when not ``output_final_state``).
    """
    _check_qkv(q, k, v)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    dtype = _compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    b, h, length, d = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, max(length, 1))
    n = -(-length // c)
    pad = n * c - length
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc = q.view(b, h, n, c, d)
    kc = k.view(b, h, n, c, d)
    vc = v.view(b, h, n, c, dv)

    num, den = _intra_chunk(qc, kc, vc, scale)
    phi_q = taylor_feature_map(qc, compact, scale)  # (B, H, N, C, F)
    phi_k = taylor_feature_map(kc, compact, scale)
    if pad:
        valid = (torch.arange(n * c, device=q.device) < length).to(dtype).view(n, c, 1)
        phi_k = phi_k * valid
    kv, ksum, kv_prev, ksum_prev = _chunk_states(phi_k, vc, initial_state)
    num = num + torch.matmul(phi_q, kv_prev)
    den = den + (phi_q * ksum_prev.unsqueeze(-2)).sum(-1)
    out = (num / (den.unsqueeze(-1) + eps)).view(b, h, n * c, dv)[:, :, :length]
    out = out.to(out_dtype)
    if not output_final_state:
        return out, None
    s_final = kv_prev[:, :, -1] + kv[:, :, -1]
    z_final = ksum_prev[:, :, -1] + ksum[:, :, -1]
    return out, (s_final, z_final)


def empty_state(
    batch: int, heads: int, feature_dim: int, value_dim: int, compact: bool = True,
    dtype=torch.float32, device=None,
) -> State:
    """Zero state (S (B, H, F, D), z (B, H, F)) for ``linear_attention_recurrent``."""
    f = taylor_feature_count(feature_dim, compact)
    return (
        torch.zeros(batch, heads, f, value_dim, dtype=dtype, device=device),
        torch.zeros(batch, heads, f, dtype=dtype, device=device),
    )


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: Optional[State] = None,
    scale: Optional[float] = None,
    eps: float = DEFAULT_EPS,
    compact: bool = True,
) -> Tuple[torch.Tensor, State]:
    """Token-by-token decoding form: S += phi(k_t) v_t^T, z += phi(k_t), o_t = phi(q_t) S / (phi(q_t) z + eps).

    Args:
        q, k: (B, H, L, d); v: (B, H, L, D) (L is usually 1 when decoding).
        state: (S (B, H, F, D), z (B, H, F)) after the earlier tokens; None = empty.

    Returns:
        (out (B, H, L, D), new state). The state has a fixed size whatever the context length.
    """
    _check_qkv(q, k, v)
    out_dtype = v.dtype
    dtype = _compute_dtype(q)
    b, h, length, d = q.shape
    dv = v.shape[-1]
    if state is None:
        state = empty_state(b, h, d, dv, compact, dtype, q.device)
    s, z = state[0].to(dtype), state[1].to(dtype)
    phi_q = taylor_feature_map(q.to(dtype), compact, scale)  # (B, H, L, F)
    phi_k = taylor_feature_map(k.to(dtype), compact, scale)
    if s.shape != (b, h, phi_q.shape[-1], dv) or z.shape != s.shape[:3]:
        raise ValueError(
            f"state must be (S {(b, h, phi_q.shape[-1], dv)}, z {(b, h, phi_q.shape[-1])}), got "
            f"({tuple(s.shape)}, {tuple(z.shape)})"
        )
    v = v.to(dtype)
    outs = []
    for t in range(length):
        s = s + phi_k[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + phi_k[:, :, t]
        fq = phi_q[:, :, t]  # (B, H, F)
        num = torch.einsum("bhf,bhfd->bhd", fq, s)
        den = (fq * z).sum(-1, keepdim=True)
        outs.append(num / (den + eps))
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, dv)
    return out.to(out_dtype), (s, z)


def fla_parallel_based_available(x: torch.Tensor) -> bool:
    """True when fla-core's Triton Based kernel can run on ``x``: importable, and on CUDA (or
    on the CPU under Triton's interpreter, ``TRITON_INTERPRET=1``)."""
    if not (x.is_cuda or _interpreted()):
        return False
    try:
        from fla.ops.based import parallel_based  # noqa: F401
    except Exception:  # not installed, or no working triton
        return False
    return True


def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def fla_layout(parallel_based) -> str:
    """How fla-core's ``parallel_based`` takes q, k, v: ``"head_first"`` where it has a
    ``head_first`` parameter (fla-core <= 0.5: pass (B, H, T, K) with head_first=True, no
    transpose), else ``"time_first"`` (fla-core 0.6: (B, T, H, K) only)."""
    import inspect

    params = inspect.signature(parallel_based).parameters
    return "head_first" if "head_first" in params else "time_first"


def fla_parallel_based(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """flash-linear-attention's ``parallel_based`` (same kernel, eps 1e-6).

    q, k (B, H, L, d) with d <= 128, v (B, H, L, D) -> (B, H, L, D). Runs on CUDA, or on the CPU
    under Triton's interpreter (``TRITON_INTERPRET=1``: tests/test_fla_interpreter.py checks it
    against ``linear_attention_chunked``, forward and gradients, for fla-core 0.5.2 and 0.6.0).
    Layouts (:func:`fla_layout`): fla-core with ``head_first`` gets (B, H, L, .) and
    head_first=True; fla-core 0.6 (no ``head_first``) gets (B, L, H, .).
    """
    _check_qkv(q, k, v)
    if not (q.is_cuda or _interpreted()):
        raise RuntimeError(
            "fla's Based kernel runs on CUDA only (or under TRITON_INTERPRET=1): use "
            "linear_attention_chunked on CPU (--linear-impl torch)"
        )
    from fla.ops.based import parallel_based

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if fla_layout(parallel_based) == "head_first":
        o = parallel_based(q.contiguous(), k.contiguous(), v.contiguous(), scale=scale,
                           use_norm=True, head_first=True)
    else:  # (B, T, H, K)
        o = parallel_based(*(x.transpose(1, 2).contiguous() for x in (q, k, v)),
                           scale=scale, use_norm=True)
        o = o.transpose(1, 2)
    return o.to(v.dtype)
