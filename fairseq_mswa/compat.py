"""Fixes of the pinned fairseq 0.12 for today's NumPy and torch, and for its checkpoint files.
Applied once, when the plugin is imported (``--user-dir``, the hub's ``user_dir``).

* NumPy 2: fairseq 0.12.x still spells ``np.compat.long`` (removed in NumPy 2.0) in
  ``TokenBlockDataset``'s ``eos`` break mode, which ``language_modeling``'s
  ``build_dataset_for_inference`` uses: without the alias ``fairseq-interactive --task
  language_modeling`` and the hub's ``sample`` fail with "module 'numpy' has no attribute 'compat'".
  ``np.compat.long`` was Python's ``int``; the alias is set only where NumPy lacks it.
* torch >= 2.6 (``torch.load`` defaults to ``weights_only=True``): with more than one rank,
  fairseq's trainer loads a checkpoint on rank 0 and broadcasts it with ``torch.save`` /
  ``torch.load`` (``fairseq/distributed/utils.py``, ``_broadcast_object_slow``); the other ranks
  then refuse the checkpoint's config (an OmegaConf ``DictConfig`` that rank 0 built), so a
  multi-rank resume fails. The receiving ranks load rank 0's bytes with ``weights_only=False``
  (the data is rank 0's own, already loaded from the checkpoint with ``weights_only=True``).
* Interrupted checkpoint writes: fairseq writes the first checkpoint file of a save to ``NAME.tmp``
  and renames it (``torch_persistent_save``), but makes every other file of the same save
  (``checkpoint_last.pt``, ``checkpoint_best.pt``) with ``PathManager.copy`` = ``shutil.copyfile``,
  which truncates the destination and then writes it: a kill during the copy leaves a truncated
  ``checkpoint_last.pt`` that the next run cannot resume from. Copies to local paths go to
  ``DST.tmp`` and are renamed over ``DST`` (``os.replace``): a kill leaves the previous file whole.
* Unreadable checkpoint files (truncated, not a checkpoint at all): one line naming the file and
  the fix instead of torch's or fairseq's internals (``KeyError: 'best_loss'``).
* ``--bf16`` off TPUs: fairseq 0.12's command-line parser (``options.parse_args_and_arch``) sets
  ``--tpu`` whenever ``--bf16`` is given, so ``fairseq-train --bf16`` on a GPU (or with ``--cpu``)
  asks for an XLA device and fails with "'NoneType' object has no attribute 'xla_device'" where
  torch_xla is not installed. ``distributed_utils.call_main`` (which every fairseq CLI calls with
  the parsed config, after importing this plugin) is wrapped to clear that implied ``tpu`` when
  torch_xla is absent: the run then trains in bfloat16 on CUDA (or the CPU). With torch_xla
  installed nothing changes.
"""

import functools
import logging
import os
import shutil
import types
import zipfile

import numpy as np


def restore_numpy_compat_long() -> None:
    try:
        np.compat.long  # noqa: B018  (NumPy < 2 has it)
    except AttributeError:
        np.compat = types.SimpleNamespace(long=int)


def _once(module, name, make):
    """Replace ``module.name`` by ``make(original)``, once."""
    original = getattr(module, name)
    if not getattr(original, "_fairseq_mswa", False):
        patched = make(original)
        patched._fairseq_mswa = True
        setattr(module, name, patched)


def allow_checkpoint_broadcast() -> None:
    import torch
    from fairseq.distributed import utils as distributed_utils

    def make(original):
        @functools.wraps(original)
        def _broadcast_object_slow(obj, src_rank, group, dist_device):
            load = torch.load
            torch.load = functools.partial(load, weights_only=False)
            try:
                return original(obj, src_rank, group, dist_device)
            finally:
                torch.load = load
        return _broadcast_object_slow

    _once(distributed_utils, "_broadcast_object_slow", make)


def atomic_checkpoint_copies() -> None:
    from fairseq.file_io import PathManager

    def make(original):
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if PathManager.path_requires_pathmanager(dst_path):  # remote storage: as fairseq does
                return original(src_path, dst_path, overwrite)
            if not overwrite and os.path.exists(dst_path):
                return False
            tmp = dst_path + ".tmp"
            shutil.copyfile(src_path, tmp)
            os.replace(tmp, dst_path)
            return True
        return staticmethod(copy)

    original = PathManager.__dict__["copy"].__func__
    if not getattr(original, "_fairseq_mswa", False):
        patched = make(original)
        patched.__func__._fairseq_mswa = True
        PathManager.copy = patched


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file and the fix."""


def _newest_other_checkpoint(path: str):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        others = [os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".pt") and f.startswith("checkpoint")
                  and os.path.join(folder, f) != os.path.abspath(path)]
    except OSError:
        return None
    return max(others, key=os.path.getmtime) if others else None


def _unreadable(path: str) -> CheckpointFileError:
    if os.path.getsize(path) == 0 or (
            open(path, "rb").read(2) == b"PK" and not zipfile.is_zipfile(path)):
        what = "is truncated (its write was interrupted?)"
    else:
        what = "is not a fairseq checkpoint"
    other = _newest_other_checkpoint(path)
    fix = (f"use another checkpoint, e.g. {other} (the newest other one in that folder)"
           if other else "use a checkpoint written by fairseq-train")
    return CheckpointFileError(f"{path} {what}: {fix}")


def readable_checkpoint_errors() -> None:
    from fairseq import checkpoint_utils

    def make(original):
        @functools.wraps(original)
        def load_checkpoint_to_cpu(path, *args, **kwargs):
            try:
                state = original(path, *args, **kwargs)
            except (FileNotFoundError, CheckpointFileError):
                raise
            except Exception:  # torch's zip reader, the unpickler, fairseq's upgrade code
                if not os.path.isfile(path):
                    raise
                raise _unreadable(path) from None
            if not isinstance(state, dict) or "model" not in state:
                raise _unreadable(path)
            return state
        return load_checkpoint_to_cpu

    _once(checkpoint_utils, "load_checkpoint_to_cpu", make)


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
try:
    import fairseq  # noqa: F401
except ImportError:  # the pure-Python parts of the plugin need no fairseq
    fairseq = None
if fairseq is not None:
    allow_checkpoint_broadcast()
    atomic_checkpoint_copies()
    readable_checkpoint_errors()
    bf16_without_tpu()
