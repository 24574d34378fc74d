"""Local response normalisation on the GPU: forward and backward, one kernel launch each.

One thread per element of x (N, C, *S), which sums over its channel window; the sums
run in the CPU path's order (:func:`foldconv.functional.lrn._window_sum`: the element's
own channel, then the offsets in increasing order) and in the compute dtype. No atomics:
bitwise reproducible run to run.

Called by :mod:`foldconv.functional.lrn` after it has checked the arguments; arrays are
in the compute dtype (float32 or float64).
"""

from __future__ import annotations

import math
from typing import Any

from foldconv.backend import get_array_module
from foldconv.cuda.launch import kernel, numba_cuda

cuda = numba_cuda()


@cuda.jit(device=True)
def _scale(x, i, c, C, inner, before, after, alpha_n, k):
    """s = k + (alpha/n) * sum of x^2 over channels [c - before, c + after] inside [0, C)
    of element i's (n, spatial) position (computed as (sum * alpha_n) + k, as the CPU path)."""
    v = x[i]
    w = v * v
    for off in range(-before, after + 1):
        j = c + off
        if off != 0 and 0 <= j < C:
            u = x[i + off * inner]
            w += u * u
    return w * alpha_n + k


@kernel
def _lrn_forward(n, x, y, s_out, p_out, want_cache, C, inner, before, after, alpha_n, k, nbeta):
    """y = x s^(-beta), s = k + (alpha/n) sum_{j in win(c)} x_j^2; also s and s^(-beta)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // inner) % C
        s = _scale(x, i, c, C, inner, before, after, alpha_n, k)
        p = s**nbeta
        y[i] = x[i] * p
        if want_cache:
            s_out[i] = s
            p_out[i] = p


@cuda.jit(device=True)
def _t(g, x, s_in, p_in, has_cache, i, c, C, inner, before, after, alpha_n, k, nbeta):
    """t = dy x s^(-beta) / s at element i (channel c), s and s^(-beta) from the cache or
    recomputed."""
    if has_cache:
        s = s_in[i]
        p = p_in[i]
    else:
        s = _scale(x, i, c, C, inner, before, after, alpha_n, k)
        p = s**nbeta
    return g[i] * x[i] * p / s


@kernel
def _lrn_backward(
    n, g, x, s_in, p_in, has_cache, gx, C, inner, before, after, alpha_n, k, nbeta, coef
):
    """dx_i = dy_i s_i^{-β} − (2αβ/n) x_i Σ_{c: i∈win(c)} dy_c x_c s_c^{-β} / s_c.

    (The derivation is in :func:`foldconv.functional.lrn.local_response_norm_backward`.)
    The channels c whose window holds channel i are [i - after, i + before]: the window
    mirrored.
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // inner) % C
        acc = _t(g, x, s_in, p_in, has_cache, i, c, C, inner, before, after, alpha_n, k, nbeta)
        for off in range(-after, before + 1):
            j = c + off
            if off != 0 and 0 <= j < C:
                acc += _t(
                    g,
                    x,
                    s_in,
                    p_in,
                    has_cache,
                    i + off * inner,
                    j,
                    C,
                    inner,
                    before,
                    after,
                    alpha_n,
                    k,
                    nbeta,
                )
        if has_cache:
            p = p_in[i]
        else:
            p = _scale(x, i, c, C, inner, before, after, alpha_n, k) ** nbeta
        gx[i] = g[i] * p - acc * x[i] * coef


def _flat(xp: Any, a: Any) -> Any:
    return xp.ascontiguousarray(a).reshape(-1)


def _layout(x: Any, size: int) -> tuple[int, int, int, int]:
    """(C, inner = prod(S), before = size // 2, after = (size - 1) // 2) of x (N, C, *S)."""
    return int(x.shape[1]), math.prod(x.shape[2:]), size // 2, (size - 1) // 2


def local_response_norm(
    x: Any, size: int, alpha: float, beta: float, k: float, want_cache: bool
) -> tuple[Any, Any]:
    """(y, (s, s^(-beta)) or None) for x (N, C, *S) in the compute dtype."""
    xp = get_array_module(x)
    dt = x.dtype.type
    y = xp.empty(x.shape, dtype=x.dtype)
    s = xp.empty(x.shape if want_cache else (1,), dtype=x.dtype)
    p = xp.empty(x.shape if want_cache else (1,), dtype=x.dtype)
    n = x.size
    _lrn_forward(
        n,
        n,
        _flat(xp, x),
        y.reshape(-1),
        s.reshape(-1),
        p.reshape(-1),
        want_cache,
        *_layout(x, size),
        dt(alpha / size),
        dt(k),
        dt(-beta),
    )
    return y, ((s, p) if want_cache else None)


def local_response_norm_backward(
    g: Any, x: Any, size: int, alpha: float, beta: float, k: float, cache: Any
) -> Any:
    """dx for dy ``g`` and x (N, C, *S) in the compute dtype; ``cache`` (s, s^(-beta)) or None."""
    xp = get_array_module(g, x)
    dt = x.dtype.type
    has_cache = cache is not None
    if has_cache:
        s, p = (_flat(xp, a.astype(x.dtype, copy=False)) for a in cache)
    else:
        s = p = xp.empty((1,), dtype=x.dtype)
    gx = xp.empty(x.shape, dtype=x.dtype)
    n = x.size
    _lrn_backward(
        n,
        n,
        _flat(xp, g),
        _flat(xp, x),
        s,
        p,
        has_cache,
        gx.reshape(-1),
        *_layout(x, size),
        dt(alpha / size),
        dt(k),
        dt(-beta),
        dt(2.0 * alpha * beta / size),
    )
    return gx
