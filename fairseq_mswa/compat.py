"""Compatibility fixes for the pinned fairseq 0.12.

NumPy 2: fairseq 0.12.x still spells ``np.compat.long`` (removed in NumPy 2.0) in
``TokenBlockDataset``'s ``eos`` break mode, which ``language_modeling``'s
``build_dataset_for_inference`` uses: without the alias ``fairseq-interactive --task
language_modeling`` and the hub's ``sample`` fail with "module 'numpy' has no attribute 'compat'".
``np.compat.long`` was Python's ``int``; the alias is set only where NumPy lacks it.

``--bf16`` off TPUs: fairseq 0.12's command-line parser (``options.parse_args_and_arch``) sets
``--tpu`` whenever ``--bf16`` is given, so ``fairseq-train --bf16`` on a GPU (or with ``--cpu``)
asks for an XLA device and fails with "'NoneType' object has no attribute 'xla_device'" where
torch_xla is not installed. ``distributed_utils.call_main`` (which every fairseq CLI calls with
the parsed config, after importing this plugin) is wrapped to clear that implied ``tpu`` when
torch_xla is absent: the run then trains in bfloat16 on CUDA (or the CPU). With torch_xla
installed nothing changes.
"""

import logging
import types

import numpy as np


def restore_numpy_compat_long() -> None:
    try:
        np.compat.long  # noqa: B018  (NumPy < 2 has it)
    except AttributeError:
        np.compat = types.SimpleNamespace(long=int)


def bf16_without_tpu() -> None:
    """Wrap ``fairseq.distributed.utils.call_main`` so that ``--bf16`` without torch_xla does not
    imply ``--tpu`` (idempotent)."""
    import fairseq.utils
    from fairseq.distributed import utils as distributed_utils

    if getattr(distributed_utils.call_main, "_mswa_bf16_without_tpu", False):
        return
    call_main = distributed_utils.call_main

    def wrapped(cfg, main, **kwargs):
        common = cfg.common
        if common.tpu and common.bf16 and fairseq.utils.xm is None:
            logging.getLogger(__name__).info(
                "--bf16 without torch_xla: clearing the --tpu that fairseq 0.12 implies "
                "(bfloat16 on %s)", "cpu" if common.cpu else "cuda")
            common.tpu = False
        return call_main(cfg, main, **kwargs)

    wrapped._mswa_bf16_without_tpu = True
    distributed_utils.call_main = wrapped


restore_numpy_compat_long()
bf16_without_tpu()
