"""CPU heap allocator settings for training loops (glibc only).

A training step on CPU allocates and frees the same large temporaries (scores, probabilities,
their gradients) every step. glibc's malloc serves blocks above its mmap threshold (128 KiB at
start, raised dynamically up to 32 MiB) with fresh ``mmap`` pages and trims the top of its heap
back to the OS when more than its trim threshold is free, so a step can touch thousands of new
pages, each a page fault, and the next step faults them in again. Measured (``transformer_xl_mswa``
at the CPU tables' shape, 4 x 4, d 64, segment 128, batch 8, 2 threads): ~2,000 minor faults per
training step for MSWA and ~50 for SWA with glibc's defaults, under 1 with
:func:`keep_freed_memory`.

:func:`keep_freed_memory` fixes the two thresholds (``mallopt``), so freed blocks stay in the
process and are reused: the process keeps up to ``trim_threshold`` of freed heap memory instead of
returning it. ``mswa_lm`` applies it when it sets up on a machine without CUDA, unless
``--release-freed-memory`` is given; the benchmarks apply it to every variant alike.
"""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 ** 30

_applied = None  # (mmap_threshold, trim_threshold) once applied in this process


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process. True when applied (now or by an
    earlier call with the same values), False where the C library is not glibc (nothing done)."""
    global _applied
    if _applied == (mmap_threshold, trim_threshold):
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold)):
        return False
    _applied = (mmap_threshold, trim_threshold)
    return True


ALLOCATOR_HELP = ("leave glibc's allocator as it is (freed heap memory back to the OS each step); "
                  "by default freed memory is kept for reuse, for every variant alike "
                  "(fairseq_mswa/allocator.py)")


def apply_for_run(release: bool) -> str:
    """What a benchmark records about the allocator: :func:`keep_freed_memory` applied unless
    ``release`` (its ``--release-freed-memory`` flag), as a sentence."""
    if release:
        return "glibc defaults (--release-freed-memory)"
    if keep_freed_memory():
        return (f"freed heap memory kept for reuse (glibc mallopt: mmap threshold "
                f"{MMAP_THRESHOLD // 2 ** 20} MiB, trim threshold {TRIM_THRESHOLD // 2 ** 20} MiB)")
    return "allocator defaults (not glibc: nothing set)"
