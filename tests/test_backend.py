"""The array-module helper: NumPy by default, CuPy for CuPy arrays, never a mix."""

import numpy as np
import pytest

from foldconv.backend import get_array_module, is_cupy_array, to_device


class _FakeCupyArray:
    """Stands in for a cupy.ndarray: the helper recognises CuPy by the type's module."""

    __module__ = "cupy._core.core"
    shape = (2,)


def test_numpy_arrays_give_numpy():
    assert get_array_module(np.zeros(2), None, np.ones(3)) is np
    assert not is_cupy_array(np.zeros(2))
    assert is_cupy_array(_FakeCupyArray())


def test_mixing_numpy_and_cupy_is_a_type_error():
    with pytest.raises(TypeError, match="arrays: expected all NumPy or all CuPy"):
        get_array_module(np.zeros(2), _FakeCupyArray())


def test_devices():
    a = np.arange(3.0)
    assert to_device(a, "cpu") is a
    with pytest.raises(ValueError, match="device"):
        to_device(a, "tpu")
    try:
        import cupy  # noqa: F401
    except Exception:
        with pytest.raises(RuntimeError, match="CuPy"):
            to_device(a, "cuda")
