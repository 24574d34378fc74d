"""The seed's direct sums, compiled (Numba), for stride-1 layers with few channels.

A layer like LeNet-5's (1 -> 6 and 6 -> 16 channels, 5x5) is too small for im2col: its
GEMMs are skinny (6 x 25 x 100352: 16-28 GFLOP/s with OpenBLAS) and building the columns
costs as much as multiplying them (BENCHMARKS.md, "LeNet-5 against its floor"). Here each
sample is computed on the flat range of functional/flat.py, straight from its padded
input, with no columns at all. Output position l of the flat range reads X_flat[l + off(t)]
for tap t, so for one sample

    eq. F:  Y_ext[c_o, l] = Σ_{c_i, t} W[c_o, c_i, t] · X_flat[c_i, l + off(t)]

is, per (c_o, c_i, t), one contiguous multiply-add over l: a loop the compiler vectorises.
Up to eight output channels share each input load (see below).

The sum runs over (c_i, t) in order, adding one product at a time with no fused
multiply-add, so every element has one fixed order of operations: results do not depend
on the thread count or on how samples are split.

    eq. BX: dX_flat[c_i, p] = Σ_{c_o, t} W[c_o, c_i, t] · δ_ext[c_o, p - off(t)]

is the same loop over a copy of δ_ext shifted by the largest offset (zero elsewhere), with
the kernel's taps in reverse: the full convolution of δ with the flipped kernel (eq. BX').

    eq. BW: dW[c_o, c_i, t] = Σ_n Σ_l δ_ext[n, c_o, l] · X_flat[n, c_i, l + off(t)]

is a dot product per (n, c_o, c_i, t), eight at a time (two output channels by four
taps). Its float32 sum over l is vectorised by letting the compiler reassociate it (the
only fast-math flag used, and only here): a fixed order for a given build and CPU, as
OpenBLAS's is. Each sample's dot products are added in float64, samples in order within
fixed blocks of ``_BLOCK`` samples, the blocks in order, and rounded once.

δ_ext is δ on the flat range, zero at the positions that are not outputs (the columns
past out_d in each row): they add nothing to dW or dX, unless what they meet is inf or
NaN (0 · inf is NaN); such passes are run again by im2col over the outputs alone.

Rows are rounded up to whole vectors (``_LANES``) in per-thread scratch, so that no inner
loop ends in a scalar remainder; the extra positions read zeros and are never copied out.

The correlation (eqs. F and BX') keeps its running sums in vector registers
(functional/simd.py): up to eight output channels at a time, one vector of positions,
the sums over all (c_i, t) held in registers and stored once. Each product is rounded
before its sum, in (c_i, t) order, as in the scalar loop: the same bits as before, at
2.4x the speed of the four-channel loop with its sums in memory (7.3 against 17.9 us
for one sample of LeNet-5's conv2, one thread).

Zero padding is placed by the kernels themselves (``padded=False``, what ``conv`` and
``conv_backward`` use): each sample's rows are copied into the scratch plane, whose
padding is zero from the start and never written, and dX is cropped as it leaves the
scratch; the forward also adds the bias as it copies the outputs out, after the sum as
``y += b`` would. So no padded copy of the input is made, none of dX is cropped after,
and the output is not read again for the bias: LeNet-5's conv1 forward (batch 64, two
threads) 0.60 -> 0.34 ms. Other padding modes get the caller's padded copy.

Samples are split in blocks over foldconv's thread pool; the kernels release the GIL.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np

from foldconv._config import get_workspace_limit
from foldconv.functional import compiled, im2col, simd
from foldconv.functional._args import ConvGeometry
from foldconv.functional.padding import apply_pad, pad_adjoint
from foldconv.functional.threads import parallel_map

# Samples per block: the unit of work of one thread, and of the weight gradient's
# fixed-order float64 sums.
_BLOCK = 8
# Flat rows are padded to a multiple of this many elements: whole vectors of the
# correlation's kernels (functional/simd.py: 16 float32 with AVX-512; LeNet-5's conv2
# rows of 136 then take 144, not 160), and for the weight gradient's dot products, two
# vectors per loop turn, 32.
_LANES = 16
_DOT_LANES = 32
# The kernels' helpers, set by _kernels() (module globals, see there).
_vec8: Any = None
_vec4: Any = None
# functional/simd.py's intrinsics, set by _kernels() too (importing them imports Numba).
vzero: Any = None
vlanes: Any = None
vload: Any = None
vstore: Any = None
vmuladd: Any = None
_correlate: Any = None
_place: Any = None

# Weights per group (C_out/G · C_in/G · prod(K)) up to which this algorithm is used by
# 'auto' (see dispatch.cost_model and BENCHMARKS.md for the measurements).
MAX_WEIGHTS_PER_GROUP = 4096


def pads_itself(g: ConvGeometry) -> bool:
    """The kernels can place this layer's padding themselves (``padded=False``): zero
    padding, none of it negative."""
    return g.padding_mode == "zeros" and _plan(g).in_rows is not None


def supports(g: ConvGeometry, itemsize: int = 4) -> bool:
    """Stride 1 (any dilation, groups, dimensionality, padding): the flat range applies;
    and one thread's scratch fits the workspace limit."""
    return all(s == 1 for s in g.stride) and scratch_bytes(g, itemsize) <= get_workspace_limit()


