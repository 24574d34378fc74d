"""Compiled local response normalisation (Numba), the optional fast path of functional/lrn.py.

The NumPy path makes a dozen passes over the whole array per call: the squares, one
shifted addition per channel of the window, the scale, the power, the product (and as
many again in the backward), each a separate NumPy call streaming the array through
memory. Compiled, each (sample, tile of positions) block is done in one sweep over its
channels while the window's rows sit in cache: x is read once from memory and y, s and
s^(-beta) are written once. The backward reads dy, x, s and s^(-beta) once and writes dx
once.

The arithmetic is the NumPy path's, operation for operation and in its order: the window
sum starts at the element's own channel, then adds the channels below it in ascending
order, then those above (:func:`foldconv.functional.lrn._window_sum`); every product and
sum is rounded in the array's dtype, with no fused multiply-adds (no fast-math). So the
results are the NumPy path's to the last bit for beta = 0.75, where both compute
s^(-0.75) as 1 / (sqrt(s) · sqrt(sqrt(s))) from correctly rounded square roots (unless s
can be -inf: :func:`foldconv.functional.lrn._sqrt_form`). Otherwise both call a
libm-quality ``pow``, NumPy's and Numba's (LLVM's), which may differ in the last bit
(measured: at most 1 ulp of s^(-beta) apart); the tests bound that.

Each element's value depends only on its own (sample, position) column, so the tiling
and the number of threads cannot change a result. Samples are spread over foldconv's
thread pool; the kernels are serial and release the GIL.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from foldconv.functional import compiled
from foldconv.functional.threads import active_threads, parallel_map

# Positions per tile: long enough that the per-row setup (a few array views) is paid
# rarely (tiles of 64 positions cost 17 ms against 8 for whole 3025-position rows in the
# first AlexNet LRN's forward, measured), short enough that the forward's window rows and the
# backward's ring of rows stay in L2.
_TILE = 4096


@functools.cache
def _kernels() -> dict[str, Any]:
    # NumPy's error model: a division by zero gives inf or NaN as in NumPy (s = 0 where k = 0
    # and the window is all zeros), not ZeroDivisionError; and without the test for it
    # before every division the loops vectorise (forward 24 -> 13 ms, measured).
    jit = compiled.njit(nogil=True, boundscheck=False, error_model="numpy")

    @jit
    def forward(
        x, y, s_out, p_out, before, after, a, kk, nb, quarter, one, n0, n1, tile
    ):  # pragma: no cover - compiled
        # s = k + a · Σ_{j∈[c-before, c+after]∩[0,C)} x_j², p = s^(-beta), y = x · p
        # (quarter: beta = 0.75, p = one / (sqrt(s) · sqrt(sqrt(s)))); y, s_out, p_out
        # of shape (0, 0, 0) are not written.
        channels, positions = x.shape[1], x.shape[2]
        want_y = y.shape[0] > 0
        want_cache = s_out.shape[0] > 0
        acc = np.empty(tile, dtype=x.dtype)
        pw = np.empty(tile, dtype=x.dtype)
        for n in range(n0, n1):
            for m0 in range(0, positions, tile):
                m1 = min(positions, m0 + tile)
                length = m1 - m0
                for c in range(channels):
                    xc = x[n, c, m0:m1]
                    for m in range(length):
                        acc[m] = xc[m] * xc[m]
                    for j in range(max(0, c - before), c):
                        xj = x[n, j, m0:m1]
                        for m in range(length):
                            acc[m] += xj[m] * xj[m]
                    for j in range(c + 1, min(channels, c + after + 1)):
                        xj = x[n, j, m0:m1]
                        for m in range(length):
                            acc[m] += xj[m] * xj[m]
                    # The scale, the power and the stores in one loop (three variants: a
                    # branch inside the loop would stop its vectorisation).
                    if not quarter:
                        for m in range(length):
                            pw[m] = (acc[m] * a + kk) ** nb
                    yc = y[n, c, m0:m1] if want_y else acc
                    sc = s_out[n, c, m0:m1] if want_cache else acc
                    pc = p_out[n, c, m0:m1] if want_cache else acc
                    if want_y and want_cache:
                        for m in range(length):
                            sv = acc[m] * a + kk
                            if quarter:
                                r = np.sqrt(sv)
                                pv = one / (r * np.sqrt(r))
                            else:
                                pv = pw[m]
                            sc[m] = sv
                            pc[m] = pv
                            yc[m] = xc[m] * pv
                    elif want_y:
                        for m in range(length):
                            sv = acc[m] * a + kk
                            if quarter:
                                r = np.sqrt(sv)
                                pv = one / (r * np.sqrt(r))
                            else:
                                pv = pw[m]
                            yc[m] = xc[m] * pv
                    else:
                        for m in range(length):
                            sv = acc[m] * a + kk
                            if quarter:
                                r = np.sqrt(sv)
                                pv = one / (r * np.sqrt(r))
                            else:
                                pv = pw[m]
                            sc[m] = sv
                            pc[m] = pv

    @jit
    def backward(dy, x, s, p, dx, before, after, coef, n0, n1, tile):  # pragma: no cover - compiled
        # t_c = dy_c x_c p_c / s_c; dx_i = dy_i p_i − coef · x_i Σ_{c∈[i-before, i+after]} t_c
        # The rows of t live in a ring of min(size, C) rows: row c is made when channel
        # c - after is reached, and no longer needed once channel c + before is done.
        channels, positions = x.shape[1], x.shape[2]
        ring = min(before + after + 1, channels)
        t = np.empty((ring, tile), dtype=x.dtype)
        acc = np.empty(tile, dtype=x.dtype)
        order = np.empty(before + after + 1, dtype=np.int64)
        for n in range(n0, n1):
            for m0 in range(0, positions, tile):
                m1 = min(positions, m0 + tile)
                length = m1 - m0
                made = 0  # rows of t made so far
                for i in range(channels):
                    while made < min(channels, i + after + 1):
                        tc = t[made % ring]
                        dyc = dy[n, made, m0:m1]
                        xc = x[n, made, m0:m1]
                        pc = p[n, made, m0:m1]
                        sc = s[n, made, m0:m1]
                        for m in range(length):
                            tc[m] = dyc[m] * xc[m] * pc[m] / sc[m]
                        made += 1
                    # The window's rows in the NumPy path's order: i, then those below,
                    # then those above. The first two are added in the loop that starts
                    # acc and the last in the loop that writes dx: two fewer passes.
                    k = 0
                    order[k] = i
                    k += 1
                    for j in range(max(0, i - before), i):
                        order[k] = j
                        k += 1
                    for j in range(i + 1, min(channels, i + after + 1)):
                        order[k] = j
                        k += 1
                    dyi = dy[n, i, m0:m1]
                    xi = x[n, i, m0:m1]
                    pi = p[n, i, m0:m1]
                    dxi = dx[n, i, m0:m1]
                    if k == 1:
                        ti = t[i % ring]
                        for m in range(length):
                            dxi[m] = dyi[m] * pi[m] - ti[m] * xi[m] * coef
                        continue
                    t0 = t[order[0] % ring]
                    t1 = t[order[1] % ring]
                    for m in range(length):
                        acc[m] = t0[m] + t1[m]
                    for q in range(2, k - 1):
                        tq = t[order[q] % ring]
                        for m in range(length):
                            acc[m] += tq[m]
                    if k == 2:
                        for m in range(length):
                            dxi[m] = dyi[m] * pi[m] - acc[m] * xi[m] * coef
                    else:
                        tl = t[order[k - 1] % ring]
                        for m in range(length):
                            dxi[m] = dyi[m] * pi[m] - (acc[m] + tl[m]) * xi[m] * coef

    return {"forward": forward, "backward": backward}


def _flat(a: Any) -> Any:
    """A C-contiguous (N, C, prod(S)) view or copy."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))


