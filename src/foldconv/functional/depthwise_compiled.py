"""Compiled depthwise kernels (Numba), the optional fast path of functional/depthwise.py.

The NumPy path makes one pass over a block of the output per kernel tap; each pass is a
separate NumPy call, so a 3x3 layer reads and writes its output 9 times and pays 18 calls
per block. Compiled, the same sums run in one pass: for each output row, all taps are
applied while the row sits in L1. The forward adds the taps in the NumPy path's order
(row-major, accumulated in the array's dtype), so it agrees with it to the last bit; the
input gradient receives each element's contributions in another order (output rows
outermost), so it agrees to rounding; the weight gradient sums in float64 (its sums run
over N·prod(out) terms) and rounds once.

Zero padding is done by the kernels themselves, one (sample, channel) plane at a time in a
scratch plane that stays in cache, so zero-padded layers need no padded copy of the input
and no crop of its gradient.

Used when Numba is installed (``pip install foldconv[fast]``) and the arrays are float32
or float64 CPU arrays of a 1-d or 2-d layer; ``foldconv.set_compiled(False)`` turns it
off. Each kernel is compiled once per dtype on first use and cached on disk. Blocks of
channels run on foldconv's thread pool: the kernels release the GIL.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from foldconv.functional import compiled
from foldconv.functional._args import ConvGeometry
from foldconv.functional.threads import parallel_map

_load: Any = None  # set by _kernels()


def applies(g: ConvGeometry, *arrays: Any) -> bool:
    """These arrays and this geometry can take the compiled kernels."""
    return g.ndim in (1, 2) and compiled.takes(*arrays)


@functools.cache
def _kernels() -> dict[str, Any]:
    jit = compiled.njit(nogil=True, boundscheck=False)

    # Zero padding happens per (sample, channel) plane, in a scratch plane that stays in
    # cache: copying the plane in is cheap, and the taps then read whole rows at fixed
    # offsets, as on a padded input. (Skipping the taps that fall in the padding instead
    # left inner loops of 111 elements, whose scalar remainders cost more than the copy:
    # forward 5.9 ms against 3.7 single-threaded, measured.) Padded copies of the whole
    # input and crops of its gradient, 9 of the 26 ms the suite's depthwise layer took
    # with them, are not needed.
    @jit
    def load(plane, x, n, c, pt, pl):  # pragma: no cover - compiled
        h, width = x.shape[2], x.shape[3]
        for i in range(h):
            dst = plane[pt + i, pl:]
            src = x[n, c, i]
            for j in range(width):
                dst[j] = src[j]

    # Rows are taken as views that start at their offset, so that every index in the
    # inner loops is a loop counter: an index Numba cannot prove non-negative gets a
    # wraparound test per element, which stops LLVM vectorising (4x slower, measured).
    # Unit strides take their own branch and loop: one variable holding both kinds of
    # view would be typed as strided, and the contiguous loop would not vectorise.
    # The kernels find ``load`` as a module global, not a closure variable: Numba's disk
    # cache keys a closure by its variables, whose identity differs in every process, so
    # each process would compile the kernels again.
    globals()["_load"] = load

    @jit
    def forward(x, w, y, mult, sh, sw, dh, dw, pt, pl, hp, wp, c0, c1):  # pragma: no cover
        # y[n, co, oh, :]
        #     = Σ_{kh, kw} w[co, kh, kw] · x_pad[n, co // mult, oh·sh + kh·dh, kw·dw + :·sw]
        n_batch, oh_n, ow_n = y.shape[0], y.shape[2], y.shape[3]
        kh_n, kw_n = w.shape[1], w.shape[2]
        plane = np.zeros((hp, wp), dtype=y.dtype)
        for n in range(n_batch):
            loaded = -1
            for co in range(c0, c1):
                ci = co // mult
                if ci != loaded:
                    _load(plane, x, n, ci, pt, pl)
                    loaded = ci
                for oh in range(oh_n):
                    row = y[n, co, oh]
                    for kh in range(kh_n):
                        ih = oh * sh + kh * dh
                        for kw in range(kw_n):
                            wv = w[co, kh, kw]
                            first = kh == 0 and kw == 0
                            if sw == 1:
                                src = plane[ih, kw * dw :]
                                if first:
                                    for ow in range(ow_n):
                                        row[ow] = wv * src[ow]
                                else:
                                    for ow in range(ow_n):
                                        row[ow] += wv * src[ow]
                            else:
                                src_s = plane[ih, kw * dw :: sw]
                                if first:
                                    for ow in range(ow_n):
                                        row[ow] = wv * src_s[ow]
                                else:
                                    for ow in range(ow_n):
                                        row[ow] += wv * src_s[ow]

    @jit
    def input_grad(dy, w, dx, mult, sh, sw, dh, dw, pt, pl, hp, wp, c0, c1):  # pragma: no cover
        # dx_pad[n, ci, oh·sh + kh·dh, kw·dw + :·sw]
        #     += Σ_j w[ci·mult + j, kh, kw] · dy[n, ci·mult + j, oh, :]
        # accumulated in a padded plane, of which dx receives the interior.
        n_batch, oh_n, ow_n = dy.shape[0], dy.shape[2], dy.shape[3]
        h, width = dx.shape[2], dx.shape[3]
        kh_n, kw_n = w.shape[1], w.shape[2]
        plane = np.empty((hp, wp), dtype=dx.dtype)
        for n in range(n_batch):
            for ci in range(c0, c1):
                plane[:] = 0.0
                for j in range(mult):
                    co = ci * mult + j
                    for oh in range(oh_n):
                        src = dy[n, co, oh]
                        for kh in range(kh_n):
                            ih = oh * sh + kh * dh
                            for kw in range(kw_n):
                                wv = w[co, kh, kw]
                                if sw == 1:
                                    row = plane[ih, kw * dw :]
                                    for ow in range(ow_n):
                                        row[ow] += wv * src[ow]
                                else:
                                    row_s = plane[ih, kw * dw :: sw]
                                    for ow in range(ow_n):
                                        row_s[ow] += wv * src[ow]
                for i in range(h):
                    out = dx[n, ci, i]
                    inner = plane[pt + i, pl:]
                    for q in range(width):
                        out[q] = inner[q]

    # The weight gradient's row sums may be reassociated (and only that: no other
    # fast-math assumption): a sum in strict order cannot be vectorised, 27 ms against
    # 6 ms on the suite's depthwise layer (measured). The sums run in float64 over the
    # float32 products, so their order moves the result by ~1e-16, not 1e-7.
    @compiled.njit(nogil=True, boundscheck=False, fastmath={"reassoc"})
    def weight_grad(dy, x, dwt, mult, sh, sw, dh, dw, pt, pl, hp, wp, c0, c1):  # pragma: no cover
        # dwt[co, kh, kw]
        #     = Σ_{n, oh, ow} dy[n, co, oh, ow] · x_pad[n, co // mult, oh·sh + kh·dh, ow·sw + kw·dw]
        n_batch, oh_n, ow_n = dy.shape[0], dy.shape[2], dy.shape[3]
        kh_n, kw_n = dwt.shape[1], dwt.shape[2]
        sums = np.zeros(kh_n * kw_n, dtype=np.float64)
        plane = np.zeros((hp, wp), dtype=x.dtype)
        for co in range(c0, c1):
            ci = co // mult
            sums[:] = 0.0
            # All taps in one sweep over δ: each row of δ is read once, not prod(K) times.
            for n in range(n_batch):
                _load(plane, x, n, ci, pt, pl)
                for oh in range(oh_n):
                    d = dy[n, co, oh]
                    for kh in range(kh_n):
                        ih = oh * sh + kh * dh
                        for kw in range(kw_n):
                            part = 0.0
                            if sw == 1:
                                src = plane[ih, kw * dw :]
                                for ow in range(ow_n):
                                    part += np.float64(d[ow]) * np.float64(src[ow])
                            else:
                                src_s = plane[ih, kw * dw :: sw]
                                for ow in range(ow_n):
                                    part += np.float64(d[ow]) * np.float64(src_s[ow])
                            sums[kh * kw_n + kw] += part
            for kh in range(kh_n):
                for kw in range(kw_n):
                    dwt[co, kh, kw] = sums[kh * kw_n + kw]

    return {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}


def _as_2d(a: Any, g: ConvGeometry) -> Any:
    """A C-contiguous (N, C, H, W) view or copy; a 1-d layer gets H = 1."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[:2] + (1,) * (4 - a.ndim) + a.shape[2:]) if g.ndim == 1 else a


