"""Attention kernels: pure functions over (batch, heads, length, dim) tensors.

* ``window_attention`` (``.window_attention``): causal multi-scale window attention with
  backends ``dense`` / ``blocked`` / ``flex`` / ``flash`` / ``auto``.
"""

from .dense import dense_window_attention, visibility_mask  # noqa: F401
