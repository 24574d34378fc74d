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


@pytest.mark.parametrize("value, expected", [("0", "False"), ("off", "False"), ("1", "True")])
def test_the_environment_sets_the_switch_at_import(value, expected):
    # FOLDCONV_COMPILED=0 lets a command-line run take the NumPy path (it has no flag).
    import os
    import subprocess
    import sys

    pytest.importorskip("numba")
    code = "from foldconv.functional import compiled; print(compiled.get_compiled())"
    env = dict(os.environ, FOLDCONV_COMPILED=value)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
