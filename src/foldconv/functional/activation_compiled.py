"""Compiled ReLU (Numba), the optional fast path of functional/activation.py.

NumPy's ``np.maximum(x, 0)`` and ``dy * (y > 0)`` are two and three passes (the second
through a temporary mask) over arrays that LeNet-5's first layer makes 1.2 MB at batch 64:
0.11 and 0.09 ms here, where one compiled pass takes 0.03 and 0.05 ms (one thread,
BENCHMARKS.md, "LeNet-5's epoch"). Each kernel is one pass with a select:

- forward: ``y = 0 if x < 0 else x``, so NaN and ``-0.0`` pass unchanged, as in PyTorch's
  ``clamp_min`` (NumPy's ``maximum`` turns ``-0.0`` into ``0.0``);
- backward: ``dx = 0 if y <= 0 else dy`` with ``y`` the forward's output, as PyTorch's
  ``threshold_backward``: an inf or NaN ``dy`` where ``y <= 0`` gives 0 (not ``0 * inf``)
  and a NaN ``y`` passes ``dy``.

Used when Numba is installed and the arrays are float32 or float64 NumPy arrays;
``foldconv.set_compiled(False)`` turns it off. Large arrays are split in fixed chunks over
foldconv's thread pool (the kernels release the GIL); elements are independent, so
results never depend on the thread count.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from foldconv.functional import compiled
from foldconv.functional.threads import active_threads, parallel_map

# Elements per chunk of work on the pool; arrays up to one chunk run on the calling
# thread (a hand-over to the pool costs about as much as such a pass).
_CHUNK = 1 << 19


def applies(*arrays: Any) -> bool:
    """These arrays can take the compiled kernels."""
    return compiled.takes(*arrays)


@functools.cache
def _kernels() -> dict[str, Any]:
    jit = compiled.njit(nogil=True, boundscheck=False)

    @jit
    def forward(x, y, zero, i0, i1):  # pragma: no cover - compiled
        # Views indexed by the loop counter: an index Numba cannot prove non-negative
        # (i0 + i) gets a wrap-around test that stops the loop from vectorising.
        xs, ys = x[i0:i1], y[i0:i1]
        for i in range(xs.size):
            v = xs[i]
            ys[i] = zero if v < zero else v

    @jit
    def backward(dy, y, dx, zero, i0, i1):  # pragma: no cover - compiled
        gs, ys, ds = dy[i0:i1], y[i0:i1], dx[i0:i1]
        for i in range(gs.size):
            ds[i] = zero if ys[i] <= zero else gs[i]

    return {"forward": forward, "backward": backward}


def _run(kernel: Any, arrays: tuple[Any, ...], size: int) -> None:
    if size <= _CHUNK or active_threads() == 1:
        kernel(*arrays, 0, size)
        return
    chunks = [(i, min(size, i + _CHUNK)) for i in range(0, size, _CHUNK)]
    parallel_map(lambda c: kernel(*arrays, c[0], c[1]), chunks)


def relu(x: Any) -> Any:
    """y = 0 if x < 0 else x; x a float32/float64 NumPy array of any shape."""
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    _run(_kernels()["forward"], (xc.reshape(-1), y.reshape(-1), xc.dtype.type(0)), xc.size)
    return y


def relu_backward(grad_output: Any, y: Any) -> Any:
    """dx = 0 if y <= 0 else dy (PyTorch's threshold_backward); arrays of one shape."""
    g = np.ascontiguousarray(grad_output)
    yc = np.ascontiguousarray(y)
    dx = np.empty_like(g)
    flat = (g.reshape(-1), yc.reshape(-1), dx.reshape(-1), g.dtype.type(0))
    _run(_kernels()["backward"], flat, g.size)
    return dx
