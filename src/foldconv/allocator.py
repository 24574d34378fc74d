"""Keeping freed host memory for reuse: glibc malloc's thresholds, for training processes.

A training step allocates the same arrays every step: layer outputs, gradients, scratch.
glibc's malloc hands blocks above its mmap threshold (128 KiB, raised dynamically up to
32 MiB as such blocks are freed) straight back to the kernel when they are freed, and trims
the free top of its heap; the next step's arrays are then faulted in again page by page,
each page zeroed by the kernel. Measured on this project's 2-core machine, one thread:
LeNet-5 at batch 128 took ~1,000 page faults and 2-3 ms of system time a step (ReLU's
forward 1.08 ms against 0.29 ms with the pages kept), the paper AlexNet at batch 16
1,300-3,000 faults, 70-180 ms of system time and 8-10% more CPU time a step
(BENCHMARKS.md, "Keeping freed memory").

:func:`keep_freed_memory` raises both thresholds, so that freed blocks stay in the heap
for the next step: the process keeps its peak footprint instead of returning memory
between steps (the peak itself moved by +20 to +35 MiB on AlexNet's 1.15 GiB). The trainer
calls it (``FOLDCONV_KEEP_FREED_MEMORY=0`` turns that off); a user's own training loop may
call it too. Only glibc has these knobs: elsewhere (macOS, Windows, musl) it does nothing
and says so by returning False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_KEEP = {
    # Blocks up to 1 GiB come from the heap and return to it when freed.
    _M_MMAP_THRESHOLD: 1 << 30,
    # Up to 1 GiB free at the heap's top is kept, not trimmed.
    _M_TRIM_THRESHOLD: 1 << 30,
    # The heap grows 64 MiB beyond each request: fewer brk calls.
    _M_TOP_PAD: 64 << 20,
}
# glibc's defaults (mallopt(3)); setting them fixes the mmap threshold, which glibc would
# otherwise have moved on its own.
_DEFAULTS = {_M_MMAP_THRESHOLD: 128 << 10, _M_TRIM_THRESHOLD: 128 << 10, _M_TOP_PAD: 128 << 10}
# Older glibc caps the mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2 on 64-bit).
_MMAP_THRESHOLD_CAP = 32 << 20

_kept = False


@functools.cache
def _libc() -> Any:
    """glibc's handle, or None where malloc is not glibc's."""
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError off glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(enabled: bool = True) -> bool:
    """Keep freed host memory in the process for reuse (True), or give it back (False).

    Parameters
    ----------
    enabled : bool
        True: glibc's malloc keeps freed blocks of up to 1 GiB and up to 1 GiB of free heap
        top for the next allocations, instead of unmapping and trimming them. False:
        glibc's default thresholds again (fixed ones: the dynamic mmap threshold does not
        come back), and the free memory is returned now (``malloc_trim``).

    Returns
    -------
    bool
        Whether the setting was applied: False where malloc is not glibc's.
    """
    global _kept
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    libc = _libc()
    if libc is None:
        return False
    for param, value in (_KEEP if enabled else _DEFAULTS).items():
        if not libc.mallopt(param, value) and param == _M_MMAP_THRESHOLD:
            libc.mallopt(param, min(value, _MMAP_THRESHOLD_CAP))
    if not enabled:
        libc.malloc_trim(0)
    _kept = enabled
    return True


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _kept


def keep_freed_memory_from_env() -> bool:
    """What the trainer calls: :func:`keep_freed_memory` unless
    ``FOLDCONV_KEEP_FREED_MEMORY`` is 0/false/no."""
    if os.environ.get("FOLDCONV_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no"):
        return False
    return keep_freed_memory(True)
