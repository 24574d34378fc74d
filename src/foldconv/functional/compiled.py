"""The switch for foldconv's optional compiled kernels (Numba).

Compiled kernels exist where NumPy's per-call passes cost more than the arithmetic:
depthwise convolutions (functional/depthwise_compiled.py), col2im on the flat grid
(functional/flat_compiled.py), LRN (functional/lrn_compiled.py), max pooling
(functional/pooling_compiled.py), ReLU (functional/activation_compiled.py), SGD's update
(optim/sgd_compiled.py), and the direct sums of small stride-1 convolutions
(functional/direct_compiled.py, algorithm 'direct_compiled'). Each has a NumPy twin that
runs when Numba is absent or the switch is off (for 'direct_compiled', im2col), and the
tests run both.

The switch starts on, or off where the environment sets ``FOLDCONV_COMPILED=0`` when
foldconv is imported (so that a command-line run can take the NumPy path too).
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

import numpy as np

ENV_VAR = "FOLDCONV_COMPILED"
_enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


@cache
def available() -> bool:
    """Numba can be imported."""
    return importlib.util.find_spec("numba") is not None


def set_compiled(enabled: bool) -> bool:
    """Use the compiled kernels where they apply (default: on when Numba is installed).

    Returns the previous setting. With it off, every pass runs the NumPy path.
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    previous, _enabled = _enabled, enabled
    return previous


def get_compiled() -> bool:
    """Whether the compiled kernels run (the switch is on and Numba is installed)."""
    return _enabled and available()


def takes(*arrays: Any) -> bool:
    """The compiled kernels can take these arrays: float32 or float64 NumPy arrays of one
    dtype, with the switch on and Numba installed."""
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        return False
    if not all(type(a) is np.ndarray and a.dtype == dtype for a in arrays):
        return False
    return get_compiled()


def njit(**options: Any) -> Any:
    """numba.njit with an on-disk cache where one can be written; without one (a read-only
    install and no writable home) Numba refuses ``cache=True``, so compile per process.

    Importing Numba here is also where it first gets the thread budget
    (:mod:`foldconv.functional.threads`)."""
    import numba

    from foldconv.functional import threads

    threads.set_numba_threads(threads.active_threads())

    def decorate(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)

    return decorate
