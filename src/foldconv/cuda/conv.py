"""The convolution on the GPU: im2col + batched GEMM, col2im as a gather, direct depthwise.

The same equations as :mod:`foldconv.functional.convolution` (eqs. F, BW, BX), with the
unfold and fold done by the numba-cuda kernels of :mod:`foldconv.cuda.kernels_conv` and
the GEMMs by ``xp.matmul`` (cuBLAS) batched over the groups:

    forward          Y_g  = W̃_g · X̃_g                  (G, C_out/G, n·P) for each tile
    weight gradient  dW̃_g = Σ_tiles δ_g · X̃_gᵀ          the batch summed inside the GEMM
    input gradient   X̃'_g = W̃_gᵀ · δ_g, dX = fold(X̃')  fold as a gather, no atomics

The column buffer of a tile of samples is laid out (C_in, prod(K), n, P) so that group g's
rows are one contiguous block and a single batched GEMM serves every group. Tiles follow
:func:`~foldconv.functional.unfold.plan_tiles` without its CPU cache rule: whole samples
as long as the buffer fits the workspace limit, else one sample cut along its leading
output dimensions, so the buffer never exceeds the limit.

Zero padding is read by the kernels themselves (no padded copy of the input); other
padding modes pad with :func:`~foldconv.functional.padding.apply_pad` first and take
the padding's adjoint of the input gradient, as the CPU path does.

Algorithms on the GPU: ``auto`` runs the depthwise kernels for groups == C_in > 1 and
im2col for everything else (the autotuner, :func:`foldconv.set_benchmark`, has nothing
to choose between on the GPU). An explicit ``depthwise`` runs the depthwise kernels;
``im2col``, ``full_conv``, ``direct`` and ``winograd``, which compute the same sums by
other routes on the CPU, all run the GPU im2col path. Every explicit name is checked
against the geometry exactly as on the CPU (so ``winograd`` for a 7x7 layer, or
``depthwise`` for groups=1, is the same ValueError on both devices).

Sums are in a fixed order everywhere (one thread per output element; tiles added in
order), so results are bitwise reproducible run to run.
"""

from __future__ import annotations

import math
from typing import Any

from foldconv._config import get_workspace_limit
from foldconv.backend import get_array_module
from foldconv.cuda import kernels_conv as kc
from foldconv.cuda.memory import translate_out_of_memory
from foldconv.functional._args import ConvGeometry
from foldconv.functional.padding import apply_pad, pad_adjoint
from foldconv.functional.unfold import Tile, plan_tiles

_PASS_NAMES = {
    "forward": "the convolution's forward pass",
    "input_grad": "the convolution's input gradient",
    "weight_grad": "the convolution's weight gradient",
}


def depthwise_applies(g: ConvGeometry) -> bool:
    """groups == C_in > 1, any channel multiplier: the depthwise kernels apply."""
    return g.groups == g.in_channels and g.groups > 1


def choose(pass_: str, g: ConvGeometry, dtype: Any, algorithm: str) -> str:
    """The GPU kernel ('im2col' or 'depthwise') that runs ``pass_`` for ``algorithm``.

    Explicit names are validated by the CPU dispatcher's rules first, so that a name that
    does not support the geometry is the same ValueError on both devices.
    """
    if algorithm == "auto":
        return "depthwise" if depthwise_applies(g) else "im2col"
    from foldconv.functional.dispatch import check_algorithm  # noqa: PLC0415

    check_algorithm(pass_, g, dtype, algorithm)
    return "depthwise" if algorithm == "depthwise" else "im2col"


def _three(values: tuple[int, ...], fill: int) -> tuple[int, ...]:
    """A 1-d or 2-d tuple as 3-d, with ``fill`` for the leading (absent) dimensions."""
    return (fill,) * (3 - len(values)) + tuple(values)


def _lows(g: ConvGeometry) -> tuple[int, ...]:
    return tuple(lo for lo, _ in g.pads)


