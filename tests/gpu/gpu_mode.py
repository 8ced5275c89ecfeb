"""Where the tests of tests/gpu run (imported by its test modules; tests/gpu is on sys.path).

* On a machine with CUDA: on the first GPU, in float32 and bfloat16 (``scripts/gpu_check.sh``).
* With ``MSWA_GPU_REHEARSAL=1`` (``scripts/gpu_check.sh --rehearse``): the same tests on the CPU
  in float32 at small sizes, so that every code path of the GPU check is known to run before a
  GPU is lent. A rehearsal is never a GPU result: ``DEVICE`` is ``cpu`` and the report says so.
* Otherwise (the ordinary CPU test suite) every test skips with the reason.
"""

import os

import pytest
import torch

REHEARSAL = os.environ.get("MSWA_GPU_REHEARSAL") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cpu" if REHEARSAL else ("cuda" if CUDA else None)
DTYPES = (torch.float32,) if DEVICE == "cpu" else (torch.float32, torch.bfloat16)

requires_device = pytest.mark.skipif(
    DEVICE is None,
    reason="no CUDA device (tests/gpu runs on a GPU, or on the CPU with MSWA_GPU_REHEARSAL=1: "
           "bash scripts/gpu_check.sh --rehearse)",
)


def size(gpu, rehearsal):
    """The GPU size, or the rehearsal's small one."""
    return rehearsal if DEVICE == "cpu" else gpu
