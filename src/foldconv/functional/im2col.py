"""The unfold + GEMM kernels of the convolution (eqs. F, BW and BX of convolution.py).

Each pass walks the output in tiles (:func:`~foldconv.functional.unfold.plan_tiles`)
whose column buffer fits the workspace limit, and reuses one scratch buffer per
thread across tiles and calls (first touch of fresh pages costs more than the copy).

Two buffer layouts, chosen per geometry:

``sample``: cols (n, C_in, *K, *P), one GEMM per sample and group. The forward's
  GEMM writes straight into the output (N, C_out, *P), the input gradient's columns are
  read in order by col2im, and a stride-1 1x1 convolution needs no copy at all (its
  columns *are* the input). Best when one sample has many output positions.
``batch``: cols (C_in, *K, n, *P), one GEMM per group over n·P columns. Best when
  each sample has few positions (LeNet's 10x10), where per-sample GEMMs would be too
  small to run at the BLAS rate.
"""

from __future__ import annotations

import math
from typing import Any

from foldconv.backend import get_array_module
from foldconv.functional import flat
from foldconv.functional._args import ConvGeometry
from foldconv.functional.unfold import Tile, col2im_add, im2col_into, plan_tiles
from foldconv.functional.workspace import scratch

# Multiply-adds of one sample's GEMM (per group) from which per-sample GEMMs run at the
# BLAS rate (measured: AlexNet's and VGG's layers, 29-150 M, do; LeNet's, 0.1-0.2 M, don't).
SAMPLE_LAYOUT_MIN_MACS = 4_000_000


def choose_layout(g: ConvGeometry, pass_: str = "forward", itemsize: int = 4) -> str:
    """The buffer layout for one pass (measured on the suite, BENCHMARKS.md).

    A stride-1 1x1 layer takes 'sample' (no unfold at all); other stride-1 layers the
    flat grid of functional/flat.py (one contiguous copy or add per tap: the dilated
    layer's f+b 53 ms against 65 ms per sample, LeNet's conv2 1.9 ms against 3.2 ms).
    The input gradient of a strided 2-d or 3-d layer takes the flat grid too (split into
    the stride's phases). Other strided passes take 'sample' when one sample's GEMM is big
    enough to run at the BLAS rate (SAMPLE_LAYOUT_MIN_MACS multiply-adds), else 'batch'.
    """
    if is_pointwise(g):
        return "sample"
    if all(s == 1 for s in g.stride) and flat.supports(g, itemsize):
        return "flat"
    if pass_ == "input_grad" and g.ndim >= 2 and flat.supports(g, itemsize):
        # Strided col2im: one add per tap into its phase beats per-sample strided adds
        # (AlexNet's conv1 27 ms against 35, a 7x7 stride-2 stem 9.7 against 12.7, 256
        # channels at 14x14 11.2 against 13.8); the forward and the weight gradient keep
        # per-sample buffers, whose GEMMs are not widened by the phase grid (measured).
        return "flat"
    return exact_layout(g)


