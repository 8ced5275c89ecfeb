"""fairseq_mswa/allocator.py: glibc's thresholds are set (where glibc is the C library), the
benchmarks record what they did, and mswa_lm applies it unless told not to."""

import ctypes
import platform

import pytest

from fairseq_mswa import allocator


def test_keep_freed_memory_applies_on_glibc_and_is_idempotent():
    applied = allocator.keep_freed_memory()
    if platform.libc_ver()[0] != "glibc":
        assert applied is False
        return
    assert applied is True and allocator.keep_freed_memory() is True
    # freed blocks below the mmap threshold come from the heap: two large allocations in a row
    # reuse the same address instead of fresh mmap pages
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 8 * 2 ** 20  # above glibc's starting mmap threshold (128 KiB), below the one set
    a = libc.malloc(size)
    libc.free(a)
    b = libc.malloc(size)
    libc.free(b)
    assert a == b


def test_benchmarks_record_the_allocator_setting():
    assert allocator.apply_for_run(True) == "glibc defaults (--release-freed-memory)"
    text = allocator.apply_for_run(False)
    assert "kept for reuse" in text or "not glibc" in text


@pytest.mark.parametrize("release", [False, True])
def test_mswa_lm_applies_it_unless_released(tmp_path, monkeypatch, release):
    from fairseq_mswa.tasks import mswa_lm

    calls = []
    monkeypatch.setattr(mswa_lm, "keep_freed_memory", lambda: calls.append(1) or True)
    (tmp_path / "dict.txt").write_text("a 1\nb 1\n")
    cfg = mswa_lm.MSWALanguageModelingConfig(data=str(tmp_path), release_freed_memory=release)
    mswa_lm.MSWALanguageModelingTask.setup_task(cfg)
    assert calls == ([] if release else [1])