def _params(g: ConvGeometry) -> tuple[int, int, int, int, int]:
    mult = g.out_channels // g.in_channels
    if g.ndim == 1:
        return mult, 1, g.stride[0], 1, g.dilation[0]
    return mult, g.stride[0], g.stride[1], g.dilation[0], g.dilation[1]


def _blocks(channels: int) -> list[tuple[int, int]]:
    step = max(1, -(-channels // 8))
    return [(c0, min(channels, c0 + step)) for c0 in range(0, channels, step)]


def _kernel_2d(w: Any, g: ConvGeometry) -> Any:
    return np.ascontiguousarray(w).reshape((g.out_channels,) + (1,) * (2 - g.ndim) + g.kernel)


def _front_pads(g: ConvGeometry, padded: bool) -> tuple[int, int, int, int]:
    """(rows, columns) of zero padding in front that the kernels add themselves, and the
    padded plane's (rows, columns)."""
    lows = (0, 0) if padded else tuple(lo for lo, _ in g.pads)
    plane = g.padded_shape
    if g.ndim == 1:
        return (0, lows[-1], 1, plane[0])
    return lows + plane


def forward(x: Any, w: Any, g: ConvGeometry, *, padded: bool = True) -> Any:
    """Eq. F for groups == C_in (see :func:`foldconv.functional.depthwise.forward`).

    Parameters
    ----------
    x : ndarray, shape (N, C, *S_pad), or (N, C, *S) when ``padded`` is False (zero
        padding only: the kernels pad each plane in cache)
    w : ndarray, shape (C·m, 1, *K)

    Returns
    -------
    ndarray, shape (N, C·m, *out)
    """
    run = _kernels()["forward"]
    x4, w3 = _as_2d(x, g), _kernel_2d(w, g)
    out_2d = (1,) * (2 - g.ndim) + g.out_shape
    y = np.empty((g.batch, g.out_channels) + out_2d, dtype=x.dtype)
    p = _params(g) + _front_pads(g, padded)
    parallel_map(lambda b: run(x4, w3, y, *p, b[0], b[1]), _blocks(g.out_channels))
    return y.reshape((g.batch, g.out_channels) + g.out_shape)


def input_grad(dy: Any, w: Any, g: ConvGeometry, *, padded: bool = True) -> Any:
    """Eq. BX for groups == C_in. Returns dX_pad, shape (N, C, *S_pad), or dX, shape
    (N, C, *S), when ``padded`` is False (zero padding only)."""
    run = _kernels()["input_grad"]
    d4, w3 = _as_2d(dy, g), _kernel_2d(w, g)
    shape = g.padded_shape if padded else g.in_shape
    # Every element is written: each plane is accumulated in scratch, then copied out.
    dx = np.empty((g.batch, g.in_channels) + (1,) * (2 - g.ndim) + shape, dtype=dy.dtype)
    p = _params(g) + _front_pads(g, padded)
    parallel_map(lambda b: run(d4, w3, dx, *p, b[0], b[1]), _blocks(g.in_channels))
    return dx.reshape((g.batch, g.in_channels) + shape)


def weight_grad(dy: Any, x: Any, g: ConvGeometry, *, padded: bool = True) -> Any:
    """Eq. BW for groups == C_in; ``x`` as for :func:`forward`. Returns dW, (C·m, 1, *K)."""
    run = _kernels()["weight_grad"]
    d4, x4 = _as_2d(dy, g), _as_2d(x, g)
    k_2d = (1,) * (2 - g.ndim) + g.kernel
    dw = np.empty((g.out_channels,) + k_2d, dtype=dy.dtype)
    p = _params(g) + _front_pads(g, padded)
    parallel_map(lambda b: run(d4, x4, dw, *p, b[0], b[1]), _blocks(g.out_channels))
    return dw.reshape((g.out_channels, 1) + g.kernel)
