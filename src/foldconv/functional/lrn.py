"""Local response normalisation across channels (AlexNet, section 3.3), PyTorch's semantics.

On the CPU, with Numba installed, float32 and float64 arrays take compiled kernels that
do each pass in one sweep per sample in cache (:mod:`foldconv.functional.lrn_compiled`);
the NumPy path below is their twin, with the same operations in the same order.

On the GPU (CuPy arrays) the forward and the backward are one numba-cuda kernel launch
each (:mod:`foldconv.cuda.lrn`), a thread per element summing over its channel window.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from foldconv.backend import get_array_module, gpu_path
from foldconv.functional import compiled, lrn_compiled
from foldconv.functional._args import as_float_array, compute_dtype

__all__ = ["local_response_norm", "local_response_norm_backward"]


def _check_args(x: Any, size: Any, alpha: Any, beta: Any, k: Any, name: str = "x") -> int:
    if isinstance(size, bool):
        raise TypeError(f"size: expected a positive int, got bool {size!r}")
    try:
        n = operator.index(size)
    except TypeError:
        raise TypeError(
            f"size: expected a positive int, got {type(size).__name__} {size!r}"
        ) from None
    if n < 1:
        raise ValueError(f"size: expected a positive int, got {n}")
    for arg, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{arg}: expected a real number, got {type(value).__name__} {value!r}")
    if x.ndim < 3:
        raise ValueError(
            f"{name}: expected an array of 3 or more dimensions (N, C, *spatial), "
            f"got shape {tuple(x.shape)}"
        )
    return n


def _window_sum(a: Any, before: int, after: int) -> Any:
    """w[:, c] = sum of a[:, j] for j in [c - before, c + after] inside [0, C) (zeros outside).

    One shifted in-place addition per window offset (``before + after + 1`` passes over
    the array); unlike differences of a cumulative sum, no cancellation error.
    """
    c = a.shape[1]
    w = a.copy()
    for off in range(-before, after + 1):
        if off == 0 or abs(off) >= c:
            continue
        if off > 0:  # w[c] += a[c + off]
            w[:, : c - off] += a[:, off:]
        else:  # w[c] += a[c - |off|]
            w[:, -off:] += a[:, : c + off]
    return w


def _sqrt_form(alpha: float, beta: float, k: float) -> bool:
    """Whether s^(-beta) is computed as 1 / (sqrt(s) · sqrt(sqrt(s))) (:func:`_neg_power`).

    For beta = 0.75, unless s can be -inf (only where alpha < 0 or k = -inf: the window
    sum of squares is >= 0, +inf or NaN), where ``power`` gives 0 and the square root NaN.
    """
    return beta == 0.75 and alpha >= 0 and k > -math.inf


def _neg_power(s: Any, beta: float, sqrt_form: bool) -> Any:
    """s^(-beta), a new array.

    With ``sqrt_form`` (:func:`_sqrt_form`: beta = 0.75, PyTorch's default and AlexNet's)
    as 1 / (sqrt(s) · sqrt(sqrt(s))): square roots and a division are correctly rounded
    and vectorise, where ``power`` costs ~1.5 ns an element (6.7 of the first AlexNet
    LRN's 15.9 ms forward). Four correctly rounded operations, the first counting 1.5
    times: a relative error of at most 2.25 eps (measured against s^(-0.75) in 50-digit
    arithmetic over s in [0.5, 50.5): 1.6 eps in float32, 1.9 in float64; ``power``: 0.85
    and 1.0). Special values come out as ``power``'s: s = 0 gives inf, s = inf gives 0,
    s < 0 and NaN give NaN (s = -inf is left to ``power``); s^0.75 cannot overflow where
    s is finite.
    """
    xp = get_array_module(s)
    dt = s.dtype.type
    if sqrt_form:
        r = xp.sqrt(s)
        r *= xp.sqrt(r)
        return xp.divide(dt(1.0), r, out=r)
    return xp.power(s, dt(-beta))


def _scale(xc: Any, n: int, alpha: float, beta: float, k: float) -> tuple[Any, Any]:
    """s = k + (alpha / n) * window sum of x^2, and s^(-beta)."""
    dt = xc.dtype.type
    s = _window_sum(xc * xc, n // 2, (n - 1) // 2)
    s *= dt(alpha / n)
    s += dt(k)
    return s, _neg_power(s, beta, _sqrt_form(alpha, beta, k))


def local_response_norm(
    x: Any,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    return_cache: bool = False,
) -> Any:
    """Local response normalisation over channels, PyTorch's ``local_response_norm``.

    With ``n = size`` and the window ``win(c) = [c - n//2, c + (n-1)//2]`` (channels
    outside ``[0, C)`` count as zeros)::

        s_c = k + (alpha / n) * sum_{j in win(c)} x_j^2
        y_c = x_c * s_c^(-beta)

    Note that PyTorch (and so foldconv) divides ``alpha`` by ``n``; the AlexNet paper's
    alpha = 1e-4 with n = 5 is ``alpha=5e-4`` here.

    Parameters
    ----------
    x : ndarray, shape (N, C, *S) with at least 3 dimensions
        float16/32/64; axis 1 is the channel axis (as in PyTorch, a 3-d input is
        (N, C, L), not an unbatched image).
    size : int
        Number of channels in the window (> 0).
    alpha, beta, k : float
        Scale, exponent and additive constant.
    return_cache : bool
        Also return ``(s, s^(-beta))`` for :func:`local_response_norm_backward`.

    Returns
    -------
    y : ndarray, shape of x, dtype of x
    cache : tuple of ndarrays
        Only with ``return_cache``; in the compute dtype (float32 for float16 input).
    """
    x = as_float_array(x, "x")
    n = _check_args(x, size, alpha, beta, k)
    xc = x.astype(compute_dtype(x.dtype), copy=False)
    if gpu_path(get_array_module(xc)):  # one kernel launch: a thread per element
        from foldconv.cuda import lrn as gpu  # noqa: PLC0415

        y, cache = gpu.local_response_norm(
            xc, n, float(alpha), float(beta), float(k), bool(return_cache)
        )
        y = y.astype(x.dtype, copy=False)
        return (y, cache) if return_cache else y
    if compiled.takes(xc):  # one sweep per sample in cache
        a, b, kk = float(alpha), float(beta), float(k)
        y, s, p = lrn_compiled.forward(
            xc, n, a, b, kk, _sqrt_form(a, b, kk), True, bool(return_cache)
        )
        y = y.astype(x.dtype, copy=False)
        return (y, (s, p)) if return_cache else y
    s, p = _scale(xc, n, float(alpha), float(beta), float(k))
    y = (xc * p).astype(x.dtype, copy=False)
    if return_cache:
        return y, (s, p)
    return y


def local_response_norm_backward(
    grad_output: Any,
    x: Any,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    cache: tuple[Any, Any] | None = None,
) -> Any:
    r"""Gradient of :func:`local_response_norm` with respect to its input.

    Derivation. With ``s_c = k + (α/n) Σ_{j∈win(c)} x_j²`` and ``y_c = x_c s_c^{-β}``,
    ``∂s_c/∂x_i = (2α/n) x_i [i ∈ win(c)]``, so

        ∂y_c/∂x_i = [c = i] s_i^{-β} − β x_c s_c^{-β-1} (2α/n) x_i [i ∈ win(c)]

    and summing over c against dy_c::

        dx_i = dy_i s_i^{-β} − (2αβ/n) x_i Σ_{c: i∈win(c)} dy_c x_c s_c^{-β-1}

    Since win(c) = [c − n//2, c + (n−1)//2], the set {c : i ∈ win(c)} is the mirrored
    window [i − (n−1)//2, i + n//2]; the sum is one more sliding-window sum over the
    channel axis, of ``t_c = dy_c x_c s_c^{-β} / s_c``.

    Parameters
    ----------
    grad_output : ndarray, shape of x
        dL/dy.
    x : ndarray, shape (N, C, *S)
        The forward's input.
    size, alpha, beta, k : as given to the forward.
    cache : (s, s^(-beta)), optional
        From ``local_response_norm(..., return_cache=True)``; recomputed if absent.

    Returns
    -------
    ndarray, shape of x
        dL/dx, in grad_output's dtype.
    """
    grad_output = as_float_array(grad_output, "grad_output")
    x = as_float_array(x, "x")
    n = _check_args(x, size, alpha, beta, k)
    if tuple(grad_output.shape) != tuple(x.shape):
        raise ValueError(
            f"grad_output: expected shape {tuple(x.shape)} (the shape of x), "
            f"got {tuple(grad_output.shape)}"
        )
    cdt = compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    if cache is not None:
        s, p = cache
        if tuple(s.shape) != tuple(x.shape) or tuple(p.shape) != tuple(x.shape):
            raise ValueError(
                f"cache: expected two arrays of shape {tuple(x.shape)}, "
                f"got {tuple(s.shape)} and {tuple(p.shape)}"
            )
    if gpu_path(get_array_module(grad_output, xc)):  # one kernel launch: a thread per element
        from foldconv.cuda import lrn as gpu  # noqa: PLC0415

        dy = grad_output.astype(cdt, copy=False)
        dx = gpu.local_response_norm_backward(dy, xc, n, float(alpha), float(beta), float(k), cache)
        return dx.astype(grad_output.dtype, copy=False)
    dy = grad_output.astype(cdt, copy=False)
    if compiled.takes(dy, xc) and (cache is None or compiled.takes(xc, s, p)):
        if cache is None:
            a, b, kk = float(alpha), float(beta), float(k)
            _, s, p = lrn_compiled.forward(xc, n, a, b, kk, _sqrt_form(a, b, kk), False, True)
        dx = lrn_compiled.backward(dy, xc, s, p, n, float(alpha), float(beta))
        return dx.astype(grad_output.dtype, copy=False)
    if cache is None:
        s, p = _scale(xc, n, float(alpha), float(beta), float(k))
    t = dy * xc
    t *= p
    t /= s
    acc = _window_sum(t, (n - 1) // 2, n // 2)
    acc *= xc
    acc *= cdt.type(2.0 * float(alpha) * float(beta) / n)
    dx = dy * p
    dx -= acc
    return dx.astype(grad_output.dtype, copy=False)
