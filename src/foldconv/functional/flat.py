"""im2col and col2im on the flattened padded grid, for stride-1 layers.

With stride 1, output position o reads X_pad[o + t·dilation]; numbered by its *flat*
index in the padded input, o_flat = Σ_d o_d·s_d (s_d the padded input's row strides),
it reads X_flat[o_flat + off(t)] with off(t) = Σ_d t_d·dilation_d·s_d. So, computed on the
whole range l in [0, L) with L = Σ_d (out_d - 1)·s_d + 1, the columns of tap t are ONE
contiguous slice X_flat[:, :, off(t) : off(t) + L], and col2im is one contiguous add per
tap, instead of prod(out[:-1]) short rows of out[-1] elements each: NumPy's per-row cost
is what dominates small layers (LeNet's conv2: col2im 1.9 ms in rows of 10).

The range also holds positions that are not outputs (the columns past out_d in each row).
Their forward results are computed and dropped; in the gradients their δ is set to zero,
so they add nothing. The cost is L / prod(out) more GEMM columns (1.4x for a 10x10 output
of a 14x14 input, ~1.0x for large images), which is why this path is used only where
per-row overheads dominate (the 'batch' im2col layout: small per-sample GEMMs).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from foldconv._config import get_workspace_limit
from foldconv.backend import get_array_module
from foldconv.functional._args import ConvGeometry
from foldconv.functional.workspace import scratch


def _grid(g: ConvGeometry) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """(row strides of the padded input in elements, L, per-dim tap offset steps)."""
    strides = tuple(math.prod(g.padded_shape[d + 1 :]) for d in range(g.ndim))
    length = sum((o - 1) * s for o, s in zip(g.out_shape, strides, strict=True)) + 1
    steps = tuple(d * s for d, s in zip(g.dilation, strides, strict=True))
    return strides, length, steps


def supports(g: ConvGeometry, itemsize: int) -> bool:
    """Stride 1, and one sample's columns fit the workspace limit."""
    if any(s != 1 for s in g.stride):
        return False
    _, length, _ = _grid(g)
    return g.in_channels * g.kernel_size * length * itemsize <= get_workspace_limit()


