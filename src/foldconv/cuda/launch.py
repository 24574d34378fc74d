"""Launching foldconv's numba-cuda kernels.

Kernels are plain Python functions in numba-cuda's dialect, written as grid-stride loops
over a flat index::

    @kernel
    def scale(n, x, alpha, out):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            out[i] = alpha * x[i]

    scale(n, n, x, 2.0, out)     # first argument: how many work items the grid covers

A :class:`Kernel` compiles on first call (importing numba.cuda and compiling cost about a
second; ``import foldconv`` must not pay it) and launches on CuPy's current stream, so
that kernels and cuBLAS calls stay ordered without synchronising. Under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernel runs on NumPy arrays, each thread of
a block as a Python thread: there the grid is kept small, and the grid-stride loop covers
the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

# Threads per block: 256 keeps enough warps per SM for the memory-bound kernels here.
BLOCK = 256
# Blocks per launch at most; each thread then loops (grid-stride). 32 blocks per SM on
# a 132-SM H200 with 256 threads fills every SM with resident warps.
MAX_BLOCKS = 132 * 32
# The simulator runs a block's threads as Python threads: small blocks, few of them.
SIM_BLOCK = 8
SIM_MAX_BLOCKS = 2


def simulated() -> bool:
    """True when kernels run in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


_numba_cuda: Any = None


def numba_cuda() -> Any:
    """``numba.cuda``, imported on first use, with a clear error when numba-cuda is absent."""
    global _numba_cuda
    if _numba_cuda is None:
        # CuPy and our kernels share one stream (see _stream): numba need not synchronise
        # on the stream an imported array was exported from (a full sync per argument).
        os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
        try:
            from numba import cuda  # noqa: PLC0415
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "foldconv's GPU kernels need numba-cuda: pip install 'foldconv[cuda12]' "
                "(or 'foldconv[cuda13]')"
            ) from err
        _numba_cuda = cuda
    return _numba_cuda


def launch_config(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for a grid-stride loop over n work items."""
    if simulated():
        return max(1, min(math.ceil(n / SIM_BLOCK), SIM_MAX_BLOCKS)), SIM_BLOCK
    return max(1, min(math.ceil(n / BLOCK), MAX_BLOCKS)), BLOCK


_streams: dict[int, Any] = {}


def _stream() -> Any:
    """numba's handle on CuPy's current stream (0: the default stream, which CuPy's null
    stream is too)."""
    if simulated():
        return 0
    import cupy  # noqa: PLC0415

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return 0
    s = _streams.get(ptr)
    if s is None:
        s = _streams[ptr] = numba_cuda().external_stream(ptr)
    return s


class Kernel:
    """A numba-cuda kernel, compiled on first call and launched over ``n`` work items.

    Call as ``k(n, *args)``: ``n`` sets the grid size only; the kernel receives ``args``
    and must loop ``for i in range(cuda.grid(1), n, cuda.gridsize(1))`` itself (so pass
    ``n`` among ``args`` too).
    """

    def __init__(self, py_func: Callable[..., None]) -> None:
        self.py_func = py_func
        self.__name__ = py_func.__name__
        self.__doc__ = py_func.__doc__
        self._compiled: Any = None

    def __call__(self, n: int, *args: Any) -> None:
        if n <= 0:
            return
        if self._compiled is None:
            # cache=True: compiled kernels are kept on disk (NUMBA_CACHE_DIR, else
            # __pycache__), so later processes skip the ~0.3 s compile per signature.
            self._compiled = numba_cuda().jit(cache=True)(self.py_func)
        blocks, threads = launch_config(n)
        self._compiled[blocks, threads, _stream()](*args)


def kernel(py_func: Callable[..., None]) -> Kernel:
    """Decorator: make ``py_func`` a :class:`Kernel`."""
    return Kernel(py_func)
