"""What each attention backend can serve: the one home of the rules.

Both the kernels' dispatcher (:func:`fairseq_mswa.kernels.window_attention.window_attention`,
from the tensors it gets) and the model build (:func:`fairseq_mswa.models.window_config.check_backend`,
from the flags, before fairseq-train writes anything) describe what they need as a
:class:`Needs` and ask :func:`refusal`; :func:`select_backend` is ``auto``'s choice over the same
rules, and :func:`plans_passes` says where the CPU-fitted pass plan (:mod:`.plan`) applies.

Rules (each refusal names the backend that serves instead, :func:`instead`):

* ``dense``, ``blocked``: everything, any device (``dense`` is the O(Lq * Lk) reference);
* ``flex``: torch >= 2.5; no dropout; CPU: no backward (inference only) and, compiled, no
  log-sum-exp (learned sinks; ``compiled=False`` serves them); CUDA: head dim >= 16 (torch's
  Triton template, ``NYI: embedding dimension ... at least 16``); learned sinks in inference only;
* ``flash``: flash-attn 2 installed, CUDA, float16 / bfloat16, head dim <= 256; no sink tokens,
  no learned sinks, no distance scores (``pos_scores``).

``auto``: CUDA: flash, else flex, else blocked (the first that serves); CPU: dense up to
``DENSE_MAX_SCORES`` (query, key) scores per head, else blocked.
"""

import functools
from typing import NamedTuple, Optional

import torch

from .common import BACKENDS

# On CPU, `auto` uses the dense reference up to this many (query, key) scores per head: there
# one masked matmul beats the blocked layout (fwd+bwd, 8 heads, windows 2..16: dense is faster
# up to L=128 and 2x slower at L=256; scripts/bench_attention.py --tiny measures it).
DENSE_MAX_SCORES = 128 * 128

FLEX_CUDA_MIN_HEAD_DIM = 16  # torch/_inductor/kernel/flex/flex_attention.py (tl.dot)
FLASH_MAX_HEAD_DIM = 256


class Needs(NamedTuple):
    """What one attention call (or every call of a model) needs from a backend.

    ``device``: "cpu" / "cuda" / ...; ``dtype``: None where not known yet (the model build);
    ``head_dim``: None where not known; ``grad``: a backward will run; the rest: whether the
    call has attention dropout, distance scores, sink tokens, learned sinks."""

    device: str
    dtype: Optional[torch.dtype] = None
    head_dim: Optional[int] = None
    grad: bool = False
    dropout: bool = False
    pos_scores: bool = False
    sink_tokens: bool = False
    learned_sinks: bool = False


def needs_of(q, k, v, sink_tokens=0, pos_scores=None, dropout_p=0.0, sink_logits=None) -> Needs:
    """The :class:`Needs` of one call: q (B, H, Lq, D), k / v (B, H, Lk, D), pos_scores
    (B, H, Lq, R) or None, sink_logits (H,) or None."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, pos_scores, sink_logits))
    return Needs(device=q.device.type, dtype=q.dtype, head_dim=int(q.shape[-1]), grad=grad,
                 dropout=dropout_p > 0, pos_scores=pos_scores is not None,
                 sink_tokens=bool(sink_tokens), learned_sinks=sink_logits is not None)


def unsupported_reason(backend: str, needs: Needs, compiled: bool = True) -> Optional[str]:
    """None when ``backend`` serves ``needs``, else why not (one sentence, no remedy: see
    :func:`refusal`). ``compiled``: flex through ``torch.compile`` (the default) or eager."""
    if backend in ("dense", "blocked"):
        return None
    if backend == "flex":
        return _flex_reason(needs, compiled)
    if backend == "flash":
        return _flash_reason(needs)
    raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _flex_reason(n: Needs, compiled: bool) -> Optional[str]:
    if flex_import_error():
        return flex_import_error()
    if n.dropout:
        return "FlexAttention has no dropout (attention dropout > 0)"
    if n.device == "cpu" and n.grad:
        return "FlexAttention has no backward on CPU (it serves CPU inference only)"
    if n.learned_sinks and n.grad:
        # the sink is folded in through the returned log-sum-exp, whose gradient this project
        # has not verified on a GPU: training with learned sinks runs on blocked
        return "learned sinks are trained on blocked (flex folds them in at inference only)"
    if n.device == "cpu" and n.learned_sinks and compiled:
        return ("compiled FlexAttention on CPU has no log-sum-exp (return_lse), which learned "
                "sinks need")
    if n.device == "cuda" and n.head_dim is not None and n.head_dim < FLEX_CUDA_MIN_HEAD_DIM:
        return (f"FlexAttention on CUDA needs head_dim >= {FLEX_CUDA_MIN_HEAD_DIM} "
                f"(got {n.head_dim})")
    return None


def _flash_reason(n: Needs) -> Optional[str]:
    if n.learned_sinks:
        return "flash-attn 2 has no learned sinks"
    if n.pos_scores:
        return "flash-attn cannot add pos_scores (a distance-dependent score term)"
    if n.sink_tokens:
        return "flash-attn has no sink tokens"
    if n.device != "cuda":
        return f"flash-attn needs a CUDA GPU (got device {n.device})"
    if n.dtype is not None and n.dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs float16/bfloat16, got {n.dtype}"
    if n.head_dim is not None and n.head_dim > FLASH_MAX_HEAD_DIM:
        return f"flash-attn supports head_dim <= {FLASH_MAX_HEAD_DIM}, got {n.head_dim}"
    err = flash_import_error()
    if err is not None:
        return err
    return None


def select_backend(needs: Needs, lq: Optional[int] = None, lk: Optional[int] = None) -> str:
    """``auto``'s backend for ``needs`` (``lq`` x ``lk`` scores per head, when known)."""
    if needs.device == "cuda":
        for name in ("flash", "flex"):
            if unsupported_reason(name, needs) is None:
                return name
        return "blocked"
    return cpu_auto_backend(lq, lk)


