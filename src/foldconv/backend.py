"""Choosing the array module (NumPy or CuPy) from the arrays at hand."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

_configured = False


def _cupy() -> ModuleType | None:
    """CuPy, imported and configured (strict float32 GEMMs, see foldconv.cuda.precision)
    on first use; None when it cannot be imported."""
    global _configured
    try:
        import cupy  # noqa: PLC0415
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return None
    if not _configured:
        from foldconv.cuda import precision  # noqa: PLC0415

        precision.apply(cupy)
        _configured = True
    return cupy


def _cupy_if_imported() -> ModuleType | None:
    """CuPy if something imported it already (never imports it)."""
    import sys  # noqa: PLC0415

    return _cupy() if "cupy" in sys.modules else None


def is_cupy_array(a: Any) -> bool:
    """True if ``a`` is a CuPy ndarray (without importing CuPy when it is absent)."""
    return type(a).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``numpy`` or ``cupy`` for the given arrays (``None`` entries are ignored).

    Raises
    ------
    TypeError
        If NumPy and CuPy arrays are mixed.
    """
    kinds = {is_cupy_array(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if kinds == {True}:
        cp = _cupy()
        if cp is None:  # pragma: no cover - a cupy array implies cupy imports
            raise RuntimeError("a CuPy array was given but CuPy cannot be imported")
        return cp
    if kinds == {True, False}:
        raise TypeError(
            "arrays: expected all NumPy or all CuPy arrays, got a mix of both; "
            "move them to one device first"
        )
    return np


def to_device(a: Any, device: str) -> Any:
    """Move an array to ``device`` ('cpu' or 'cuda')."""
    if device == "cpu":
        return a.get() if is_cupy_array(a) else np.asarray(a)
    if device == "cuda" or device.startswith("cuda:"):
        cp = _cupy()
        if cp is None:
            raise RuntimeError(
                "device: 'cuda' needs CuPy, which is not installed; "
                "install it with `pip install 'foldconv[cuda12]'` (or 'foldconv[cuda13]')"
            )
        return cp.asarray(a)
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")


_gpu_path_on_cpu = False


def gpu_path(xp: ModuleType) -> bool:
    """Whether to run the GPU implementation for arrays of module ``xp``: for CuPy, and
    for NumPy inside :func:`foldconv.cuda.testing.gpu_path_on_cpu` (tests only)."""
    return xp is not np or _gpu_path_on_cpu