def scratch_bytes(g: ConvGeometry, itemsize: int) -> int:
    """One thread's scratch: a sample's padded input and its output (or δ) rows, rounded."""
    plan = _plan(g)
    rows = g.in_channels * plan.in_row + g.out_channels * max(plan.row, plan.dot_row)
    grad_rows = g.out_channels * plan.shifted_row + g.in_channels * plan.grad_row
    return max(rows, grad_rows) * itemsize


def applies(g: ConvGeometry, *arrays: Any) -> bool:
    """The compiled kernels can run this layer on these arrays (float32/float64 NumPy
    arrays, Numba installed and the compiled switch on)."""
    return supports(g) and compiled.takes(*arrays)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class _Plan:
    """Offsets of the taps and of the outputs on the flat padded grid."""

    def __init__(self, g: ConvGeometry) -> None:
        padded = g.padded_shape
        strides = [math.prod(padded[d + 1 :]) for d in range(g.ndim)]
        self.size = math.prod(padded)  # P: one padded plane
        self.length = sum((o - 1) * s for o, s in zip(g.out_shape, strides, strict=True)) + 1
        self.offsets = np.array(
            [
                sum(t * dl * s for t, dl, s in zip(tap, g.dilation, strides, strict=True))
                for tap in itertools.product(*(range(k) for k in g.kernel))
            ],
            dtype=np.int64,
        )
        self.outputs = np.zeros(math.prod(g.out_shape), dtype=np.int64)
        flat = np.zeros(g.out_shape, dtype=np.int64)
        for d, (o, s) in enumerate(zip(g.out_shape, strides, strict=True)):
            shape = [1] * g.ndim
            shape[d] = o
            flat = flat + (np.arange(o, dtype=np.int64) * s).reshape(shape)
        self.outputs[:] = flat.reshape(-1)
        reach = int(self.offsets[-1]) if self.offsets.size else 0
        self.reach = reach  # the largest offset
        self.row = _round_up(self.length, _LANES)  # output rows, rounded
        # The weight gradient's dot products run two vectors per turn: rows of 32.
        self.dot_row = _round_up(self.length, _DOT_LANES)
        # input rows with room to read
        self.in_row = _round_up(reach + max(self.row, self.dot_row), _LANES)
        self.grad_row = _round_up(self.size, _LANES)  # dX rows, rounded
        self.shifted_row = _round_up(reach + self.grad_row, _LANES)  # δ shifted by reach
        # The padded plane as one row of ``size`` (an input padded by the caller), and
        # where the rows of an unpadded input sit on it (zero padding placed by the
        # kernels: no padded copy of the input; ``in_rows`` None where a pad is negative).
        self.padded_rows = np.zeros(1, dtype=np.int64)
        self.in_row_len = g.in_shape[-1] if g.ndim else 1
        self.in_rows = None
        if all(lo >= 0 and hi >= 0 for lo, hi in g.pads):
            start = np.full((1,) * (g.ndim - 1), g.pads[-1][0], dtype=np.int64)
            for d in range(g.ndim - 1):
                shape = [1] * (g.ndim - 1)
                shape[d] = g.in_shape[d]
                lo = g.pads[d][0]
                start = start + (
                    (np.arange(g.in_shape[d], dtype=np.int64) + lo) * strides[d]
                ).reshape(shape)
            self.in_rows = np.ascontiguousarray(start.reshape(-1))


