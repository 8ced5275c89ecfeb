"""Compatibility of the pinned fairseq 0.12 with NumPy 2.

fairseq 0.12.x still spells ``np.compat.long`` (removed in NumPy 2.0) in
``TokenBlockDataset``'s ``eos`` break mode, which ``language_modeling``'s
``build_dataset_for_inference`` uses: without the alias ``fairseq-interactive --task
language_modeling`` and the hub's ``sample`` fail with "module 'numpy' has no attribute 'compat'".
``np.compat.long`` was Python's ``int``; the alias is set only where NumPy lacks it.
"""

import types

import numpy as np


def restore_numpy_compat_long() -> None:
    try:
        np.compat.long  # noqa: B018  (NumPy < 2 has it)
    except AttributeError:
        np.compat = types.SimpleNamespace(long=int)


restore_numpy_compat_long()
