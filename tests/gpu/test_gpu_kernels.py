"""Every attention backend against the dense reference on the GPU: float32 and bfloat16, outputs
and the gradients of q, k, v and the distance scores.

The reference is ``dense`` in float64 on the same device, from the same (dtype-rounded) inputs.
Error = ||x - ref|| / ||ref|| (Frobenius, over the whole tensor). Tolerances:

* float32: 1e-4 for outputs and gradients (float32 accumulation order differs between kernels;
  a wrong mask or a missed key gives errors of order 1e-1 .. 1);
* bfloat16: 2e-2 for outputs, 3e-2 for gradients (inputs and results rounded to 8 mantissa bits,
  unit roundoff 2^-9 = 2e-3 per element, the softmax and its backward in low precision for
  ``dense`` itself).

A backend that cannot serve a case (flash-attn not installed, or no sinks / distance scores in
flash-attn; FlexAttention has no CPU backward) is skipped with ``unsupported_reason``'s sentence
(:mod:`fairseq_mswa.kernels.capabilities`),
so the report lists what ran and why the rest did not. ``auto`` is tested as the backend it picks.
Runs on CUDA, or on the CPU in float32 with MSWA_GPU_REHEARSAL=1 (``gpu_mode``).
"""

import pytest
import torch
from gpu_mode import DEVICE, DTYPES, requires_device, size

from fairseq_mswa.kernels.dense import dense_window_attention
from fairseq_mswa.kernels.window_attention import select_backend, unsupported_reason, window_attention

pytestmark = requires_device

TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 3e-2)}  # (outputs, gradients)
BACKENDS = ("dense", "blocked", "flex", "flash", "auto")

# (windows of 8 heads, memory keys, sink tokens, R = distance-score columns or None), at the GPU
# size (queries 512, memory 127: an XL segment with the memory a base-128 window needs); the
# rehearsal keeps every other head and divides windows, memory and R by 8.
CASES = {
    "mswa-memory": ([16, 16, 32, 32, 64, 64, 128, 128], 127, 0, None),
    "sinks-memory-full-heads": ([16, 32, 64, None, 16, 32, 64, None], 127, 4, None),
    "xl-position-term": ([16, 16, 32, 32, 64, 64, 128, None], 127, 0, 128),
}
# What this module compiles (the step's time is mostly compiling): flex with grad in bfloat16
# only (float32 flex is the CPU tests' dense check), one graph per case = 3 fwd+bwd Triton
# compiles, plus test_flex_compiled_inference's one forward graph: 4 flex graphs in all.
FLEX_DTYPES = (torch.bfloat16,)
BATCH, QUERIES, HEAD_DIM = size(2, 1), size(512, 64), size(64, 16)


def _case(name):
    windows, mem, sinks, r = CASES[name]
    if DEVICE == "cpu":
        windows = [None if w is None else max(1, w // 8) for w in windows[::2]]
        mem, r = mem // 8, None if r is None else r // 8
    return windows, mem, sinks, r


def _inputs(windows, mem, r, dtype):
    """Leaf tensors rounded to ``dtype`` on the device, their float64 copies, and an upstream
    gradient (the same random numbers for every backend and dtype)."""
    g = torch.Generator().manual_seed(0)
    h = len(windows)
    shapes = [(BATCH, h, QUERIES, HEAD_DIM), (BATCH, h, QUERIES + mem, HEAD_DIM),
              (BATCH, h, QUERIES + mem, HEAD_DIM)]
    if r is not None:
        shapes.append((BATCH, h, QUERIES, r))
    base = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    upstream = torch.randn(shapes[0], generator=g)
    low = [t.to(DEVICE).requires_grad_() for t in base]
    ref = [t.to(DEVICE, torch.float64).requires_grad_() for t in base]
    return low, ref, upstream.to(DEVICE)


def _rel_err(x, ref):
    x, ref = x.detach().double(), ref.detach()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _run(fn, tensors, upstream):
    q, k, v, *ps = tensors
    out = fn(q, k, v, ps[0] if ps else None)
    grads = torch.autograd.grad(out, tensors, upstream.to(out.dtype))
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_dense(backend, case, dtype):
    windows, mem, sinks, r = _case(case)
    low, ref, upstream = _inputs(windows, mem, r, dtype)
    q, k, v, *ps = low
    pos = ps[0] if ps else None
    reason = None if backend == "auto" else unsupported_reason(backend, q, k, v, windows, sinks, pos)
    if reason is not None:
        pytest.skip(f"{backend} on {DEVICE} {dtype}: {reason}")
    if backend == "flex" and DEVICE == "cuda" and dtype not in FLEX_DTYPES:
        pytest.skip(f"flex with grad runs in {FLEX_DTYPES} only here (each dtype is a compile)")
    used = select_backend(q, k, v, windows, sinks, pos) if backend == "auto" else backend

    ref_out, ref_grads = _run(
        lambda q, k, v, p: dense_window_attention(q, k, v, windows, sinks, p), ref, upstream)
    out, grads = _run(
        lambda q, k, v, p: window_attention(q, k, v, windows, sink_tokens=sinks, pos_scores=p,
                                            backend=backend), low, upstream)
    assert out.dtype == dtype and out.device.type == DEVICE
    tol_out, tol_grad = TOL[dtype]
    errors = {"out": _rel_err(out, ref_out)}
    errors.update({f"grad_{n}": _rel_err(a, b) for n, a, b in zip("qkvp", grads, ref_grads)})
    print(f"{backend} (runs {used}) {case} {dtype}: " + ", ".join(f"{n} {e:.2e}" for n, e in errors.items()))
    assert errors["out"] <= tol_out, f"{used}: output error {errors['out']:.3e} > {tol_out}"
    for name, err in errors.items():
        if name != "out":
            assert err <= tol_grad, f"{used}: {name} error {err:.3e} > {tol_grad}"


def test_flex_compiled_inference():
    """Compiled flex forward (no grad: the CPU inductor template in the rehearsal, Triton on a
    GPU) against dense: the XL-shaped case with 2 sink tokens and memory."""
    windows, mem, _, r = _case("xl-position-term")
    low, ref, _ = _inputs(windows, mem, r, torch.float32)
    q, k, v, ps = (t.detach() for t in low)
    with torch.no_grad():
        out = window_attention(q, k, v, windows, sink_tokens=2, pos_scores=ps, backend="flex")
        rq, rk, rv, rp = (t.detach() for t in ref)
        want = dense_window_attention(rq, rk, rv, windows, 2, rp)
    err = _rel_err(out, want)
    print(f"compiled flex inference on {DEVICE}: output error {err:.2e}")
    assert err <= 1e-4