@functools.lru_cache(maxsize=256)
def _plan(g: ConvGeometry) -> _Plan:
    return _Plan(g)


@functools.cache
def _kernels() -> dict[str, Any]:
    jit = compiled.njit(nogil=True, boundscheck=False)
    vector = simd.intrinsics()
    for name in ("vzero", "vlanes", "vload", "vstore", "vmuladd"):
        globals()[name] = getattr(vector, name)
    # Reassociation only: the weight gradient's dot products vectorise; no FMA
    # contraction, no assumption about NaN or infinity.
    jit_dot = compiled.njit(nogil=True, boundscheck=False, fastmath={"reassoc"})

    # Every index in an inner loop is a loop counter over a view that starts at its
    # offset: an index Numba cannot prove non-negative gets a wrap-around test that stops
    # the loop from vectorising (a saxpy of 892 elements: 4.7 against 36 GFLOP/s).

    @jit
    def vec8(src, w, offs, cig, row, out, c_o, count, base):  # pragma: no cover - compiled
        # correlate's sums for ``count`` (5..8) output channels of one group, one vector
        # of positions at a time, the eight running sums in vector registers across all
        # (c, t): each input vector loaded feeds 8 products. Channels past ``count``
        # repeat channel c_o (computed, never stored). Sums in (c, t) order, a product
        # then a sum each: the bits of the scalar loop.
        taps = offs.size
        k1 = c_o + (1 if count > 1 else 0)
        k2 = c_o + (2 if count > 2 else 0)
        k3 = c_o + (3 if count > 3 else 0)
        k4 = c_o + (4 if count > 4 else 0)
        k5 = c_o + (5 if count > 5 else 0)
        k6 = c_o + (6 if count > 6 else 0)
        k7 = c_o + (7 if count > 7 else 0)
        step = vlanes(out[c_o])
        for i0 in range(0, row, step):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzero(out[c_o])
            for c in range(cig):
                xr = src[base + c]
                w0, w1, w2, w3 = w[c_o, c], w[k1, c], w[k2, c], w[k3, c]
                w4, w5, w6, w7 = w[k4, c], w[k5, c], w[k6, c], w[k7, c]
                for t in range(taps):
                    x = vload(xr, offs[t] + i0)
                    a0 = vmuladd(a0, w0[t], x)
                    a1 = vmuladd(a1, w1[t], x)
                    a2 = vmuladd(a2, w2[t], x)
                    a3 = vmuladd(a3, w3[t], x)
                    a4 = vmuladd(a4, w4[t], x)
                    a5 = vmuladd(a5, w5[t], x)
                    a6 = vmuladd(a6, w6[t], x)
                    a7 = vmuladd(a7, w7[t], x)
            vstore(out[c_o], i0, a0)
            vstore(out[c_o + 1], i0, a1)
            vstore(out[c_o + 2], i0, a2)
            vstore(out[c_o + 3], i0, a3)
            vstore(out[c_o + 4], i0, a4)
            if count > 5:
                vstore(out[c_o + 5], i0, a5)
            if count > 6:
                vstore(out[c_o + 6], i0, a6)
            if count > 7:
                vstore(out[c_o + 7], i0, a7)

    globals()["_vec8"] = vec8

    @jit
    def vec4(src, w, offs, cig, row, out, c_o, count, base):  # pragma: no cover - compiled
        # vec8 for 3 or 4 output channels.
        taps = offs.size
        k3 = c_o + (3 if count > 3 else 0)
        step = vlanes(out[c_o])
        for i0 in range(0, row, step):
            a0 = a1 = a2 = a3 = vzero(out[c_o])
            for c in range(cig):
                xr = src[base + c]
                w0, w1, w2, w3 = w[c_o, c], w[c_o + 1, c], w[c_o + 2, c], w[k3, c]
                for t in range(taps):
                    x = vload(xr, offs[t] + i0)
                    a0 = vmuladd(a0, w0[t], x)
                    a1 = vmuladd(a1, w1[t], x)
                    a2 = vmuladd(a2, w2[t], x)
                    a3 = vmuladd(a3, w3[t], x)
            vstore(out[c_o], i0, a0)
            vstore(out[c_o + 1], i0, a1)
            vstore(out[c_o + 2], i0, a2)
            if count > 3:
                vstore(out[c_o + 3], i0, a3)

    globals()["_vec4"] = vec4

    @jit
    def correlate(src, w, offs, cog, cig, row, out):  # pragma: no cover - compiled
        # out[c_o, :row] = Σ_{c, t} w[c_o, c, t] · src[g(c_o)·cig + c, offs[t] : + row]
        n_out, taps = w.shape[0], offs.size
        c_o = 0
        while c_o < n_out:
            left = (c_o // cog + 1) * cog - c_o  # output channels left in this group
            if left >= 3:
                count = min(left, 8)
                if count >= 5:
                    _vec8(src, w, offs, cig, row, out, c_o, count, (c_o // cog) * cig)
                else:
                    _vec4(src, w, offs, cig, row, out, c_o, count, (c_o // cog) * cig)
                c_o += count
                continue
            pair = c_o + 1 < n_out and (c_o + 1) // cog == c_o // cog
            o = out[c_o, :row]
            p = out[c_o + 1, :row] if pair else out[c_o, :row]
            for i in range(row):
                o[i] = 0
            if pair:
                for i in range(row):
                    p[i] = 0
            base = (c_o // cog) * cig
            for c in range(cig):
                xr = src[base + c]
                t = 0
                while t + 4 <= taps:
                    x0 = xr[offs[t] :]
                    x1 = xr[offs[t + 1] :]
                    x2 = xr[offs[t + 2] :]
                    x3 = xr[offs[t + 3] :]
                    w0, w1, w2, w3 = (
                        w[c_o, c, t],
                        w[c_o, c, t + 1],
                        w[c_o, c, t + 2],
                        w[c_o, c, t + 3],
                    )
                    if pair:
                        v0 = w[c_o + 1, c, t]
                        v1 = w[c_o + 1, c, t + 1]
                        v2 = w[c_o + 1, c, t + 2]
                        v3 = w[c_o + 1, c, t + 3]
                        for i in range(row):
                            a, b, e, f = x0[i], x1[i], x2[i], x3[i]
                            o[i] = o[i] + w0 * a + w1 * b + w2 * e + w3 * f
                            p[i] = p[i] + v0 * a + v1 * b + v2 * e + v3 * f
                    else:
                        for i in range(row):
                            o[i] = o[i] + w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i]
                    t += 4
                while t < taps:
                    xs = xr[offs[t] :]
                    w0 = w[c_o, c, t]
                    if pair:
                        v0 = w[c_o + 1, c, t]
                        for i in range(row):
                            o[i] = o[i] + w0 * xs[i]
                            p[i] = p[i] + v0 * xs[i]
                    else:
                        for i in range(row):
                            o[i] = o[i] + w0 * xs[i]
                    t += 1
            c_o += 2 if pair else 1

    globals()["_correlate"] = correlate

    @jit
    def place(x, rows, row_len, src):  # pragma: no cover - compiled
        # Row r of each channel of x (one sample) to src[c, rows[r] : + row_len]; the
        # positions no row reaches (the zero padding, the tail) are never written.
        for c in range(x.shape[0]):
            s, d = x[c], src[c]
            for r in range(rows.size):
                dr, sr = d[rows[r] :], s[r * row_len :]
                for i in range(row_len):
                    dr[i] = sr[i]

    globals()["_place"] = place

    @jit
    def forward(
        x, rows, row_len, w, offs, outputs, cog, cig, row, in_row, bias, y, n0, n1
    ):  # pragma: no cover
        # y[n, c_o, k] = Y_ext[c_o, outputs[k]] (+ b[c_o]) (eq. F), samples n0 <= n < n1
        src = np.zeros((x.shape[1], in_row), dtype=x.dtype)  # padding and tail stay zero
        ext = np.empty((w.shape[0], row), dtype=x.dtype)
        for n in range(n0, n1):
            _place(x[n], rows, row_len, src)
            _correlate(src, w, offs, cog, cig, row, ext)
            for c_o in range(w.shape[0]):
                e, yo = ext[c_o], y[n, c_o]
                if bias.size:  # the sum, then the bias: the order of y += b after it
                    b = bias[c_o]
                    for k in range(outputs.size):
                        yo[k] = e[outputs[k]] + b
                else:
                    for k in range(outputs.size):
                        yo[k] = e[outputs[k]]

    @jit
    def input_grad(
        dy, wt, offs_rev, outputs, reach, cog_t, cig_t, row, shifted_row, rows, row_len, dx, n0, n1
    ):  # pragma: no cover
        # dx[n, c_i, :] = Σ W[c_o, c_i, t] · δ_ext[c_o, p - off(t)] (eq. BX'), with δ_ext
        # shifted by ``reach`` so that every read index is p + (reach - off(t)) >= 0;
        # dx receives the rows (rows, row_len) of the padded plane (the whole plane, or
        # the unpadded input's part of it).
        n_out = dy.shape[1]
        shifted = np.zeros((n_out, shifted_row), dtype=dy.dtype)
        acc = np.empty((wt.shape[0], row), dtype=dy.dtype)
        for n in range(n0, n1):
            for c_o in range(n_out):
                d, s = dy[n, c_o], shifted[c_o, reach:]
                for k in range(outputs.size):
                    s[outputs[k]] = d[k]
            _correlate(shifted, wt, offs_rev, cog_t, cig_t, row, acc)
            for c_i in range(wt.shape[0]):
                a, o = acc[c_i], dx[n, c_i]
                for r in range(rows.size):
                    ar, orow = a[rows[r] :], o[r * row_len :]
                    for i in range(row_len):
                        orow[i] = ar[i]

    @jit_dot
    def weight_grad(
        dy, x, rows, row_len, offs, outputs, cog, cig, row, in_row, zero, dw, n0, n1
    ):  # pragma: no cover
        # dw[c_o, c, t] (float64) += Σ_{n0 <= n < n1} Σ_l δ_ext[n, c_o, l] · x[n, c, l + off(t)]
        n_in = x.shape[1]
        n_out, taps = dw.shape[0], offs.size
        src = np.zeros((n_in, in_row), dtype=x.dtype)  # padding and tail stay zero
        ext = np.zeros((n_out, row), dtype=x.dtype)  # zero off the outputs, always
        for n in range(n0, n1):
            _place(x[n], rows, row_len, src)
            for c_o in range(n_out):
                d, e = dy[n, c_o], ext[c_o]
                for k in range(outputs.size):
                    e[outputs[k]] = d[k]
            c_o = 0
            while c_o < n_out:
                pair = c_o + 1 < n_out and (c_o + 1) // cog == c_o // cog
                dr = ext[c_o, :row]
                er = ext[c_o + 1, :row] if pair else ext[c_o, :row]
                base = (c_o // cog) * cig
                for c in range(cig):
                    xr = src[base + c]
                    t = 0
                    while t + 4 <= taps:
                        x0 = xr[offs[t] :]
                        x1 = xr[offs[t + 1] :]
                        x2 = xr[offs[t + 2] :]
                        x3 = xr[offs[t + 3] :]
                        s0 = s1 = s2 = s3 = zero
                        r0 = r1 = r2 = r3 = zero
                        for i in range(row):
                            u, v = dr[i], er[i]
                            a, b, e2, f = x0[i], x1[i], x2[i], x3[i]
                            s0 += u * a
                            s1 += u * b
                            s2 += u * e2
                            s3 += u * f
                            r0 += v * a
                            r1 += v * b
                            r2 += v * e2
                            r3 += v * f
                        dw[c_o, c, t] += s0
                        dw[c_o, c, t + 1] += s1
                        dw[c_o, c, t + 2] += s2
                        dw[c_o, c, t + 3] += s3
                        if pair:
                            dw[c_o + 1, c, t] += r0
                            dw[c_o + 1, c, t + 1] += r1
                            dw[c_o + 1, c, t + 2] += r2
                            dw[c_o + 1, c, t + 3] += r3
                        t += 4
                    while t < taps:
                        xs = xr[offs[t] :]
                        s0 = r0 = zero
                        for i in range(row):
                            s0 += dr[i] * xs[i]
                            r0 += er[i] * xs[i]
                        dw[c_o, c, t] += s0
                        if pair:
                            dw[c_o + 1, c, t] += r0
                        t += 1
                c_o += 2 if pair else 1

    return {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}


def warm(dtype: Any) -> None:
    """Compile the three kernels for ``dtype`` now (the autotuner times calls, and a
    first call would time Numba's compiler)."""
    g = ConvGeometry(1, 1, 1, 1, (1,), (1,), (1,), (1,), ((0, 0),), (1,))
    one = np.ones((1, 1, 1), dtype=dtype)
    forward(one, one, g)
    input_grad(one, one, g)
    weight_grad(one, one, g)
    forward(one, one, g, padded=False, bias=np.ones(1, dtype=dtype))


def _blocks(batch: int) -> list[tuple[int, int]]:
    return [(n0, min(batch, n0 + _BLOCK)) for n0 in range(0, batch, _BLOCK)]


def _flat(a: Any, channels: int, batch: int) -> Any:
    return np.ascontiguousarray(a).reshape(batch, channels, -1)


def _rows(plan: _Plan, g: ConvGeometry, padded: bool) -> tuple[Any, int, int]:
    """(row starts on the padded plane, row length, elements per channel) of an input
    given padded (one row: the plane) or unpadded (its own rows, placed in the padding)."""
    if padded:
        return plan.padded_rows, plan.size, plan.size
    if plan.in_rows is None:
        raise ValueError("padded=False needs zero padding that is not negative")
    return plan.in_rows, plan.in_row_len, math.prod(g.in_shape)


def forward(x: Any, w: Any, g: ConvGeometry, *, padded: bool = True, bias: Any = None) -> Any:
    """Eq. F. x (N, C_in, *S_pad), or (N, C_in, *S) with ``padded`` False (zero padding
    placed by the kernel, see :func:`pads_itself`); w (C_out, C_in/G, *K); bias (C_out,)
    or None, added after the sum as ``y += b`` would -> y (N, C_out, *out)."""
    plan = _plan(g)
    G = g.groups
    cog, cig = g.out_channels // G, g.in_channels // G
    rows, row_len, _ = _rows(plan, g, padded)
    x = _flat(x, g.in_channels, g.batch)
    w3 = np.ascontiguousarray(w).reshape(g.out_channels, cig, -1)
    b = np.zeros(0, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    y = np.empty((g.batch, g.out_channels, plan.outputs.size), dtype=x.dtype)
    run = _kernels()["forward"]
    args = (x, rows, row_len, w3, plan.offsets, plan.outputs, cog, cig, plan.row, plan.in_row)
    args = args + (b, y)
    parallel_map(lambda blk: run(*args, blk[0], blk[1]), _blocks(g.batch))
    return y.reshape((g.batch, g.out_channels) + g.out_shape)


def input_grad(dy: Any, w: Any, g: ConvGeometry, *, padded: bool = True) -> Any:
    """Eq. BX' (δ with the flipped kernel). dy (N, C_out, *out) -> dX_pad (N, C_in, *S_pad),
    or with ``padded`` False the gradient of the unpadded input, dX (N, C_in, *S) (zero
    padding: its adjoint is the crop, done by the kernel)."""
    if not np.isfinite(w).all():
        # δ_ext's zeros off the outputs would meet inf/NaN weights (0 · inf is NaN)
        dx_pad = im2col.input_grad(dy, w, g, layout=im2col.exact_layout(g))
        return dx_pad if padded else pad_adjoint(dx_pad, g.in_shape, g.pads, g.padding_mode)
    plan = _plan(g)
    rows, row_len, plane = _rows(plan, g, padded)
    G = g.groups
    cog, cig = g.out_channels // G, g.in_channels // G
    d = _flat(dy, g.out_channels, g.batch)
    # W_t[c_i, c_o, t] = W[c_o, c_i, T-1-t], channels swapped within each group, so that
    # the taps' offsets reach - off(T-1-t) rise from 0 as eq. F's do.
    wt = w.reshape(G, cog, cig, -1).swapaxes(1, 2)[..., ::-1]
    wt = np.ascontiguousarray(wt).reshape(g.in_channels, cog, -1)
    offs_rev = np.ascontiguousarray(plan.reach - plan.offsets[::-1])
    dx = np.empty((g.batch, g.in_channels, plane), dtype=d.dtype)
    run = _kernels()["input_grad"]
    args = (d, wt, offs_rev, plan.outputs, plan.reach, cig, cog, plan.grad_row)
    args = args + (plan.shifted_row, rows, row_len, dx)
    parallel_map(lambda b: run(*args, b[0], b[1]), _blocks(g.batch))
    return dx.reshape((g.batch, g.in_channels) + (g.padded_shape if padded else g.in_shape))


def weight_grad(dy: Any, x: Any, g: ConvGeometry, *, padded: bool = True) -> Any:
    """Eq. BW. dy (N, C_out, *out), x (N, C_in, *S_pad), or (N, C_in, *S) with ``padded``
    False (zero padding placed by the kernel) -> dW (C_out, C_in/G, *K)."""
    plan = _plan(g)
    G = g.groups
    cog, cig = g.out_channels // G, g.in_channels // G
    rows, row_len, _ = _rows(plan, g, padded)
    d = _flat(dy, g.out_channels, g.batch)
    x_given = x
    x = _flat(x, g.in_channels, g.batch)
    blocks = _blocks(g.batch)
    partial = np.zeros((len(blocks), g.out_channels, cig, plan.offsets.size), dtype=np.float64)
    run = _kernels()["weight_grad"]
    args = (d, x, rows, row_len, plan.offsets, plan.outputs, cog, cig, plan.dot_row, plan.in_row)
    args = args + (x.dtype.type(0),)

    def block(i: int) -> None:
        run(*args, partial[i], blocks[i][0], blocks[i][1])

    parallel_map(block, range(len(blocks)))
    # Blocks in order: the same sum whatever thread ran which block.
    dw = partial[0]  # summed into in place: partial is not read again
    for i in range(1, len(blocks)):
        dw += partial[i]
    if not np.isfinite(dw).all():
        # The input holds inf or NaN, which δ_ext's zeros off the outputs may have met
        # (0 · inf is NaN): the sums again over the outputs alone.
        x_pad = x_given if padded else apply_pad(x_given, g.pads, g.padding_mode)
        return im2col.weight_grad(dy, x_pad, g, layout=im2col.exact_layout(g))
    return dw.astype(x.dtype).reshape((g.out_channels, cig) + g.kernel)
