"""Choosing the array module (NumPy or CuPy) from the arrays at hand."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def _cupy() -> ModuleType | None:
    try:
        import cupy  # noqa: PLC0415
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return None
    return cupy


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
                "install it with `pip install foldconv[cuda]`"
            )
        return cp.asarray(a)
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
