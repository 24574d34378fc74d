"""Keeping freed host memory (glibc's malloc thresholds): applied where glibc is, its
effect measurable in page faults, off by environment variable in the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import foldconv
from foldconv import allocator

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Allocate and free a 48 MiB array 20 times (above the 32 MiB up to which glibc adapts its
# threshold), touching every page; print the minor page faults this took.
FAULTS = """
import resource, sys
import numpy as np
import foldconv
applied = foldconv.keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(3):
    np.ones(12 << 20, dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(12 << 20, dtype=np.float32)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(allocator._libc() is None, reason="malloc is not glibc's here")
def test_kept_memory_is_not_faulted_in_again():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    # By default glibc unmaps a block this big when it is freed: each of the 20 arrays is
    # faulted in again, at least once per 2 MiB (huge pages) and at most once per 4 KiB.
    assert default >= 20 * 24
    assert kept < 100


def test_switch_and_errors():
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        foldconv.keep_freed_memory("yes")
    before = allocator.keeps_freed_memory()
    try:
        applied = foldconv.keep_freed_memory(False)
        assert applied == (allocator._libc() is not None)
        assert not foldconv.keeps_freed_memory()
        applied = foldconv.keep_freed_memory(True)
        assert foldconv.keeps_freed_memory() == applied
    finally:
        foldconv.keep_freed_memory(before)


def test_the_trainers_switch_reads_the_environment(monkeypatch):
    before = allocator.keeps_freed_memory()
    try:
        foldconv.keep_freed_memory(False)
        monkeypatch.setenv("FOLDCONV_KEEP_FREED_MEMORY", "0")
        assert allocator.keep_freed_memory_from_env() is False
        assert not allocator.keeps_freed_memory()
        monkeypatch.setenv("FOLDCONV_KEEP_FREED_MEMORY", "1")
        assert allocator.keep_freed_memory_from_env() == (allocator._libc() is not None)
    finally:
        foldconv.keep_freed_memory(before)
