"""FlexAttention backend: every head and window in one kernel via a per-head mask.

Semantics are those of :func:`fairseq_mswa.kernels.dense.dense_window_attention`.

* ``mask_mod`` reads each head's window from a (H,) tensor (full heads get a window longer
  than any sequence), shifts queries by the memory length and adds the sink keys;
* ``score_mod`` adds ``pos_scores[b, h, i, min(distance, R - 1)]`` when given;
* learned sinks (``sink_logits``): FlexAttention returns the log-sum-exp ``lse`` of each row's
  visible scores; a sink of logit ``s`` scales the row's output by ``exp(lse) / (exp(lse) +
  exp(s)) = sigmoid(lse - s)`` (the dense reference's extra softmax column, folded in);
* block masks are cached in :data:`BLOCK_MASK_CACHE`, an explicit LRU owned by this module,
  keyed by (Lq, Lk, windows, sinks, device, block size); :func:`clear_block_mask_cache` empties it;
* ``block_size=(q_block, kv_block)``: the block mask's tiles (default torch's 128 x 128); a
  smaller one also sets the Triton tiles (``kernel_options``: ``BLOCK_M``/``BLOCK_N`` must divide
  the block mask's sizes, torch's ``_inductor/kernel/flex/flex_attention.py``).

Graphs (``compiled=True``): one ``torch.compile(flex_attention, dynamic=False, fullgraph=True)``
per process (:func:`compiled_flex_attention`). Nothing that changes between calls is a Python
integer captured by ``mask_mod`` / ``score_mod``: the memory length and the sink count are 0-d
tensors stored with the block mask, the windows a (H,) tensor, R is read from ``pos_scores``'
shape. So a graph is made per distinct static signature only: (B, H, Lq, Lk, D, R, pos_scores
or not, lse or not, the block mask's tile counts and grad mode). Shapes are static by choice on
every device: torch's CPU template miscompiles symbolic query lengths (tests/test_flex_cpu.py,
the xfail reproduction), and a static signature is what makes the count below exact.
Dynamo's ``recompile_limit`` is set to :data:`RECOMPILE_LIMIT` for these calls only (torch's
default 8 is below what one model makes, and past it torch would run flex *unfused*, building
every (B, H, Lq, Lk) score, with one warning); the call is ``fullgraph=True``, so exceeding it
raises :class:`FlexGraphLimitError` instead. :func:`graph_signature` is the signature a call
makes: ``tests/test_flex_graphs.py`` counts them for the paper's 12 x 8 model.

Limits: :mod:`.capabilities` says what this backend can serve (CPU: inference only, compiled
without learned sinks; CUDA: head dim >= 16; no dropout). ``compiled=False`` runs torch's
unfused eager path (materialises all scores: a correctness check).
"""

from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple

import torch

from .capabilities import flex_import_error, needs_of, refusal
from .common import Windows, check_inputs, effective_window

IMPORT_ERROR: Optional[str] = flex_import_error()  # None where torch has FlexAttention
if IMPORT_ERROR is None:  # PyTorch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
else:  # pragma: no cover - depends on the installed torch
    create_block_mask = flex_attention = None

# torch's default block mask tile (create_block_mask's BLOCK_SIZE)
DEFAULT_BLOCK_SIZE = (128, 128)

# Dynamo's recompile limit while a compiled flex call runs: graphs one process may make of
# flex_attention before a call raises FlexGraphLimitError. One training run of the paper's
# 12 x 8 MSWA model (segments of 512, memory, validation, a short last segment) makes
# PAPER_MODEL_GRAPHS = 4 layer groups x 5 (train without / with memory, eval without / with
# memory, the short segment): tests/test_flex_graphs.py asserts it. The limit is three such
# runs (another batch size at evaluation, a second model in the process) and a few more; a
# process that makes more raises instead of running unfused (raise it for a known shape set).
PAPER_MODEL_GRAPHS = 20
RECOMPILE_LIMIT = 3 * PAPER_MODEL_GRAPHS + 4

# the torch.compile backend of compiled_flex_attention: "inductor" (the fused kernels);
# tests set "eager" to count Dynamo's graphs without compiling them
COMPILE_BACKEND = "inductor"


class BlockMaskCache:
    """A small LRU of FlexAttention block masks: ``get(key, build)`` returns the cached mask or
    builds, stores and returns it, evicting the least recently used beyond ``maxsize``."""

    def __init__(self, maxsize: int = 32):
        self.maxsize = maxsize
        self._items: "OrderedDict[Tuple, object]" = OrderedDict()

    def get(self, key, build):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def __len__(self):
        return len(self._items)

    def clear(self):
        self._items.clear()