def exact_layout(g: ConvGeometry) -> str:
    """The layout that reads only real output positions: 'sample' or 'batch'.

    The flat range also holds positions that are not outputs, with δ set to zero there;
    0 · inf is NaN, so where the input (weight gradient) or the weight (input gradient)
    holds an infinity or a NaN, a flat-range result can be NaN where the true sum is
    finite or infinite. Those passes are then run again in this layout.
    """
    if is_pointwise(g):
        return "sample"
    per_sample = (
        (g.out_channels // g.groups)
        * (g.in_channels // g.groups)
        * g.kernel_size
        * math.prod(g.out_shape)
    )
    return "sample" if per_sample >= SAMPLE_LAYOUT_MIN_MACS else "batch"


def is_pointwise(g: ConvGeometry) -> bool:
    """A 1x1, stride-1, unpadded convolution that reads its whole input: its columns are
    the input itself. (A transposed convolution's geometry may ask for fewer outputs
    than the input has, e.g. with output_padding under a dilation: not pointwise then.)"""
    return (
        all(k == 1 for k in g.kernel)
        and all(s == 1 for s in g.stride)
        and all(lo == 0 and hi == 0 for lo, hi in g.pads)
        and g.out_shape == g.in_shape
    )


def _tiles(g: ConvGeometry, itemsize: int) -> list[Tile]:
    per_position = 0 if is_pointwise(g) else g.in_channels * g.kernel_size * itemsize
    return list(
        plan_tiles(g.batch, g.out_shape, g.kernel, g.stride, g.dilation, max(per_position, 1))
    )


def _sel(tile: Tile, box: tuple[slice, ...]) -> tuple[slice, ...]:
    return (slice(tile.n0, tile.n1), slice(None)) + box


def _columns(x_pad: Any, g: ConvGeometry, tile: Tile, layout: str) -> Any:
    """Unfold one tile; returns (n, G, C_in/G·prod(K), P) for 'sample',
    (G, C_in/G·prod(K), n·P) for 'batch'."""
    xp = get_array_module(x_pad)
    G, cig, nd = g.groups, g.in_channels // g.groups, g.ndim
    rows = cig * g.kernel_size
    if layout == "sample" and is_pointwise(g):
        block = x_pad[_sel(tile, tile.in_box)]
        return block.reshape(tile.n, G, cig, -1)
    shape_c = (g.in_channels,) + g.kernel
    buf = scratch(tile.positions * g.in_channels * g.kernel_size, x_pad.dtype, xp)
    src = x_pad[_sel(tile, tile.in_box)]
    if layout == "sample":
        arr = buf.reshape((tile.n,) + shape_c + tile.box_shape)
        im2col_into(src, arr, g.kernel, g.stride, g.dilation)
        return arr.reshape(tile.n, G, rows, -1)
    arr = buf.reshape(shape_c + (tile.n,) + tile.box_shape)
    perm = (nd + 1, 0) + tuple(range(1, nd + 1)) + tuple(range(nd + 2, 2 * nd + 2))
    im2col_into(src, arr.transpose(perm), g.kernel, g.stride, g.dilation)
    return arr.reshape(G, rows, -1)


def _dy_batch(dy: Any, g: ConvGeometry, tile: Tile) -> Any:
    """δ of a tile as (G, C_out/G, n·P) (channels first: one copy)."""
    xp = get_array_module(dy)
    block = dy[_sel(tile, tile.out_box)]
    moved = xp.ascontiguousarray(xp.moveaxis(block, 1, 0))
    return moved.reshape(g.groups, g.out_channels // g.groups, -1)


def _dy_sample(dy: Any, g: ConvGeometry, tile: Tile) -> Any:
    """δ of a tile as (n, G, C_out/G, P) (a view when the tile covers whole samples)."""
    block = dy[_sel(tile, tile.out_box)]
    return block.reshape(tile.n, g.groups, g.out_channels // g.groups, -1)


def forward(x_pad: Any, w: Any, g: ConvGeometry, layout: str | None = None) -> Any:
    """Eq. F without bias, Y = W̃ · unfold(X_pad).

    Parameters
    ----------
    x_pad : ndarray, shape (N, C_in, *S_pad)
    w : ndarray, shape (C_out, C_in/G, *K)

    Returns
    -------
    ndarray, shape (N, C_out, *out)
    """
    xp = get_array_module(x_pad)
    layout = layout or choose_layout(g, "forward", x_pad.dtype.itemsize)
    if layout == "flat":
        return flat.forward(x_pad, w, g)
    G, cog = g.groups, g.out_channels // g.groups
    wg = w.reshape(G, cog, -1)
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x_pad.dtype)
    for tile in _tiles(g, x_pad.dtype.itemsize):
        cols = _columns(x_pad, g, tile, layout)
        full = tile.box_shape == g.out_shape
        if layout == "sample":
            target = (
                y[tile.n0 : tile.n1]
                if full
                else xp.empty((tile.n, g.out_channels) + tile.box_shape, dtype=y.dtype)
            )
            tg = target.reshape(tile.n, G, cog, -1)
            for i in range(tile.n):
                for j in range(G):
                    xp.matmul(wg[j], cols[i, j], out=tg[i, j])
            if not full:
                y[_sel(tile, tile.out_box)] = target
        else:
            out = xp.empty((G, cog, cols.shape[2]), dtype=y.dtype)
            for j in range(G):
                xp.matmul(wg[j], cols[j], out=out[j])
            out = out.reshape((g.out_channels, tile.n) + tile.box_shape)
            y[_sel(tile, tile.out_box)] = xp.moveaxis(out, 0, 1)
    return y


def weight_grad(dy: Any, x_pad: Any, g: ConvGeometry, layout: str | None = None) -> Any:
    """Eq. BW, dW̃ = δ · unfold(X_pad)ᵀ, accumulated over tiles.

    Returns
    -------
    ndarray, shape (C_out, C_in/G, *K)
    """
    xp = get_array_module(x_pad)
    layout = layout or choose_layout(g, "weight_grad", x_pad.dtype.itemsize)
    if layout == "flat":
        dw = flat.weight_grad(dy, x_pad, g)
        if xp.isfinite(dw).all():
            return dw
        layout = exact_layout(g)  # non-finite input: see exact_layout
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    dw = xp.zeros((G, cog, cig * g.kernel_size), dtype=x_pad.dtype)
    tmp = xp.empty_like(dw[0])
    for tile in _tiles(g, x_pad.dtype.itemsize):
        cols = _columns(x_pad, g, tile, layout)
        if layout == "sample":
            d = _dy_sample(dy, g, tile)
            for i in range(tile.n):
                for j in range(G):
                    xp.matmul(d[i, j], cols[i, j].T, out=tmp)
                    dw[j] += tmp
        else:
            d = _dy_batch(dy, g, tile)
            for j in range(G):
                xp.matmul(d[j], cols[j].T, out=tmp)
                dw[j] += tmp
    return dw.reshape((g.out_channels, cig) + g.kernel)


def input_grad(dy: Any, w: Any, g: ConvGeometry, layout: str | None = None) -> Any:
    """Eq. BX, dX_pad = fold(W̃ᵀ · δ): one GEMM, then one strided add per kernel tap.

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    layout = layout or choose_layout(g, "input_grad", dy.dtype.itemsize)
    if layout == "flat" and not xp.isfinite(w).all():
        layout = exact_layout(g)  # see exact_layout
    if layout == "flat":
        return flat.input_grad(dy, w, g)
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    rows = cig * g.kernel_size
    wg_t = w.reshape(G, cog, rows).transpose(0, 2, 1)  # W̃ᵀ per group
    if layout == "sample" and is_pointwise(g):
        # fold is the identity: write W̃ᵀ·δ straight into the gradient.
        dx = xp.empty((g.batch, g.in_channels) + g.padded_shape, dtype=dy.dtype)
        dxg = dx.reshape(g.batch, G, cig, -1)
        d = dy.reshape(g.batch, G, cog, -1)
        for i in range(g.batch):
            for j in range(G):
                xp.matmul(wg_t[j], d[i, j], out=dxg[i, j])
        return dx
    dx_pad = xp.zeros((g.batch, g.in_channels) + g.padded_shape, dtype=dy.dtype)
    nd = g.ndim
    for tile in _tiles(g, dy.dtype.itemsize):
        buf = scratch(tile.positions * g.in_channels * g.kernel_size, dy.dtype, xp)
        target = dx_pad[_sel(tile, tile.in_box)]
        if layout == "sample":
            arr = buf.reshape((tile.n, g.in_channels) + g.kernel + tile.box_shape)
            cols = arr.reshape(tile.n, G, rows, -1)
            d = _dy_sample(dy, g, tile)
            for i in range(tile.n):
                for j in range(G):
                    xp.matmul(wg_t[j], d[i, j], out=cols[i, j])
            col2im_add(arr, target, g.kernel, g.stride, g.dilation)
        else:
            arr = buf.reshape((g.in_channels,) + g.kernel + (tile.n,) + tile.box_shape)
            cols = arr.reshape(G, rows, -1)
            d = _dy_batch(dy, g, tile)
            for j in range(G):
                xp.matmul(wg_t[j], d[j], out=cols[j])
            perm = (nd + 1, 0) + tuple(range(1, nd + 1)) + tuple(range(nd + 2, 2 * nd + 2))
            col2im_add(arr.transpose(perm), target, g.kernel, g.stride, g.dilation)
    return dx_pad