def cpu_auto_backend(lq: Optional[int], lk: Optional[int]) -> str:
    """``auto`` on CPU: dense for at most ``DENSE_MAX_SCORES`` scores per head, else blocked."""
    if lq is not None and lk is not None and lq * lk <= DENSE_MAX_SCORES:
        return "dense"
    return "blocked"


def instead(needs: Needs) -> str:
    """The backend to name in a refusal: ``auto``'s choice (blocked where auto would run the
    dense reference, which is for tiny problems)."""
    name = select_backend(needs)
    return "blocked" if name == "dense" else name


def refusal(backend: str, needs: Needs, compiled: bool = True, flag: bool = False
            ) -> Optional[str]:
    """None when ``backend`` serves ``needs``, else the reason and the backend that serves:
    "<reason>. Use backend='blocked' (or 'auto')", or with ``flag`` (the model build's
    message) "<reason>: use --attn-backend blocked (or auto)"."""
    reason = unsupported_reason(backend, needs, compiled)
    if reason is None:
        return None
    other = instead(needs)
    if flag:
        return f"{reason}: use --attn-backend {other} (or auto)"
    return f"{reason}. Use backend={other!r} (or 'auto')"


def plans_passes(backend: str, device: str) -> bool:
    """Whether a layer's ``auto`` strategy lays its window groups out by :mod:`.plan`'s
    CPU-fitted constants (which describe the CPU's dense / blocked layouts): on CPU with
    ``auto`` or ``blocked``. Elsewhere (CUDA; flex, whose graphs are one per layer shape) a layer
    is one kernel call (``merged``) until a GPU measurement says otherwise."""
    return device == "cpu" and backend in ("auto", "blocked")


# --- is the backend installed? (probed here, so that flex.py and flash.py import this module
# and not the reverse; once per process: what is installed does not change while it runs, and a
# failed import searches sys.path again on every try, about 30 us, which ``auto`` would pay on
# every attention call on CUDA) -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def flex_import_error() -> Optional[str]:
    """None when torch has FlexAttention, else why not (a sentence)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as e:
        return f"torch.nn.attention.flex_attention is unavailable ({e}); needs torch >= 2.5"
    return None


@functools.lru_cache(maxsize=None)
def flash_import():
    """flash-attn's ``flash_attn_func``, or the error (ImportError or other) of importing it."""
    try:
        from flash_attn import flash_attn_func
    except Exception as e:  # not installed, or built for another torch/CUDA
        return e
    return flash_attn_func


@functools.lru_cache(maxsize=None)
def flash_import_error() -> Optional[str]:
    """None when flash-attn imports, else why not (a sentence)."""
    f = flash_import()
    if not isinstance(f, Exception):
        return None
    return (f"flash-attn 2 is not importable ({type(f).__name__}: {f}); the package index has "
            f"it as an sdist only (a CUDA build of about an hour: pip install flash-attn)")