BLOCK_MASK_CACHE = BlockMaskCache()
_COMPILED = {}  # compile backend -> torch.compile(flex_attention) (compiled_flex_attention)


class FlexGraphLimitError(RuntimeError):
    """A compiled flex call would make more than :data:`RECOMPILE_LIMIT` graphs."""


def clear_block_mask_cache() -> None:
    BLOCK_MASK_CACHE.clear()


class FlexMask(NamedTuple):
    """A block mask and the 0-d tensors its mask_mod reads: ``mem`` = Lk - Lq (memory keys),
    ``sinks`` = sink keys. ``score_mod`` reads the same ``mem`` (no Python integer captured)."""

    block_mask: object
    mem: torch.Tensor
    sinks: torch.Tensor


def check_block_size(block_size) -> Tuple[int, int]:
    """(q_block, kv_block) of a ``block_size`` (an int for both, or a pair); each a power of
    two >= 16 (Triton's tl.dot tiles; torch's templates need BLOCK_M | q_block and
    BLOCK_N | kv_block). Raises ValueError otherwise."""
    if block_size is None:
        return DEFAULT_BLOCK_SIZE
    pair = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if len(pair) != 2 or any(not isinstance(x, int) or x < 16 or x & (x - 1) for x in pair):
        raise ValueError(f"block_size must be (q_block, kv_block), powers of two >= 16, "
                         f"got {block_size!r}")
    return pair


def kernel_options_for(block_size) -> Optional[dict]:
    """The ``kernel_options`` that make Triton's tiles fit a block mask of ``block_size``: None
    for torch's default (its own tiles divide 128), else forward BLOCK_M = q_block, BLOCK_N =
    kv_block and backward tiles with BLOCK_N1 % BLOCK_M1 == 0 and BLOCK_M2 % BLOCK_N2 == 0
    (static asserts of torch's backward template), all dividing the block mask's sizes."""
    qb, kb = check_block_size(block_size)
    if (qb, kb) == DEFAULT_BLOCK_SIZE:
        return None
    b = min(qb, kb)
    return {"fwd_BLOCK_M": qb, "fwd_BLOCK_N": kb, "bwd_BLOCK_M1": b, "bwd_BLOCK_N1": kb,
            "bwd_BLOCK_M2": qb, "bwd_BLOCK_N2": b}


def _window_tensor(windows: Windows, lk: int, device) -> torch.Tensor:
    """(H,) int window per head; full heads (None) get lk + 1 (longer than any distance)."""
    return torch.tensor([lk + 1 if effective_window(w, lk) is None else w for w in windows],
                        device=device)


def _mask_mod(win: torch.Tensor, mem: torch.Tensor, sinks: torch.Tensor):
    """mask_mod of (H,) windows and 0-d ``mem`` / ``sinks`` tensors."""

    def mask_mod(b, h, q_idx, kv_idx):
        dist = q_idx + mem - kv_idx
        return (dist >= 0) & ((dist < win[h]) | (kv_idx < sinks))

    return mask_mod


def _score_mod(pos_scores: torch.Tensor, mem: torch.Tensor):
    """score_mod adding pos_scores (B, H, Lq, R) at distance min(q + mem - kv, R - 1); R is read
    from the tensor's shape when traced (a static size, not a captured integer)."""

    def score_mod(score, b, h, q_idx, kv_idx):
        dist = (q_idx + mem - kv_idx).clamp(0, pos_scores.shape[-1] - 1)
        return score + pos_scores[b, h, q_idx, dist]

    return score_mod


def flex_mask(lq: int, lk: int, windows: Windows, sinks: int, device,
              block_size=None) -> FlexMask:
    """Cached :class:`FlexMask` (batch-independent, one mask per head) of ``lq`` queries over
    ``lk`` keys, tiles ``block_size`` (default 128 x 128)."""
    bs = check_block_size(block_size)
    key = (lq, lk, tuple(windows), sinks, str(device), bs)

    def build():
        win = _window_tensor(windows, lk, device)
        mem = torch.tensor(lk - lq, device=device)
        sk = torch.tensor(sinks, device=device)
        bm = create_block_mask(_mask_mod(win, mem, sk), None, len(windows), lq, lk,
                               device=device, BLOCK_SIZE=bs)
        return FlexMask(bm, mem, sk)

    return BLOCK_MASK_CACHE.get(key, build)


def block_mask_for(lq: int, lk: int, windows: Windows, sinks: int, device, block_size=None):
    """Cached FlexAttention block mask (batch-independent, one mask per head)."""
    return flex_mask(lq, lk, windows, sinks, device, block_size).block_mask


