"""Attention kernels: pure functions over (batch, heads, length, dim) tensors.

* ``window_attention`` (``.window_attention``): causal multi-scale window attention with
  backends ``dense`` / ``blocked`` / ``flex`` / ``flash`` / ``auto``;
* ``common``: the ``Windows`` type, ``BACKENDS``, ``check_inputs``, ``effective_window``,
  ``group_heads`` (shared by every backend).
"""

from .common import BACKENDS, Windows, check_inputs, effective_window, group_heads  # noqa: F401

from .dense import dense_window_attention, visibility_mask  # noqa: F401
from .blocked import blocked_window_attention  # noqa: F401
from .window_attention import (  # noqa: F401
    available_backends,
    select_backend,
    unsupported_reason,
    window_attention,
)