def _chunks(g: ConvGeometry, length: int, itemsize: int) -> list[tuple[int, int]]:
    per_sample = g.in_channels * g.kernel_size * length * itemsize
    step = max(1, get_workspace_limit() // per_sample)
    return [(n0, min(g.batch, n0 + step)) for n0 in range(0, g.batch, step)]


def _valid(ext: Any, g: ConvGeometry, strides: tuple[int, ...]) -> Any:
    """The output positions of a (..., L) array, as a (..., *out) view."""
    xp = get_array_module(ext)
    item = ext.dtype.itemsize
    return xp.lib.stride_tricks.as_strided(
        ext,
        shape=ext.shape[:-1] + g.out_shape,
        strides=ext.strides[:-1] + tuple(s * item for s in strides),
    )


def _columns(x_flat: Any, g: ConvGeometry, length: int, steps, buf: Any) -> Any:
    """cols[(c, t), (n, l)] = X_flat[n, c, off(t) + l] as (G, C_in/G·prod(K), n·L)."""
    xp = get_array_module(x_flat)
    n, c = x_flat.shape[:2]
    item = x_flat.dtype.itemsize
    window = xp.lib.stride_tricks.as_strided(
        x_flat,
        shape=(n, c) + g.kernel + (length,),
        strides=x_flat.strides[:2] + tuple(s * item for s in steps) + (item,),
    )
    arr = buf[: c * g.kernel_size * n * length].reshape((c,) + g.kernel + (n, length))
    nd = g.ndim
    arr.transpose((nd + 1, 0) + tuple(range(1, nd + 1)) + (nd + 2,))[...] = window
    return arr.reshape(g.groups, -1, n * length)


def _dy_ext(dy: Any, g: ConvGeometry, strides, length: int) -> Any:
    """δ on the flat range, zero off the outputs: (G, C_out/G, n·L)."""
    xp = get_array_module(dy)
    n = dy.shape[0]
    ext = xp.zeros((g.out_channels, n, length), dtype=dy.dtype)
    _valid(ext, g, strides)[...] = xp.moveaxis(dy, 1, 0)
    return ext.reshape(g.groups, g.out_channels // g.groups, n * length)


def _flat_input(x_pad: Any) -> Any:
    xp = get_array_module(x_pad)
    x_pad = xp.ascontiguousarray(x_pad)
    return x_pad.reshape(x_pad.shape[:2] + (-1,))


def forward(x_pad: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. F without bias on the flat range. Returns (N, C_out, *out)."""
    xp = get_array_module(x_pad)
    strides, length, steps = _grid(g)
    x_flat = _flat_input(x_pad)
    G, cog = g.groups, g.out_channels // g.groups
    wg = w.reshape(G, cog, -1)
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x_pad.dtype)
    for n0, n1 in _chunks(g, length, x_pad.dtype.itemsize):
        buf = scratch(g.in_channels * g.kernel_size * (n1 - n0) * length, x_pad.dtype, xp)
        cols = _columns(x_flat[n0:n1], g, length, steps, buf)
        out = xp.empty((G, cog, cols.shape[2]), dtype=y.dtype)
        for j in range(G):
            xp.matmul(wg[j], cols[j], out=out[j])
        valid = _valid(out.reshape(g.out_channels, n1 - n0, length), g, strides)
        y[n0:n1] = xp.moveaxis(valid, 0, 1)
    return y


def weight_grad(dy: Any, x_pad: Any, g: ConvGeometry) -> Any:
    """Eq. BW on the flat range (δ is zero off the outputs). Returns (C_out, C_in/G, *K)."""
    xp = get_array_module(x_pad)
    strides, length, steps = _grid(g)
    x_flat = _flat_input(x_pad)
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    dw = xp.zeros((G, cog, cig * g.kernel_size), dtype=x_pad.dtype)
    for n0, n1 in _chunks(g, length, x_pad.dtype.itemsize):
        buf = scratch(g.in_channels * g.kernel_size * (n1 - n0) * length, x_pad.dtype, xp)
        cols = _columns(x_flat[n0:n1], g, length, steps, buf)
        d = _dy_ext(dy[n0:n1], g, strides, length)
        for j in range(G):
            dw[j] += d[j] @ cols[j].T
    return dw.reshape((g.out_channels, cig) + g.kernel)


def input_grad(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. BX on the flat range: W̃ᵀ·δ, then one contiguous add per tap.

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    strides, length, steps = _grid(g)
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    rows = cig * g.kernel_size
    wg_t = w.reshape(G, cog, rows).transpose(0, 2, 1)
    dx = xp.zeros((g.batch, g.in_channels) + g.padded_shape, dtype=dy.dtype)
    dx_flat = dx.reshape(g.batch, g.in_channels, -1)
    taps = list(itertools.product(*(range(k) for k in g.kernel)))
    offsets = [sum(t * s for t, s in zip(tap, steps, strict=True)) for tap in taps]
    for n0, n1 in _chunks(g, length, dy.dtype.itemsize):
        n = n1 - n0
        buf = scratch(g.in_channels * g.kernel_size * n * length, dy.dtype, xp)
        cols = buf.reshape(G, rows, n * length)
        d = _dy_ext(dy[n0:n1], g, strides, length)
        for j in range(G):
            xp.matmul(wg_t[j], d[j], out=cols[j])
        arr = buf.reshape((g.in_channels, len(taps), n, length))
        target = dx_flat[n0:n1]
        for i, off in enumerate(offsets):
            target[:, :, off : off + length] += arr[:, i].transpose(1, 0, 2)
    return dx