def _shapes(pass_: str, g: ConvGeometry) -> dict[str, tuple[int, ...]]:
    """The shapes an out-of-memory error names."""
    w = (g.out_channels, g.in_channels // g.groups) + g.kernel
    x = (g.batch, g.in_channels) + g.in_shape
    y = (g.batch, g.out_channels) + g.out_shape
    if pass_ == "forward":
        return {"input": x, "weight": w, "output": y}
    return {"grad_output": y, "input": x, "weight": w}


def _contiguous(*arrays: Any) -> list[Any]:
    xp = get_array_module(*arrays)
    return [xp.ascontiguousarray(a) for a in arrays]


def _zero(a: Any) -> Any:
    """A zero of ``a``'s dtype: the kernels' accumulators start from it (a plain 0 would
    make numba sum float32 in float64)."""
    return a.dtype.type(0)


# ---------------------------------------------------------------------------------------
# Launching the kernels
# ---------------------------------------------------------------------------------------
def launch_im2col(
    x: Any,
    cols: Any,
    lo: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    n0: int,
    nt: int,
    box_origin: tuple[int, ...],
    box_shape: tuple[int, ...],
    col_strides: tuple[int, int, int],
) -> None:
    """Fill ``cols`` (flat) with the columns of samples n0 .. n0+nt of ``x`` (N, C, *S).

    col_strides = (sc, st, sn): where channel c, tap t and sample n start in ``cols``
    (see :mod:`foldconv.cuda.kernels_conv`)."""
    c = x.shape[1]
    n_items = c * math.prod(kernel) * nt * math.prod(box_shape)
    kc.im2col(
        n_items, n_items, x.reshape(-1), cols,
        c, *_three(x.shape[2:], 1), *_three(lo, 0), *_three(kernel, 1),
        *_three(stride, 1), *_three(dilation, 1), n0, nt,
        *_three(box_origin, 0), *_three(box_shape, 1), *col_strides,
    )  # fmt: skip


def launch_col2im(
    cols: Any,
    out: Any,
    lo: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    n0: int,
    nt: int,
    box_origin: tuple[int, ...],
    box_shape: tuple[int, ...],
    col_strides: tuple[int, int, int],
    region: tuple[tuple[int, int], ...] | None = None,
    accumulate: bool = False,
) -> None:
    """out[n0 : n0+nt] (+)= fold(cols) over ``region`` ((start, stop) per spatial dim of
    ``out``, default all of it), as a gather (see :func:`kernels_conv.col2im_gather`)."""
    c = out.shape[1]
    spatial = out.shape[2:]
    region = region or tuple((0, s) for s in spatial)
    starts = tuple(a for a, _ in region)
    sizes = tuple(b - a for a, b in region)
    n_items = nt * c * math.prod(sizes)
    kc.col2im_gather(
        n_items, n_items, _zero(cols), cols, out.reshape(-1),
        c, *_three(spatial, 1), *_three(lo, 0), *_three(kernel, 1),
        *_three(stride, 1), *_three(dilation, 1), *_tap_steps(stride, dilation), n0, nt,
        *_three(box_origin, 0), *_three(box_shape, 1), *col_strides,
        *_three(starts, 0), *_three(sizes, 1), accumulate,
    )  # fmt: skip


def _tap_steps(stride: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """(g, e, v, h) of every dimension, as 3-d: g = gcd(s, d), e = s / g, v the inverse of
    d / g modulo e and h = d / g, with which a gather walks the taps landing on a position
    without a test or a division per tap (see :func:`kernels_conv.col2im_gather`)."""
    gs, es, vs, hs = [], [], [], []
    for s, d in zip(stride, dilation, strict=True):
        g = math.gcd(s, d)
        e = s // g
        gs.append(g)
        es.append(e)
        vs.append(pow(d // g, -1, e) if e > 1 else 0)
        hs.append(d // g)
    return _three(tuple(gs), 1) + _three(tuple(es), 1) + _three(tuple(vs), 0) + _three(tuple(hs), 1)


def _depthwise_args(g: ConvGeometry, spatial: tuple[int, ...], lo: tuple[int, ...]) -> tuple:
    return (
        g.in_channels,
        g.out_channels // g.in_channels,
        *_three(spatial, 1),
        *_three(lo, 0),
        *_three(g.kernel, 1),
        *_three(g.stride, 1),
        *_three(g.dilation, 1),
        *_three(g.out_shape, 1),
    )


# ---------------------------------------------------------------------------------------
# Tiles of the column buffer
# ---------------------------------------------------------------------------------------
def tiles(g: ConvGeometry, itemsize: int) -> list[Tile]:
    """Tiles whose column buffer (C_in·prod(K) entries per output position) fits the
    workspace limit; whole samples are grouped up to the limit itself (no cache rule)."""
    per_position = g.in_channels * g.kernel_size * itemsize
    return list(
        plan_tiles(
            g.batch,
            g.out_shape,
            g.kernel,
            g.stride,
            g.dilation,
            per_position,
            group_bytes=get_workspace_limit(),
        )
    )


def _unfold_tile(x: Any, g: ConvGeometry, lo: tuple[int, ...], tile: Tile) -> Any:
    """The tile's columns as (G, C_in/G·prod(K), n·P)."""
    xp = get_array_module(x)
    p = math.prod(tile.box_shape)
    cols = xp.empty(g.in_channels * g.kernel_size * tile.n * p, dtype=x.dtype)
    launch_im2col(
        x, cols, lo, g.kernel, g.stride, g.dilation, tile.n0, tile.n,
        tuple(s.start for s in tile.out_box), tile.box_shape,
        (g.kernel_size * tile.n * p, tile.n * p, p),
    )  # fmt: skip
    return cols.reshape(g.groups, (g.in_channels // g.groups) * g.kernel_size, tile.n * p)


def _dy_tile(dy: Any, g: ConvGeometry, tile: Tile) -> Any:
    """δ of a tile as (G, C_out/G, n·P), channels first (one copy)."""
    xp = get_array_module(dy)
    block = dy[(slice(tile.n0, tile.n1), slice(None)) + tile.out_box]
    moved = xp.ascontiguousarray(xp.moveaxis(block, 1, 0))
    return moved.reshape(g.groups, g.out_channels // g.groups, -1)


# ---------------------------------------------------------------------------------------
# The passes, on an input whose origin sits at ``lo`` in the padded coordinates
# ---------------------------------------------------------------------------------------
def pointwise(g: ConvGeometry, x: Any) -> bool:
    """A 1x1, stride-1 convolution that reads all of ``x`` unpadded: its columns are the
    input itself, so the forward and the input gradient are GEMMs alone."""
    return (
        all(k == 1 for k in g.kernel)
        and all(s == 1 for s in g.stride)
        and tuple(x.shape[2:]) == g.out_shape
    )


def _pointwise_gemm(w_g: Any, a: Any, g: ConvGeometry, channels: int) -> Any:
    """w_g (G, R, C/G) times each sample's a (N, C, *P) viewed as (N, G, C/G, P): one GEMM
    batched over samples and groups, whose result (N, G, R, P) is already (N, G·R, *P)."""
    xp = get_array_module(a)
    out = xp.matmul(w_g, a.reshape(g.batch, g.groups, -1, math.prod(a.shape[2:])))
    return out.reshape((g.batch, channels) + tuple(a.shape[2:]))


def _im2col_forward(x: Any, w: Any, g: ConvGeometry, lo: tuple[int, ...]) -> Any:
    xp = get_array_module(x)
    G, cog = g.groups, g.out_channels // g.groups
    wg = w.reshape(G, cog, -1)
    if pointwise(g, x) and all(v == 0 for v in lo):
        return _pointwise_gemm(wg, x, g, g.out_channels)
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x.dtype)
    for tile in tiles(g, x.dtype.itemsize):
        out = xp.matmul(wg, _unfold_tile(x, g, lo, tile))  # (G, C_out/G, n·P)
        out = out.reshape((g.out_channels, tile.n) + tile.box_shape)
        y[(slice(tile.n0, tile.n1), slice(None)) + tile.out_box] = xp.moveaxis(out, 0, 1)
    return y


def _im2col_weight_grad(dy: Any, x: Any, g: ConvGeometry, lo: tuple[int, ...]) -> Any:
    dw = None
    for tile in tiles(g, x.dtype.itemsize):
        cols = _unfold_tile(x, g, lo, tile)
        part = get_array_module(x).matmul(_dy_tile(dy, g, tile), cols.transpose(0, 2, 1))
        if dw is None:
            dw = part
        else:
            dw += part  # tiles in a fixed order: deterministic
    return dw.reshape((g.out_channels, g.in_channels // g.groups) + g.kernel)


def _im2col_input_grad(
    dy: Any, w: Any, g: ConvGeometry, lo: tuple[int, ...], target: tuple[int, ...]
) -> Any:
    """dX over ``target`` (the input's spatial shape whose origin is at ``lo``)."""
    xp = get_array_module(dy)
    G, cog = g.groups, g.out_channels // g.groups
    wt = w.reshape(G, cog, -1).transpose(0, 2, 1)  # W̃ᵀ per group
    if all(v == 0 for v in lo) and target == g.out_shape and pointwise(g, dy):
        return _pointwise_gemm(wt, dy, g, g.in_channels)  # fold is the identity
    plan = tiles(g, dy.dtype.itemsize)
    whole = all(t.box_shape == g.out_shape for t in plan)
    # Whole-sample tiles write each element of dX once; a sample cut into boxes is summed
    # box by box into a zeroed dX, each box over the part of dX it reads.
    dx = (xp.empty if whole else xp.zeros)((g.batch, g.in_channels) + target, dtype=dy.dtype)
    for tile in plan:
        region = None
        if not whole:
            region = tuple(
                (max(0, s.start - low), min(size, s.stop - low))
                for s, low, size in zip(tile.in_box, lo, target, strict=True)
            )
            if any(a >= b for a, b in region):
                continue
        cols = xp.matmul(wt, _dy_tile(dy, g, tile))  # (G, C_in/G·prod(K), n·P)
        p = math.prod(tile.box_shape)
        launch_col2im(
            cols.reshape(-1), dx, lo, g.kernel, g.stride, g.dilation, tile.n0, tile.n,
            tuple(s.start for s in tile.out_box), tile.box_shape,
            (g.kernel_size * tile.n * p, tile.n * p, p), region, not whole,
        )  # fmt: skip
    return dx


def _depthwise_forward(x: Any, w: Any, g: ConvGeometry, lo: tuple[int, ...]) -> Any:
    xp = get_array_module(x)
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x.dtype)
    n = y.size
    kc.depthwise_forward(
        n, n, _zero(x), x.reshape(-1), w.reshape(-1), y.reshape(-1),
        *_depthwise_args(g, x.shape[2:], lo),
    )  # fmt: skip
    return y


def _depthwise_input_grad(
    dy: Any, w: Any, g: ConvGeometry, lo: tuple[int, ...], target: tuple[int, ...]
) -> Any:
    xp = get_array_module(dy)
    dx = xp.empty((g.batch, g.in_channels) + target, dtype=dy.dtype)
    n = dx.size
    kc.depthwise_input_grad(
        n, n, _zero(dy), dy.reshape(-1), w.reshape(-1), dx.reshape(-1),
        *_depthwise_args(g, target, lo), *_tap_steps(g.stride, g.dilation),
    )  # fmt: skip
    return dx


# Threads that fill an H200 (132 SMs x 2048 resident threads): the depthwise weight
# gradient splits each sample's output rows into shares until it has about this many.
DEPTHWISE_WEIGHT_GRAD_THREADS = 1 << 18


def depthwise_weight_grad_shares(g: ConvGeometry) -> int:
    """Into how many shares of output rows each sample's weight-gradient sums are split
    (a function of the geometry only, so the summation order never changes)."""
    rows = math.prod(g.out_shape[:-1]) if g.ndim > 1 else 1
    per_share = g.batch * g.out_channels * g.kernel_size
    return max(1, min(rows, -(-DEPTHWISE_WEIGHT_GRAD_THREADS // max(per_share, 1))))


def _depthwise_weight_grad(dy: Any, x: Any, g: ConvGeometry, lo: tuple[int, ...]) -> Any:
    xp = get_array_module(x)
    # Partial sums per sample and share of output rows, then a fixed-order sum (xp.sum).
    shares = depthwise_weight_grad_shares(g)
    part = xp.empty((g.batch, shares, g.out_channels, g.kernel_size), dtype=x.dtype)
    n = part.size
    kc.depthwise_weight_grad(
        n, n, _zero(x), dy.reshape(-1), x.reshape(-1), part.reshape(-1),
        *_depthwise_args(g, x.shape[2:], lo), shares,
    )  # fmt: skip
    return part.sum(axis=(0, 1)).reshape((g.out_channels, 1) + g.kernel)


# ---------------------------------------------------------------------------------------
# Entry points (called by foldconv.functional.dispatch for GPU arrays)
# ---------------------------------------------------------------------------------------
def _source(x: Any, g: ConvGeometry, padded: bool) -> tuple[Any, tuple[int, ...]]:
    """The array the kernels read and where its origin sits in the padded coordinates."""
    if padded:
        return x, (0,) * g.ndim
    if g.padding_mode == "zeros":
        return x, _lows(g)  # the kernels read zeros outside x
    return apply_pad(x, g.pads, g.padding_mode), (0,) * g.ndim


def forward(algorithm: str, g: ConvGeometry, x: Any, w: Any, *, padded: bool = False) -> Any:
    """Eq. F without bias.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *S), or (N, C_in, *S_pad) when ``padded``
    w : ndarray, shape (C_out, C_in/G, *K)

    Returns
    -------
    ndarray, shape (N, C_out, *out)
    """
    xp = get_array_module(x, w)
    name = choose("forward", g, x.dtype, algorithm)
    with translate_out_of_memory(_PASS_NAMES["forward"], _shapes("forward", g)):
        if g.batch == 0:
            return xp.zeros((0, g.out_channels) + g.out_shape, dtype=x.dtype)
        src, lo = _source(x, g, padded)
        src, w = _contiguous(src, w)
        if name == "depthwise":
            return _depthwise_forward(src, w, g, lo)
        return _im2col_forward(src, w, g, lo)


def input_grad(algorithm: str, g: ConvGeometry, dy: Any, w: Any, *, padded: bool = False) -> Any:
    """Eq. BX: the gradient of the input, dX (N, C_in, *S), or of the padded input,
    dX_pad (N, C_in, *S_pad), when ``padded``.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, *out)
    w : ndarray, shape (C_out, C_in/G, *K)
    """
    xp = get_array_module(dy, w)
    name = choose("input_grad", g, dy.dtype, algorithm)
    with translate_out_of_memory(_PASS_NAMES["input_grad"], _shapes("input_grad", g)):
        unpadded_zeros = not padded and g.padding_mode == "zeros"
        target = g.in_shape if unpadded_zeros else g.padded_shape
        if g.batch == 0:
            shape = g.in_shape if not padded else g.padded_shape
            return xp.zeros((0, g.in_channels) + shape, dtype=dy.dtype)
        lo = _lows(g) if unpadded_zeros else (0,) * g.ndim
        dy, w = _contiguous(dy, w)
        if name == "depthwise":
            dx = _depthwise_input_grad(dy, w, g, lo, target)
        else:
            dx = _im2col_input_grad(dy, w, g, lo, target)
        if not padded and not unpadded_zeros:
            dx = pad_adjoint(dx, g.in_shape, g.pads, g.padding_mode)
        return dx


def weight_grad(algorithm: str, g: ConvGeometry, dy: Any, x: Any, *, padded: bool = False) -> Any:
    """Eq. BW: dW (C_out, C_in/G, *K), summed over the batch in a fixed order.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, *out)
    x : ndarray, shape (N, C_in, *S), or (N, C_in, *S_pad) when ``padded``
    """
    xp = get_array_module(dy, x)
    name = choose("weight_grad", g, x.dtype, algorithm)
    with translate_out_of_memory(_PASS_NAMES["weight_grad"], _shapes("weight_grad", g)):
        if g.batch == 0:  # a sum over no samples
            shape = (g.out_channels, g.in_channels // g.groups) + g.kernel
            return xp.zeros(shape, dtype=x.dtype)
        src, lo = _source(x, g, padded)
        dy, src = _contiguous(dy, src)
        if name == "depthwise":
            return _depthwise_weight_grad(dy, src, g, lo)
        return _im2col_weight_grad(dy, src, g, lo)


# ---------------------------------------------------------------------------------------
# unfold / fold (foldconv.functional.unfold's public functions)
# ---------------------------------------------------------------------------------------
def unfold(
    x: Any, kernel, dilation, stride, pads, out_shape: tuple[int, ...]
) -> Any:  # fmt: skip
    """PyTorch's unfold layout, (N, C·prod(K), L), of a batched input with zero padding."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    k, p = math.prod(kernel), math.prod(out_shape)
    shapes = {"input": x.shape, "output": (n, c * k, p)}
    with translate_out_of_memory("unfold", shapes):
        cols = xp.empty((n, c * k, p), dtype=x.dtype)
        if n:
            lo = tuple(a for a, _ in pads)
            launch_im2col(
                xp.ascontiguousarray(x), cols.reshape(-1), lo, kernel, stride, dilation,
                0, n, (0,) * len(kernel), out_shape, (k * p, p, c * k * p),
            )  # fmt: skip
        return cols


def fold(cols: Any, size, kernel, dilation, stride, pads, out_shape: tuple[int, ...]) -> Any:
    """PyTorch's fold: (N, C·prod(K), L) summed back into (N, C, *size), as a gather."""
    xp = get_array_module(cols)
    n, rows, p = cols.shape
    k = math.prod(kernel)
    c = rows // k
    shapes = {"input": cols.shape, "output": (n, c) + tuple(size)}
    with translate_out_of_memory("fold", shapes):
        out = xp.empty((n, c) + tuple(size), dtype=cols.dtype)
        if n:
            lo = tuple(a for a, _ in pads)
            launch_col2im(
                xp.ascontiguousarray(cols).reshape(-1), out, lo, kernel, stride, dilation,
                0, n, (0,) * len(kernel), out_shape, (k * p, p, c * k * p),
            )  # fmt: skip
        return out
