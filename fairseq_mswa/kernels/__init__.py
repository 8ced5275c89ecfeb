"""Attention kernels: pure functions over (batch, heads, length, dim) tensors.

* ``window_attention`` (``.window_attention``): causal multi-scale window attention with
  backends ``dense`` / ``blocked`` / ``flex`` / ``flash`` / ``auto``.
"""

from .dense import dense_window_attention, visibility_mask  # noqa: F401
from .blocked import blocked_window_attention  # noqa: F401
from .window_attention import (  # noqa: F401
    BACKENDS,
    available_backends,
    select_backend,
    unsupported_reason,
    window_attention,
)