def compiled_flex_attention(backend: Optional[str] = None):
    """``torch.compile(flex_attention, dynamic=False, fullgraph=True)`` with ``backend``
    (default :data:`COMPILE_BACKEND`), one per backend per process."""
    backend = COMPILE_BACKEND if backend is None else backend
    fn = _COMPILED.get(backend)
    if fn is None:
        fn = _COMPILED[backend] = torch.compile(flex_attention, backend=backend, dynamic=False,
                                                fullgraph=True)
    return fn


def graph_signature(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                    sink_logits=None, block_size=None) -> tuple:
    """What decides which compiled graph a flex call uses (static shapes): two calls with
    the same signature share a graph. (grad mode, q/k/v/pos_scores shapes, lse, tiles)."""
    bs = check_block_size(block_size)
    return (torch.is_grad_enabled() and q.requires_grad, tuple(q.shape), tuple(k.shape),
            tuple(v.shape), None if pos_scores is None else tuple(pos_scores.shape),
            sink_logits is not None, bs, q.dtype, q.device.type)


def _call_compiled(fn, *args, **kwargs):
    """Run compiled ``fn`` with Dynamo's recompile limit at :data:`RECOMPILE_LIMIT`; a call past
    it raises :class:`FlexGraphLimitError` (fullgraph=True: never the unfused fallback)."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return fn(*args, **kwargs)
    except FailOnRecompileLimitHit as e:
        raise FlexGraphLimitError(
            f"compiled FlexAttention reached {RECOMPILE_LIMIT} graphs in this process (one per "
            f"static signature: batch, heads, lengths, R, lse, tiles, grad mode; "
            f"kernels.flex.graph_signature). Torch would run the rest unfused; this project "
            f"refuses. Raise fairseq_mswa.kernels.flex.RECOMPILE_LIMIT if the shapes are "
            f"expected, or use --attn-backend blocked") from e


def flex_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Windows,
    sink_tokens: int = 0,
    pos_scores: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    sink_logits: Optional[torch.Tensor] = None,
    compiled: bool = True,
    block_size=None,
) -> torch.Tensor:
    """FlexAttention window attention. q (B, H, Lq, D), k/v (B, H, Lk, D), pos_scores
    (B, H, Lq, R) or None, sink_logits (H,) or None, block_size (q_block, kv_block) or None
    (128 x 128). Returns (B, H, Lq, D). Raises ValueError when it cannot serve."""
    check_inputs(q, k, v, windows, sink_tokens, pos_scores, dropout_p, sink_logits)
    reason = refusal("flex", needs_of(q, k, v, sink_tokens, pos_scores, dropout_p, sink_logits),
                     compiled)
    if reason:
        raise ValueError(f"flex backend: {reason}")
    return flex_window_attention_unchecked(q, k, v, windows, sink_tokens, pos_scores, dropout_p,
                                           scale, sink_logits, compiled, block_size)


def flex_window_attention_unchecked(q, k, v, windows: Windows, sink_tokens=0, pos_scores=None,
                                    dropout_p=0.0, scale=None, sink_logits=None,
                                    compiled=True, block_size=None) -> torch.Tensor:
    """``flex_window_attention`` without the checks (``window_attention`` ran them)."""
    lq, lk = q.shape[2], k.shape[2]
    fm = flex_mask(lq, lk, windows, sink_tokens, q.device, block_size)
    score_mod = None if pos_scores is None else _score_mod(pos_scores, fm.mem)
    kwargs = dict(score_mod=score_mod, block_mask=fm.block_mask, scale=scale)
    options = kernel_options_for(block_size)
    if options is not None:
        kwargs["kernel_options"] = options
    if sink_logits is not None:
        kwargs.update(_lse_request())
    if compiled:
        res = _call_compiled(compiled_flex_attention(), q, k, v, **kwargs)
    else:
        res = flex_attention(q, k, v, **kwargs)
    if sink_logits is None:
        return res
    out, aux = res
    lse = getattr(aux, "lse", aux)  # (B, H, Lq), natural log
    ct = torch.promote_types(lse.dtype, torch.float32)  # at least float32 (float64 stays)
    keep = torch.sigmoid(lse.to(ct) - sink_logits.to(ct).view(1, -1, 1))
    return out * keep.to(out.dtype).unsqueeze(-1)


def _lse_request() -> dict:
    """The keyword that makes flex return the log-sum-exp: ``return_aux=AuxRequest(lse=True)``
    where torch has it (``return_lse`` is deprecated there), else ``return_lse=True``."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}
