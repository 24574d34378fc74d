"""Pooling on the GPU: max, average, adaptive average and adaptive max, forward and backward.

Each function is one numba-cuda kernel launch. Forwards run one thread per output element,
scanning its window; backwards are gathers, one thread per input element, looping over
the windows that contain it and summing their contributions in a fixed order: no
atomics, so results are bitwise reproducible run to run.

Every kernel is written for 3 spatial dimensions; 1-d and 2-d pooling prepend size-1
dimensions (kernel 1, stride 1, no padding, dilation 1), which changes neither the windows,
nor the row-major tap numbering, nor the flat indices.

Called by :mod:`foldconv.functional.pooling` after it has checked the arguments and
worked out the geometry (see its module docstring); the arrays here have a batch axis
and are in the compute dtype (float32 or float64).

The float64 sums convert each term explicitly (``float64(g[o])``): a compiled kernel would
widen ``0.0 + float32`` to float64 anyway, but the simulator follows NumPy 2's rules and
would keep float32, so without the cast CI would test another sum than the GPU runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import float64

from foldconv.backend import get_array_module
from foldconv.cuda.launch import kernel, numba_cuda

cuda = numba_cuda()


def _as3(values: tuple[int, ...], fill: int) -> tuple[int, ...]:
    """A per-dimension tuple of 1-3 entries as 3, leading dimensions set to ``fill``."""
    return (fill,) * (3 - len(values)) + tuple(int(v) for v in values)


def _flat(xp: Any, a: Any) -> Any:
    """A contiguous 1-d view (or copy) of ``a``: the kernels index flat."""
    return xp.ascontiguousarray(a).reshape(-1)


@cuda.jit(device=True)
def _first_window(q, k, s, d):
    """The first window o (>= 0) whose taps o*s + t*d, t < k, can reach padded position q."""
    lo = q - (k - 1) * d
    if lo <= 0:
        return 0
    return (lo + s - 1) // s


# -- max pooling -------------------------------------------------------------------------------
@kernel
def _max_pool_forward(
    n, x, y, arg, flat, want_arg, want_flat,
    D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW,
):  # fmt: skip
    """y[o] = max over the taps of window o (padding reads -inf), and the winning tap.

    PyTorch's scan: the first tap, then a tap wins if it is strictly greater than the
    running maximum or NaN; so ties go to the first maximal tap (row-major) and the
    last NaN wins, exactly as the CPU path.
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        r = i // OW
        oh = r % OH
        r //= OH
        od = r % OD
        base = (r // OD) * (D * H * W)
        z0 = od * SD - PD
        y0 = oh * SH - PH
        x0 = ow * SW - PW
        best = -math.inf
        best_t = 0
        t = 0
        for a in range(KD):
            z = z0 + a * DD
            for b in range(KH):
                yy = y0 + b * DH
                for c in range(KW):
                    xx = x0 + c * DW
                    v = -math.inf
                    if 0 <= z < D and 0 <= yy < H and 0 <= xx < W:
                        v = x[base + (z * H + yy) * W + xx]
                    if t == 0 or v > best or v != v:
                        best = v
                        best_t = t
                    t += 1
        y[i] = best
        if want_arg:
            arg[i] = best_t
        if want_flat:
            # PyTorch's index: the flat position in the unpadded plane (a window of
            # padding only points into the padding, as on the CPU path)
            a = best_t // (KH * KW)
            b = (best_t // KW) % KH
            c = best_t % KW
            flat[i] = ((z0 + a * DD) * H + (y0 + b * DH)) * W + (x0 + c * DW)


@kernel
def _max_pool_backward(
    n, g, arg, gx,
    D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW,
):  # fmt: skip
    """dx[i] = sum of dy[o] over the windows o whose winning tap sits at input position i.

    Windows in row-major output order, summed in float64 (as the CPU path's bincount).
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        xx = i % W
        r = i // W
        yy = r % H
        r //= H
        z = r % D
        obase = (r // D) * (OD * OH * OW)
        qd = z + PD
        qh = yy + PH
        qw = xx + PW
        acc = 0.0
        for od in range(_first_window(qd, KD, SD, DD), min(qd // SD, OD - 1) + 1):
            md = qd - od * SD
            if md % DD != 0 or md // DD >= KD:
                continue
            for oh in range(_first_window(qh, KH, SH, DH), min(qh // SH, OH - 1) + 1):
                mh = qh - oh * SH
                if mh % DH != 0 or mh // DH >= KH:
                    continue
                for ow in range(_first_window(qw, KW, SW, DW), min(qw // SW, OW - 1) + 1):
                    mw = qw - ow * SW
                    if mw % DW != 0 or mw // DW >= KW:
                        continue
                    t = ((md // DD) * KH + mh // DH) * KW + mw // DW
                    o = obase + (od * OH + oh) * OW + ow
                    if arg[o] == t:
                        acc += float64(g[o])
        gx[i] = acc


def _geometry(in_shape, out_shape, kernel_, stride, padding, dilation) -> tuple[int, ...]:
    return (
        _as3(in_shape, 1)
        + _as3(out_shape, 1)
        + _as3(kernel_, 1)
        + _as3(stride, 1)
        + _as3(padding, 0)
        + _as3(dilation, 1)
    )


def max_pool(
    x: Any,
    out_shape: tuple[int, ...],
    kernel_: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    indices: str | None,
    argmax_dtype: np.dtype,
) -> tuple[Any, Any]:
    """Max pooling of x (N, C, *S) (compute dtype): (y (N, C, *O), indices or None).

    ``indices``: None, "flat" (PyTorch's int64 indices: the flat position in the input
    plane) or "argmax" (the winning tap, row-major over the kernel, in ``argmax_dtype``).
    """
    xp = get_array_module(x)
    lead = tuple(x.shape[:2])
    y = xp.empty(lead + tuple(out_shape), dtype=x.dtype)
    want_arg, want_flat = indices == "argmax", indices == "flat"
    arg = xp.empty(y.shape if want_arg else (1,), dtype=argmax_dtype)
    flat = xp.empty(y.shape if want_flat else (1,), dtype=np.int64)
    geo = _geometry(x.shape[2:], out_shape, kernel_, stride, padding, dilation)
    n = y.size
    _max_pool_forward(
        n,
        n,
        _flat(xp, x),
        y.reshape(-1),
        arg.reshape(-1),
        flat.reshape(-1),
        want_arg,
        want_flat,
        *geo,
    )
    return y, (arg if want_arg else flat if want_flat else None)


def max_pool_backward(
    g: Any,
    argmax: Any,
    input_shape: tuple[int, ...],
    kernel_: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Any:
    """dx (input_shape, batched) from dy (N, C, *O) and the winning taps (N, C, *O)."""
    xp = get_array_module(g, argmax)
    gx = xp.empty(tuple(input_shape), dtype=g.dtype)
    geo = _geometry(input_shape[2:], g.shape[2:], kernel_, stride, padding, dilation)
    n = gx.size
    _max_pool_backward(n, n, _flat(xp, g), _flat(xp, argmax), gx.reshape(-1), *geo)
    return gx


# -- average pooling ---------------------------------------------------------------------------
@kernel
def _avg_pool_forward(
    n, x, y, div, zero, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW,
):  # fmt: skip
    """y[o] = (sum of window o's taps inside x, in row-major tap order) / div[o].

    Summed in the compute dtype starting from the first tap, as the CPU path (its
    zero padding adds nothing).
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        r = i // OW
        oh = r % OH
        r //= OH
        od = r % OD
        base = (r // OD) * (D * H * W)
        acc = zero
        for a in range(KD):
            z = od * SD - PD + a
            if z < 0 or z >= D:
                continue
            for b in range(KH):
                yy = oh * SH - PH + b
                if yy < 0 or yy >= H:
                    continue
                for c in range(KW):
                    xx = ow * SW - PW + c
                    if 0 <= xx < W:
                        acc += x[base + (z * H + yy) * W + xx]
        y[i] = acc / div[i % (OD * OH * OW)]


@kernel
def _avg_pool_backward(
    n, g, gx, div, zero, D, H, W, OD, OH, OW, KD, KH, KW, SD, SH, SW, PD, PH, PW,
):  # fmt: skip
    """dx[i] = sum of dy[o] / div[o] over the windows o containing i.

    Summed in the compute dtype in the CPU path's order: its tap loop adds tap t of every
    window in increasing t, and a larger tap reaching i means an earlier window, so the
    windows come in decreasing order (per dimension, outer to inner).
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        xx = i % W
        r = i // W
        yy = r % H
        r //= H
        z = r % D
        obase = (r // D) * (OD * OH * OW)
        qd = z + PD
        qh = yy + PH
        qw = xx + PW
        acc = zero
        for od in range(min(qd // SD, OD - 1), _first_window(qd, KD, SD, 1) - 1, -1):
            for oh in range(min(qh // SH, OH - 1), _first_window(qh, KH, SH, 1) - 1, -1):
                for ow in range(min(qw // SW, OW - 1), _first_window(qw, KW, SW, 1) - 1, -1):
                    o = (od * OH + oh) * OW + ow
                    acc += g[obase + o] / div[o]
        gx[i] = acc


def avg_pool(
    x: Any,
    out_shape: tuple[int, ...],
    kernel_: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    divisor: Any,
) -> Any:
    """Average pooling of x (N, C, *S) (compute dtype) into y (N, C, *O).

    ``divisor``: NumPy array of shape O (or a scalar), each window's divisor.
    """
    xp = get_array_module(x)
    y = xp.empty(tuple(x.shape[:2]) + tuple(out_shape), dtype=x.dtype)
    div = _divisor(xp, divisor, out_shape, x.dtype)
    geo = _geometry(x.shape[2:], out_shape, kernel_, stride, padding, (1,) * len(out_shape))
    n = y.size
    _avg_pool_forward(n, n, _flat(xp, x), y.reshape(-1), div, x.dtype.type(0), *geo[:-3])
    return y


def avg_pool_backward(
    g: Any,
    input_shape: tuple[int, ...],
    kernel_: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    divisor: Any,
) -> Any:
    """dx (input_shape, batched) from dy (N, C, *O) (compute dtype); divisor as for avg_pool."""
    xp = get_array_module(g)
    gx = xp.empty(tuple(input_shape), dtype=g.dtype)
    out_shape = tuple(g.shape[2:])
    div = _divisor(xp, divisor, out_shape, g.dtype)
    geo = _geometry(input_shape[2:], out_shape, kernel_, stride, padding, (1,) * len(out_shape))
    n = gx.size
    _avg_pool_backward(n, n, _flat(xp, g), gx.reshape(-1), div, g.dtype.type(0), *geo[:-3])
    return gx


def _divisor(xp: Any, divisor: Any, out_shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """The per-window divisors as a flat device array of ``dtype`` (small: one per window
    of a plane)."""
    d = np.array(np.broadcast_to(np.asarray(divisor, dtype=dtype), tuple(out_shape)))
    return xp.asarray(d.reshape(-1))


# -- adaptive pooling --------------------------------------------------------------------------
# Bin o of a dimension of size n pooled to m covers [floor(o n / m), ceil((o+1) n / m));
# the bins containing input cell j are o in [floor(j m / n), ceil((j+1) m / n) - 1].
@cuda.jit(device=True)
def _bin_start(o, n, m):
    """First cell of bin o (of m) over n cells: floor(o n / m)."""
    return (o * n) // m


@cuda.jit(device=True)
def _bin_end(o, n, m):
    """One past the last cell of bin o (of m) over n cells: ceil((o + 1) n / m)."""
    return ((o + 1) * n + m - 1) // m


@kernel
def _adaptive_avg_forward(n, x, y, D, H, W, OD, OH, OW):
    """y[o] = mean of bin o (float64 sum)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        r = i // OW
        oh = r % OH
        r //= OH
        od = r % OD
        base = (r // OD) * (D * H * W)
        d0, d1 = _bin_start(od, D, OD), _bin_end(od, D, OD)
        h0, h1 = _bin_start(oh, H, OH), _bin_end(oh, H, OH)
        w0, w1 = _bin_start(ow, W, OW), _bin_end(ow, W, OW)
        acc = 0.0
        for z in range(d0, d1):
            for yy in range(h0, h1):
                for xx in range(w0, w1):
                    acc += float64(x[base + (z * H + yy) * W + xx])
        y[i] = acc / ((d1 - d0) * (h1 - h0) * (w1 - w0))


@kernel
def _adaptive_avg_backward(n, g, gx, D, H, W, OD, OH, OW):
    """dx[i] = sum of dy[o] / |bin o| over the bins o containing i (float64 sum)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        xx = i % W
        r = i // W
        yy = r % H
        r //= H
        z = r % D
        obase = (r // D) * (OD * OH * OW)
        acc = 0.0
        for od in range(_bin_start(z, OD, D), min(_bin_end(z, OD, D), OD)):
            cd = _bin_end(od, D, OD) - _bin_start(od, D, OD)
            for oh in range(_bin_start(yy, OH, H), min(_bin_end(yy, OH, H), OH)):
                ch = _bin_end(oh, H, OH) - _bin_start(oh, H, OH)
                for ow in range(_bin_start(xx, OW, W), min(_bin_end(xx, OW, W), OW)):
                    cw = _bin_end(ow, W, OW) - _bin_start(ow, W, OW)
                    acc += float64(g[obase + (od * OH + oh) * OW + ow]) / (cd * ch * cw)
        gx[i] = acc


@kernel
def _adaptive_max_forward(n, x, y, idx, D, H, W, OD, OH, OW):
    """y[o] = max of bin o and idx[o] its flat position in the plane (PyTorch's scan:
    the first cell, then strictly greater or NaN)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        ow = i % OW
        r = i // OW
        oh = r % OH
        r //= OH
        od = r % OD
        base = (r // OD) * (D * H * W)
        d0, d1 = _bin_start(od, D, OD), _bin_end(od, D, OD)
        h0, h1 = _bin_start(oh, H, OH), _bin_end(oh, H, OH)
        w0, w1 = _bin_start(ow, W, OW), _bin_end(ow, W, OW)
        pos = (d0 * H + h0) * W + w0
        best = x[base + pos]
        for z in range(d0, d1):
            for yy in range(h0, h1):
                for xx in range(w0, w1):
                    p = (z * H + yy) * W + xx
                    v = x[base + p]
                    if v > best or v != v:
                        best = v
                        pos = p
        y[i] = best
        idx[i] = pos


@kernel
def _adaptive_max_backward(n, n_in, n_out, g, idx, gx, bad, D, H, W, OD, OH, OW):
    """Work item i < n_in: dx[i] = sum of dy[o] over the bins o containing i whose maximum
    is at i (float64 sum, bins in row-major order, as the CPU path's bincount).
    Work item i < n_out: bad[i] = 1 if idx[i] is not a cell of bin i (a gradient this
    gather could not route; the forward never gives one), else 0.
    """
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if i < n_in:
            xx = i % W
            r = i // W
            yy = r % H
            r //= H
            z = r % D
            plane = r // D
            obase = plane * (OD * OH * OW)
            pos = i - plane * (D * H * W)
            acc = 0.0
            for od in range(_bin_start(z, OD, D), min(_bin_end(z, OD, D), OD)):
                for oh in range(_bin_start(yy, OH, H), min(_bin_end(yy, OH, H), OH)):
                    for ow in range(_bin_start(xx, OW, W), min(_bin_end(xx, OW, W), OW)):
                        o = obase + (od * OH + oh) * OW + ow
                        if idx[o] == pos:
                            acc += float64(g[o])
            gx[i] = acc
        if i < n_out:
            ow = i % OW
            r = i // OW
            oh = r % OH
            od = (r // OH) % OD
            p = idx[i]
            xx = p % W
            yy = (p // W) % H
            z = p // (W * H)
            inside = (
                _bin_start(od, D, OD) <= z < _bin_end(od, D, OD)
                and _bin_start(oh, H, OH) <= yy < _bin_end(oh, H, OH)
                and _bin_start(ow, W, OW) <= xx < _bin_end(ow, W, OW)
            )
            bad[i] = 0 if inside else 1


def _planes(shape: tuple[int, ...], dims: int) -> tuple[int, ...]:
    """(planes, *spatial as 3) of an (..., *spatial) shape."""
    return (math.prod(shape[:-dims]),) + _as3(shape[-dims:], 1)


def adaptive_avg_pool(x: Any, dims: int, out: tuple[int, ...]) -> Any:
    """Adaptive average pooling of x (..., *S) (compute dtype) to (..., *out)."""
    xp = get_array_module(x)
    y = xp.empty(tuple(x.shape[:-dims]) + tuple(out), dtype=x.dtype)
    n = y.size
    _adaptive_avg_forward(
        n, n, _flat(xp, x), y.reshape(-1), *_planes(x.shape, dims)[1:], *_as3(out, 1)
    )
    return y


def adaptive_avg_pool_backward(g: Any, input_shape: tuple[int, ...], dims: int) -> Any:
    """dx (input_shape) from dy (..., *out) (compute dtype)."""
    xp = get_array_module(g)
    if g.size == 0:  # no bins (output size 0): no gradient reaches x
        return xp.zeros(tuple(input_shape), dtype=g.dtype)
    gx = xp.empty(tuple(input_shape), dtype=g.dtype)
    n = gx.size
    _adaptive_avg_backward(
        n,
        n,
        _flat(xp, g),
        gx.reshape(-1),
        *_planes(tuple(input_shape), dims)[1:],
        *_as3(g.shape[-dims:], 1),
    )
    return gx


def adaptive_max_pool(x: Any, dims: int, out: tuple[int, ...]) -> tuple[Any, Any]:
    """Adaptive max pooling of x (..., *S) to (y, int64 flat indices), shapes (..., *out)."""
    xp = get_array_module(x)
    shape = tuple(x.shape[:-dims]) + tuple(out)
    y = xp.empty(shape, dtype=x.dtype)
    idx = xp.empty(shape, dtype=np.int64)
    n = y.size
    _adaptive_max_forward(
        n,
        n,
        _flat(xp, x),
        y.reshape(-1),
        idx.reshape(-1),
        *_planes(x.shape, dims)[1:],
        *_as3(out, 1),
    )
    return y, idx


def adaptive_max_pool_backward(
    g: Any, indices: Any, input_shape: tuple[int, ...], dims: int
) -> Any:
    """dx (input_shape, dtype of g) from dy and the forward's indices (..., *out).

    Raises ValueError for an index outside its own bin (the forward never makes one).
    """
    xp = get_array_module(g, indices)
    geo = _planes(tuple(input_shape), dims)[1:] + _as3(g.shape[-dims:], 1)
    if g.size == 0:
        return xp.zeros(tuple(input_shape), dtype=g.dtype)
    idx = _flat(xp, indices.astype(np.int64, copy=False))
    bad = xp.empty(idx.shape, dtype=np.uint8)
    gx = xp.empty(tuple(input_shape), dtype=g.dtype)
    n = max(gx.size, idx.size)
    _adaptive_max_backward(n, n, gx.size, idx.size, _flat(xp, g), idx, gx.reshape(-1), bad, *geo)
    if bool(bad.any()):
        raise ValueError(
            f"indices: expected each output's maximum to lie in its own pooling bin "
            f"(as adaptive_max_pool{dims}d(..., return_indices=True) returns), got some outside"
        )
    return gx
