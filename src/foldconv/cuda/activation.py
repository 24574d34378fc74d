"""The GPU path of the error function and the exact GELU: one element-wise kernel each.

On the CPU, :func:`foldconv.functional.activation.erf` evaluates a power series on some
elements and a continued fraction on the others, selected by boolean masks: on CuPy that
would be about 200 launches and a device-to-host count of the mask per call. Here each
element takes one thread and CUDA's own ``erf``/``erfc`` (libdevice, within 2 ulp of the
exact values, as the CPU path's series is within about 4e-15 relative), computed in float64
whatever the input's float dtype and rounded once to it.
"""

from __future__ import annotations

import math
from typing import Any

from foldconv.cuda.launch import kernel, numba_cuda

cuda = numba_cuda()
# float(float64(v)), not float(v): in a compiled kernel Numba's float() keeps a float32 a
# float32 (math.erf would then be CUDA's float32 erff), the simulator's is Python's float64;
# the outer float() keeps the simulator on Python floats (no NumPy warnings on inf * 0).
from numba import float64  # noqa: E402

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@kernel
def _erf(n, x, out):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = math.erf(float(float64(x[i])))


@kernel
def _erfc(n, x, out):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = math.erfc(float(float64(x[i])))


@kernel
def _gelu(n, x, out):
    """y = x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (no cancellation for x < 0)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = float(float64(x[i]))
        out[i] = v * (0.5 * math.erfc(-v * _INV_SQRT_2))


@kernel
def _gelu_backward(n, g, x, out):
    """dx = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = float(float64(x[i]))
        d = 0.5 * math.erfc(-v * _INV_SQRT_2) + v * (_INV_SQRT_2PI * math.exp(-0.5 * v * v))
        out[i] = float(float64(g[i])) * d


def _flat(xp: Any, a: Any) -> Any:
    return xp.ascontiguousarray(a).reshape(-1)


def _unary(k: Any, xp: Any, x: Any) -> Any:
    out = xp.empty(x.shape, dtype=x.dtype)
    n = x.size
    if n:
        k(n, n, _flat(xp, x), out.reshape(-1))
    return out


def erf(xp: Any, x: Any) -> Any:
    """erf of a float32/float64 array: a new array of its shape and dtype."""
    return _unary(_erf, xp, x)


def erfc(xp: Any, x: Any) -> Any:
    """erfc of a float32/float64 array: a new array of its shape and dtype."""
    return _unary(_erfc, xp, x)


def gelu(xp: Any, x: Any) -> Any:
    """The exact GELU of a float32/float64 array: a new array of its shape and dtype."""
    return _unary(_gelu, xp, x)


def gelu_backward(xp: Any, grad_output: Any, x: Any, dtype: Any) -> Any:
    """dy * GELU'(x) for arrays of one shape, as a new array of ``dtype`` (float32/64)."""
    out = xp.empty(x.shape, dtype=dtype)
    n = x.size
    if n:
        g = _flat(xp, grad_output.astype(dtype, copy=False))  # float16 dy: no half kernels
        _gelu_backward(n, n, g, _flat(xp, x), out.reshape(-1))
    return out