def _samples(batch: int) -> list[tuple[int, int]]:
    """Blocks of samples, a few per thread so that a slow thread does not hold up the rest."""
    step = max(1, -(-batch // (4 * active_threads())))
    return [(n0, min(batch, n0 + step)) for n0 in range(0, batch, step)]


def forward(
    x: Any,
    n: int,
    alpha: float,
    beta: float,
    k: float,
    sqrt_form: bool,
    want_y: bool,
    want_cache: bool,
) -> tuple[Any, Any, Any]:
    """y = x · s^(-beta) and the cache (s, s^(-beta)) of
    :func:`foldconv.functional.lrn.local_response_norm`.

    Parameters
    ----------
    x : ndarray, shape (N, C, *S), float32 or float64
    n, alpha, beta, k : the checked arguments
    sqrt_form : bool
        s^(-beta) as 1 / (sqrt(s) · sqrt(sqrt(s))) (beta = 0.75), else ``s ** -beta``
        (:func:`foldconv.functional.lrn._sqrt_form`).
    want_y, want_cache : bool
        Which outputs to write; the others come back as None.

    Returns
    -------
    y, s, p : ndarrays of x's shape and dtype, or None
    """
    dt = x.dtype.type
    x3 = _flat(x)
    empty = np.empty((0, 0, 0), dtype=x.dtype)
    y = np.empty(x3.shape, dtype=x.dtype) if want_y else empty
    s = np.empty(x3.shape, dtype=x.dtype) if want_cache else empty
    p = np.empty(x3.shape, dtype=x.dtype) if want_cache else empty
    args = (n // 2, (n - 1) // 2, dt(alpha / n), dt(k), dt(-beta), bool(sqrt_form), dt(1.0))
    tile = max(1, min(_TILE, x3.shape[2]))
    run = _kernels()["forward"]
    if x3.size:
        parallel_map(lambda b: run(x3, y, s, p, *args, b[0], b[1], tile), _samples(x3.shape[0]))

    def back(a: Any, wanted: bool) -> Any:
        return a.reshape(x.shape) if wanted else None

    return back(y, want_y), back(s, want_cache), back(p, want_cache)


def backward(dy: Any, x: Any, s: Any, p: Any, n: int, alpha: float, beta: float) -> Any:
    """dx of :func:`foldconv.functional.lrn.local_response_norm_backward`; all arrays of
    x's shape (N, C, *S) and dtype (float32 or float64)."""
    dy3, x3, s3, p3 = _flat(dy), _flat(x), _flat(s), _flat(p)
    dx = np.empty(x3.shape, dtype=x.dtype)
    coef = x.dtype.type(2.0 * alpha * beta / n)
    tile = max(1, min(_TILE, x3.shape[2]))
    run = _kernels()["backward"]
    if x3.size:
        parallel_map(
            lambda b: run(dy3, x3, s3, p3, dx, (n - 1) // 2, n // 2, coef, b[0], b[1], tile),
            _samples(x3.shape[0]),
        )
    return dx.reshape(x.shape)
