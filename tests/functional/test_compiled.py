"""The switch and the decorator behind foldconv's optional compiled kernels."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import compiled

numba = pytest.importorskip("numba")


def test_compiles_without_a_disk_cache_where_numba_refuses_one(monkeypatch):
    real = numba.njit
    calls = []

    def njit(*args, **options):
        calls.append(options.get("cache"))
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)

    @compiled.njit(nogil=True)
    def total(a):
        s = 0.0
        for v in a:
            s += v
        return s

    assert total(np.arange(5.0)) == 10.0
    assert calls[:2] == [True, False]  # (Numba itself calls njit while compiling)


def test_takes_only_float_numpy_arrays_with_the_switch_on():
    a32, a64 = np.zeros(3, np.float32), np.zeros(3)
    assert compiled.takes(a32, a32.copy())
    assert not compiled.takes(a32, a64)  # mixed dtypes
    assert not compiled.takes(np.zeros(3, np.float16))
    assert not compiled.takes(np.zeros(3, np.int64))
    previous = foldconv.set_compiled(False)
    try:
        assert not compiled.takes(a32) and not foldconv.get_compiled()
    finally:
        foldconv.set_compiled(previous)
