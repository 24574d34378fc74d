"""Tests on a real GPU with CuPy arrays: skipped where CuPy or a GPU is missing."""

import numpy as np
import pytest


def _cupy_or_none():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:
        pass
    return None


_CP = _cupy_or_none()


def pytest_collection_modifyitems(config, items):
    if _CP is None:
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
        for item in items:
            if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
                item.add_marker(skip)


@pytest.fixture
def cp():
    """The cupy module (tests that take it are skipped without a GPU)."""
    return _CP


def to_cpu(a):
    """NumPy copy of a CuPy array (or of anything array-like)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
