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

        # False without a usable GPU: configured again on the next call.
        _configured = precision.apply(cupy)
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
    for a in arrays:  # the common case first: NumPy arrays only (and None)
        if a is not None and type(a) is not np.ndarray:
            break
    else:
        return np
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


class DeviceUnavailableError(RuntimeError, ValueError):
    """A device that cannot be used here: 'cuda' without CuPy, without a usable driver or
    without a GPU. Both a RuntimeError (what ``Module.to`` and array moves raise, as
    PyTorch's do) and a ValueError (what the trainer raises for a bad ``device``
    argument), so that either ``except`` catches it wherever it comes from."""


_INSTALL = (
    "install it with pip install 'foldconv[cuda12]' (CUDA 12) or 'foldconv[cuda13]' (CUDA 13)"
)
_gpu_count: int | None = None


def cuda_module(device: str = "cuda") -> ModuleType:
    """CuPy, for arrays on ``device`` ('cuda' or 'cuda:<index>'), once a GPU is known usable.

    Raises
    ------
    DeviceUnavailableError
        (a RuntimeError and a ValueError) Naming ``device`` and how to install CuPy when it
        cannot be imported, or what CUDA said when CuPy imports but no GPU can be used.
    ValueError
        For an index beyond the GPUs present.
    """
    global _gpu_count
    index = _device_index(device)
    cp = _cupy()
    if cp is None:
        raise DeviceUnavailableError(
            f"device: {device!r} needs CuPy, which is not installed (or cannot be imported); "
            f"{_INSTALL}, or use device 'cpu'"
        )
    if _gpu_count is None:
        try:
            count = int(cp.cuda.runtime.getDeviceCount())
        except Exception as err:  # no driver, no device: CUDARuntimeError
            raise DeviceUnavailableError(
                f"device: {device!r}: CuPy is installed but CUDA cannot be used ({err}); "
                "check the NVIDIA driver, or use device 'cpu'"
            ) from err
        if count == 0:
            raise DeviceUnavailableError(
                f"device: {device!r}: CuPy is installed but there is no CUDA GPU"
            )
        _gpu_count = count
    if index is not None and index >= _gpu_count:
        raise ValueError(
            f"device: expected 'cuda' or 'cuda:0' .. 'cuda:{_gpu_count - 1}' "
            f"({_gpu_count} GPU(s)), got {device!r}"
        )
    return cp


def _device_index(device: str) -> int | None:
    """None for 'cuda' (the current GPU), i for 'cuda:i'."""
    if device == "cuda":
        return None
    head, _, tail = device.partition(":")
    if head != "cuda" or not tail.isdigit():
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    return int(tail)


def to_device(a: Any, device: str) -> Any:
    """Move an array to ``device`` ('cpu', 'cuda' or 'cuda:<index>').

    Returns ``a`` itself when it is there already. Without CuPy, asking for 'cuda' is a
    RuntimeError that says how to install it.
    """
    if device == "cpu":
        return a.get() if is_cupy_array(a) else np.asarray(a)
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        index = _device_index(device)
        cp = cuda_module(device)
        if index is None:
            return cp.asarray(a)
        if is_cupy_array(a) and a.device.id == index:
            return a
        with cp.cuda.Device(index):
            return cp.array(a, copy=is_cupy_array(a))
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")


_gpu_path_on_cpu = False


def gpu_path(xp: ModuleType) -> bool:
    """Whether to run the GPU implementation for arrays of module ``xp``: for CuPy, and
    for NumPy inside :func:`foldconv.cuda.testing.gpu_path_on_cpu` (tests only)."""
    return xp is not np or _gpu_path_on_cpu
