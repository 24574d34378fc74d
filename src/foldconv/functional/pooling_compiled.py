"""Compiled max pooling (Numba), the optional fast path of functional/pooling.py.

The NumPy path makes one pass per kernel tap over a block of the output, each pass a few
NumPy calls (compare, multiply, maximum): ~16 calls for a 2x2 window and ~36 for a 3x3
one, each over a strided view. Compiled, each (sample, channel) plane is pooled in one
sweep while it sits in cache: each output scans its window in registers, taps in
row-major order (the NumPy path's order), and the taps that fall in the ``-inf`` padding
are skipped, since no rule below lets a ``-inf`` change the result. So there is no padded
copy of the input and no crop of the gradient.

Every result is the NumPy path's to the last bit, signed zeros and NaN included:

- the running maximum follows ``np.maximum(m, v)``: ``v`` replaces ``m`` unless
  ``m > v`` or ``m`` is NaN (so of equal values, e.g. ``0.0`` and ``-0.0``, the last
  one is kept, and the first NaN);
- the winning tap is the first that is strictly greater than the running maximum;
- with indices requested and a NaN anywhere in the output, the NumPy path starts again
  with PyTorch's rule (``v > m or isnan(v)`` takes ``v`` and its tap: the last NaN wins)
  for every window, and so do the kernels;
- the backward of disjoint windows writes ``0.0 + dy`` at each window's winning tap and
  ``0.0`` at its other taps, as PyTorch's scatter-add into zeros does (a NaN or inf ``dy``
  reaches the winner only; ``-0.0`` arrives as ``0.0``) and as the NumPy path's
  ``add(v, dy, where=argmax == t)`` into zeros; that of overlapping windows sums
  each input element's winning ``dy`` in float64, starting from ``0.0``, in output
  order (as ``np.bincount``), then rounds once.

Used when Numba is installed and the arrays are float32 or float64 NumPy arrays (a
float16 input is pooled in float32, as on the NumPy path); ``foldconv.set_compiled(False)``
turns it off. Any rank 1-3: a 1-d or 2-d pool runs as a 3-d one with leading unit
dimensions. Blocks of planes run on foldconv's thread pool (the kernels release the
GIL); each plane is written by one thread only, so results never depend on the thread
count.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from foldconv.functional import compiled
from foldconv.functional.threads import active_threads, parallel_map

# Rules for the running maximum (see the module docstring).
VALUE_ONLY = 0  # np.maximum's rule, no winning taps
NUMPY_RULE = 1  # np.maximum's rule for the value, the first strictly greater tap wins
NAN_RULE = 2  # PyTorch's "v > m or isnan(v)" for both (the NumPy path's NaN pass)

# The kernels' shared loop nests, set by _kernels() (module globals, see there).
_inner_columns: Any = None
_all_inside: Any = None
_max_planes: Any = None
_grad_planes: Any = None
_max_2x2: Any = None

# Below this many input bytes a pool runs on the calling thread (a round figure, not
# measured: a few blocks of a few microseconds each are not worth the pool's hand-over).
_PARALLEL_BYTES = 256 * 1024


def applies(*arrays: Any) -> bool:
    """These arrays can take the compiled kernels."""
    return compiled.takes(*arrays)


@functools.cache
def _kernels() -> dict[str, Any]:
    jit = compiled.njit(nogil=True, boundscheck=False)
    inline = compiled.njit(nogil=True, boundscheck=False, inline="always")

    @inline
    def inner_columns(w_n, ow_n, kw, sw, pw, dw):  # pragma: no cover - compiled
        # [first, end) of the outputs along the width whose windows lie inside the input.
        ow_a = min(ow_n, (pw + sw - 1) // sw)
        last = w_n - 1 + pw - (kw - 1) * dw  # the last window starts at or before it
        return ow_a, max(ow_a, 0 if last < 0 else min(ow_n, last // sw + 1))

    # Each output scans its window in registers, taps in row-major order, and is stored
    # once. The selects are written as expressions of bitwise-combined comparisons, not
    # as ifs or short-circuit ors: a branch on "v > m" is mispredicted on data this random
    # about half the time (LeNet's pool1 forward: 0.9 ms with the branch, 0.54 without,
    # measured). The loop nests are inlined into the kernels, so that calls with constant
    # window sizes and strides (2x2 and 3x3, stride 2: LeNet's, AlexNet's, VGG's pools)
    # get their tap loops unrolled, and each output row is cut into the windows that lie
    # inside the input (no bounds tests) and the others. (Helpers called per row instead,
    # inlined or not, cost ~50-100 ns a row: reference counts and calls.)
    @inline
    def max_planes(x, y, arg, k, geo, p0, p1, with_arg, nan_rule):  # pragma: no cover
        kd, kh, kw = k
        sd, sh, sw, pd, ph, pw, dd, dh, dw = geo
        d_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
        od_n, oh_n, ow_n = y.shape[1], y.shape[2], y.shape[3]
        ow_a, ow_b = _inner_columns(w_n, ow_n, kw, sw, pw, dw)
        nan = False
        if not nan_rule and _all_inside(x.shape, y.shape, k, geo):
            # The plain loop nest, without the cut into inner and border windows (its
            # bookkeeping costs 30-40% on rows as short as LeNet's, measured).
            for p in range(p0, p1):
                for od in range(od_n):
                    for oh in range(oh_n):
                        for ow in range(ow_n):
                            m = -np.inf
                            a = 0
                            for td in range(kd):
                                for th in range(kh):
                                    for tw in range(kw):
                                        v = x[
                                            p,
                                            od * sd + td * dd,
                                            oh * sh + th * dh,
                                            ow * sw + tw * dw,
                                        ]
                                        a = (td * kh + th) * kw + tw if v > m else a
                                        m = m if ((m > v) | (m != m)) else v
                            y[p, od, oh, ow] = m
                            if with_arg:
                                arg[p, od, oh, ow] = a
                        if with_arg:
                            for ow in range(ow_n):
                                nan |= y[p, od, oh, ow] != y[p, od, oh, ow]
            return nan
        for p in range(p0, p1):
            for od in range(od_n):
                d0 = od * sd - pd
                for oh in range(oh_n):
                    h0 = oh * sh - ph
                    rows_in = d0 >= 0 and d0 + (kd - 1) * dd < d_n
                    rows_in = rows_in and h0 >= 0 and h0 + (kh - 1) * dh < h_n
                    for seg in range(3):
                        lo = 0 if seg == 0 else (ow_a if seg == 1 else ow_b)
                        hi = ow_a if seg == 0 else (ow_b if seg == 1 else ow_n)
                        checked = seg != 1 or not rows_in
                        for ow in range(lo, hi):
                            w0 = ow * sw - pw
                            m = -np.inf
                            a = 0
                            for td in range(kd):
                                i_d = d0 + td * dd
                                if checked and (i_d < 0 or i_d >= d_n):
                                    continue
                                for th in range(kh):
                                    i_h = h0 + th * dh
                                    if checked and (i_h < 0 or i_h >= h_n):
                                        continue
                                    t0 = (td * kh + th) * kw
                                    for tw in range(kw):
                                        i_w = w0 + tw * dw
                                        if checked and (i_w < 0 or i_w >= w_n):
                                            continue  # -inf padding: no change by either rule
                                        v = x[p, i_d, i_h, i_w]
                                        if nan_rule:  # PyTorch's: v > m or isnan(v) takes v
                                            take = (v > m) | (v != v)
                                            a = (t0 + tw) if take else a
                                            m = v if take else m
                                        else:  # np.maximum(m, v); first strictly greater tap
                                            a = (t0 + tw) if v > m else a
                                            m = m if ((m > v) | (m != m)) else v
                            y[p, od, oh, ow] = m
                            if with_arg:
                                arg[p, od, oh, ow] = a
                    if with_arg and not nan_rule:  # a NaN sends the NumPy path to its NaN pass
                        for ow in range(ow_n):
                            nan |= y[p, od, oh, ow] != y[p, od, oh, ow]
        return nan

    @inline
    def grad_planes(g, arg, dx, k, geo, one, zero, covered, p0, p1):  # pragma: no cover
        kd, kh, kw = k
        sd, sh, sw, pd, ph, pw, dd, dh, dw = geo
        d_n, h_n, w_n = dx.shape[1], dx.shape[2], dx.shape[3]
        od_n, oh_n, ow_n = g.shape[1], g.shape[2], g.shape[3]
        ow_a, ow_b = _inner_columns(w_n, ow_n, kw, sw, pw, dw)
        if _all_inside(dx.shape, g.shape, k, geo):  # the plain loop nest (as max_planes)
            for p in range(p0, p1):
                if not covered:
                    dx[p] = 0.0
                for od in range(od_n):
                    for oh in range(oh_n):
                        for ow in range(ow_n):
                            a = arg[p, od, oh, ow]
                            gv = g[p, od, oh, ow]
                            for td in range(kd):
                                for th in range(kh):
                                    for tw in range(kw):
                                        hit = a == (td * kh + th) * kw + tw
                                        i_d, i_h = od * sd + td * dd, oh * sh + th * dh
                                        dx[p, i_d, i_h, ow * sw + tw * dw] = (
                                            (zero + gv) if hit else zero
                                        )
            return
        for p in range(p0, p1):
            if not covered:  # (when the windows tile the input, every element is written)
                dx[p] = 0.0
            for od in range(od_n):
                d0 = od * sd - pd
                for oh in range(oh_n):
                    h0 = oh * sh - ph
                    rows_in = d0 >= 0 and d0 + (kd - 1) * dd < d_n
                    rows_in = rows_in and h0 >= 0 and h0 + (kh - 1) * dh < h_n
                    for seg in range(3):
                        lo = 0 if seg == 0 else (ow_a if seg == 1 else ow_b)
                        hi = ow_a if seg == 0 else (ow_b if seg == 1 else ow_n)
                        checked = seg != 1 or not rows_in
                        for ow in range(lo, hi):
                            w0 = ow * sw - pw
                            a = arg[p, od, oh, ow]
                            gv = g[p, od, oh, ow]
                            for td in range(kd):
                                i_d = d0 + td * dd
                                if checked and (i_d < 0 or i_d >= d_n):
                                    continue
                                for th in range(kh):
                                    i_h = h0 + th * dh
                                    if checked and (i_h < 0 or i_h >= h_n):
                                        continue
                                    t0 = (td * kh + th) * kw
                                    for tw in range(kw):
                                        i_w = w0 + tw * dw
                                        if checked and (i_w < 0 or i_w >= w_n):
                                            continue
                                        hit = a == t0 + tw
                                        dx[p, i_d, i_h, i_w] = (zero + gv) if hit else zero

    @inline
    def all_inside(in_shape, out_shape, k, geo):  # pragma: no cover - compiled
        # Every window of the plane lies inside the input (no padding reached, no
        # ceil_mode window running past it): LeNet's and AlexNet's pools.
        kd, kh, kw = k
        sd, sh, sw, pd, ph, pw, dd, dh, dw = geo
        last_d = (out_shape[1] - 1) * sd - pd + (kd - 1) * dd
        last_h = (out_shape[2] - 1) * sh - ph + (kh - 1) * dh
        last_w = (out_shape[3] - 1) * sw - pw + (kw - 1) * dw
        return (
            pd == 0
            and ph == 0
            and pw == 0
            and last_d < in_shape[1]
            and last_h < in_shape[2]
            and last_w < in_shape[3]
        )

    # 2x2 windows at stride 2 inside the input (LeNet's and VGG's pools), on 1-d row
    # views indexed by 2·ow: the same taps in the same order and the same selects as
    # max_planes (so bitwise its results), with less index arithmetic per window: LeNet's
    # pool1 forward (batch 64, one thread, CPU time) 150 -> 122 us. (The same for the
    # backward's four strided stores per window was slower, 227 -> 391-411 us: not kept.)
    @inline
    def max_2x2(x, y, arg, p0, p1, with_arg):  # pragma: no cover - compiled
        oh_n, ow_n = y.shape[2], y.shape[3]
        nan = False
        for p in range(p0, p1):
            for od in range(y.shape[1]):
                for oh in range(oh_n):
                    r0, r1 = x[p, od, 2 * oh], x[p, od, 2 * oh + 1]
                    yr, ar = y[p, od, oh], arg[p, od, oh]
                    for ow in range(ow_n):
                        v0, v1 = r0[2 * ow], r0[2 * ow + 1]
                        v2, v3 = r1[2 * ow], r1[2 * ow + 1]
                        m = -np.inf
                        a = 0
                        a = 0 if v0 > m else a
                        m = m if ((m > v0) | (m != m)) else v0
                        a = 1 if v1 > m else a
                        m = m if ((m > v1) | (m != m)) else v1
                        a = 2 if v2 > m else a
                        m = m if ((m > v2) | (m != m)) else v2
                        a = 3 if v3 > m else a
                        m = m if ((m > v3) | (m != m)) else v3
                        yr[ow] = m
                        if with_arg:
                            ar[ow] = a
                    if with_arg:
                        for ow in range(ow_n):
                            nan |= yr[ow] != yr[ow]
        return nan

    # The kernels find the helpers as module globals, not as closure variables: Numba's
    # disk cache keys a closure by its variables, and a compiled function's key differs
    # in every process, so each process would compile again (~3 s per kernel).
    globals().update(
        _inner_columns=inner_columns,
        _all_inside=all_inside,
        _max_planes=max_planes,
        _grad_planes=grad_planes,
        _max_2x2=max_2x2,
    )

    @jit
    def forward(x, y, arg, geo, rule, p0, p1):  # pragma: no cover - compiled
        # y[p, o] = max_t x_pad[p, o·s + t·d] (taps t in row-major order), arg[p, o] = the
        # winning t; geo = (k, s, pad, d), each 3 entries (depth, height, width).
        kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw = geo
        k = (kd, kh, kw)
        g9 = (sd, sh, sw, pd, ph, pw, dd, dh, dw)
        g2 = (sd, sh, 2, pd, ph, pw, dd, dh, 1)
        s2 = sw == 2 and dw == 1
        if rule == NAN_RULE:  # rare (NaN in the input): no specialisation
            return _max_planes(x, y, arg, k, g9, p0, p1, True, True)
        with_arg = rule != VALUE_ONLY
        if k == (1, 2, 2) and s2 and sh == 2 and dh == 1 and _all_inside(x.shape, y.shape, k, g9):
            return _max_2x2(x, y, arg, p0, p1, with_arg)
        if k == (1, 2, 2) and s2:
            return _max_planes(x, y, arg, (1, 2, 2), g2, p0, p1, with_arg, False)
        if k == (1, 3, 3) and s2:
            return _max_planes(x, y, arg, (1, 3, 3), g2, p0, p1, with_arg, False)
        if k == (1, 2, 2):
            return _max_planes(x, y, arg, (1, 2, 2), g9, p0, p1, with_arg, False)
        if k == (1, 3, 3):
            return _max_planes(x, y, arg, (1, 3, 3), g9, p0, p1, with_arg, False)
        return _max_planes(x, y, arg, k, g9, p0, p1, with_arg, False)

    @jit
    def backward_disjoint(g, arg, dx, geo, one, zero, covered, p0, p1):  # pragma: no cover
        # dx[p, o·s + t·d - pad] = dy[p, o] · [arg[p, o] == t]: no two (o, t) pairs reach
        # the same element, so each is written once; elements no tap reaches stay 0.
        kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw = geo
        k = (kd, kh, kw)
        g9 = (sd, sh, sw, pd, ph, pw, dd, dh, dw)
        g2 = (sd, sh, 2, pd, ph, pw, dd, dh, 1)
        if k == (1, 2, 2) and sw == 2 and dw == 1:
            _grad_planes(g, arg, dx, (1, 2, 2), g2, one, zero, covered, p0, p1)
        elif k == (1, 2, 2):
            _grad_planes(g, arg, dx, (1, 2, 2), g9, one, zero, covered, p0, p1)
        else:
            _grad_planes(g, arg, dx, k, g9, one, zero, covered, p0, p1)

    @jit
    def backward_overlapping(g, arg, dx, geo, offsets, padded, p0, p1):  # pragma: no cover
        # dx[p, i] = Σ_{o : o·s + arg[p, o]·d = i + pad} dy[p, o], summed in float64 in
        # output order from 0.0 (np.bincount's order) on a padded scratch plane, whose
        # padding (winners there: windows of -inf only) is then dropped.
        # offsets[t]: tap t's offset from its window's first element in the padded plane.
        sd, sh, sw, pd, ph = geo[3], geo[4], geo[5], geo[6], geo[7]
        pw = geo[8]
        pad_d, pad_h, pad_w = padded
        d_n, h_n, w_n = dx.shape[1], dx.shape[2], dx.shape[3]
        taps = offsets.shape[0]
        acc = np.empty(pad_d * pad_h * pad_w, dtype=np.float64)
        for p in range(p0, p1):
            acc[:] = 0.0
            for od in range(g.shape[1]):
                for oh in range(g.shape[2]):
                    base = (od * sd * pad_h + oh * sh) * pad_w
                    for ow in range(g.shape[3]):
                        t = arg[p, od, oh, ow]
                        if (t >= taps) | (t < 0):  # the caller raises for these: no
                            continue  # write outside the plane meanwhile
                        pos = base + ow * sw + offsets[t]
                        acc[pos] += np.float64(g[p, od, oh, ow])
            plane = dx[p]
            for i_d in range(d_n):
                for i_h in range(h_n):
                    row = plane[i_d, i_h]
                    start = ((i_d + pd) * pad_h + i_h + ph) * pad_w + pw
                    for i_w in range(w_n):
                        row[i_w] = acc[start + i_w]

    return {
        "forward": forward,
        "backward_disjoint": backward_disjoint,
        "backward_overlapping": backward_overlapping,
    }


@functools.lru_cache(maxsize=256)
def _geo(kernel, stride, padding, dilation) -> np.ndarray:
    """(k, s, pad, d) of a 1-3 d pool as a 3-d one: 12 int64 entries."""
    lead = 3 - len(kernel)
    parts = []
    for values, unit in ((kernel, 1), (stride, 1), (padding, 0), (dilation, 1)):
        parts.extend((unit,) * lead + tuple(values))
    return np.array(parts, dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _padded_offsets(in_shape, out_shape, kernel, stride, padding, dilation):
    """(offset of each tap from its window's first element, the padded plane's shape),
    in a plane padded as the NumPy path pads it (functional/pooling.py, _padded_extent),
    as a 3-d one."""
    lead = (1,) * (3 - len(kernel))
    padded = lead + tuple(
        max(n + p, (o - 1) * s + d * (k - 1) + 1)
        for n, o, k, s, p, d in zip(
            in_shape, out_shape, kernel, stride, padding, dilation, strict=True
        )
    )
    dil = lead + tuple(dilation)
    taps = np.array(list(np.ndindex(*kernel)), dtype=np.int64).reshape(math.prod(kernel), -1)
    taps = np.concatenate([np.zeros((taps.shape[0], len(lead)), np.int64), taps], axis=1)
    step = (padded[1] * padded[2], padded[2], 1)
    offsets = sum(taps[:, i] * dil[i] * step[i] for i in range(3))
    return np.ascontiguousarray(offsets, dtype=np.int64), padded


@functools.lru_cache(maxsize=256)
def _covered(in_shape, out_shape, kernel, stride, padding, dilation) -> bool:
    """Every input element is read by some window's tap (LeNet's 2x2 windows at stride 2
    on an even size: yes; a stride above the kernel or a trailing row: no)."""
    for n, o, k, s, p, d in zip(
        in_shape, out_shape, kernel, stride, padding, dilation, strict=True
    ):
        reached = {i * s - p + t * d for i in range(o) for t in range(k)}
        if not reached.issuperset(range(n)):
            return False
    return True


def _as_3d(a: Any, planes: int, spatial: tuple[int, ...]) -> Any:
    """A C-contiguous (planes, D, H, W) view or copy of an (N, C, *spatial) array."""
    shape = (planes,) + (1,) * (3 - len(spatial)) + tuple(spatial)
    return np.ascontiguousarray(a).reshape(shape)


def _blocks(planes: int, nbytes: int) -> list[tuple[int, int]]:
    """Ranges of planes: one at one thread (each kernel call costs a few us to dispatch),
    else two per thread in use, for the pool's workers to balance."""
    threads = active_threads()
    if nbytes < _PARALLEL_BYTES or planes < 2 or threads == 1:
        return [(0, planes)]
    step = max(1, -(-planes // (2 * threads)))
    return [(p0, min(planes, p0 + step)) for p0 in range(0, planes, step)]


def max_pool(
    x: Any,
    out_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    argmax_dtype: np.dtype | None,
) -> tuple[Any, Any]:
    """Max pooling of every (n, c) plane, and the winning taps.

    Parameters
    ----------
    x : ndarray, shape (N, C, *S), float32 or float64 (any strides)
    out_shape : the output's spatial shape O
    kernel, stride, padding, dilation : tuples of len(S) ints (validated by the caller)
    argmax_dtype : the winning taps' dtype, or None for the values only

    Returns
    -------
    y : ndarray, shape (N, C, *O), x's dtype
    argmax : ndarray, shape (N, C, *O), or None
        The row-major index of each window's winning tap.
    """
    run = _kernels()["forward"]
    n, c = x.shape[:2]
    planes = n * c
    x4 = _as_3d(x, planes, x.shape[2:])
    y = np.empty((planes,) + (1,) * (3 - len(out_shape)) + out_shape, dtype=x.dtype)
    geo = _geo(kernel, stride, padding, dilation)
    blocks = _blocks(planes, x4.nbytes)
    if argmax_dtype is None:
        dummy = np.empty((1, 1, 1, 1), dtype=np.uint8)  # never read or written
        parallel_map(lambda b: run(x4, y, dummy, geo, VALUE_ONLY, *b), blocks)
        return y.reshape((n, c) + out_shape), None
    argmax = np.empty(y.shape, dtype=argmax_dtype)
    nan = parallel_map(lambda b: run(x4, y, argmax, geo, NUMPY_RULE, *b), blocks)
    if any(nan):  # as the NumPy path: every window again, by PyTorch's NaN rule
        parallel_map(lambda b: run(x4, y, argmax, geo, NAN_RULE, *b), blocks)
    return y.reshape((n, c) + out_shape), argmax.reshape((n, c) + out_shape)


def max_pool_backward(
    g: Any,
    argmax: Any,
    in_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    disjoint: bool,
) -> Any:
    """dx of max pooling from dy and the winning taps (see the module docstring).

    Parameters
    ----------
    g : ndarray, shape (N, C, *O), float32 or float64
    argmax : ndarray of ints, shape (N, C, *O)
        Winning taps, each in [0, prod(kernel)) (the caller checks: others are ignored).
    in_shape : the input's spatial shape S
    disjoint : no input element is read by two (window, tap) pairs

    Returns
    -------
    ndarray, shape (N, C, *S), g's dtype
    """
    n, c = g.shape[:2]
    planes = n * c
    out_shape = tuple(g.shape[2:])
    g4 = _as_3d(g, planes, out_shape)
    a4 = _as_3d(argmax, planes, out_shape)
    dx = np.empty((planes,) + (1,) * (3 - len(in_shape)) + tuple(in_shape), dtype=g.dtype)
    geo = _geo(kernel, stride, padding, dilation)
    blocks = _blocks(planes, dx.nbytes)
    if disjoint:
        run = _kernels()["backward_disjoint"]
        one, zero = g.dtype.type(1), g.dtype.type(0)
        covered = _covered(in_shape, out_shape, kernel, stride, padding, dilation)
        parallel_map(lambda b: run(g4, a4, dx, geo, one, zero, covered, *b), blocks)
    else:
        run = _kernels()["backward_overlapping"]
        offsets, padded = _padded_offsets(in_shape, out_shape, kernel, stride, padding, dilation)
        parallel_map(lambda b: run(g4, a4, dx, geo, offsets, padded, *b), blocks)
    return dx.reshape((n, c) + tuple(in_shape))
