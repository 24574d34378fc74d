"""N-d convolution and transposed convolution: forward and hand-derived backward.

Notation (the seed, ``shared/seed/convolution.md``, generalised to N-d, stride,
dilation, padding and groups): X_pad is the padded input, W̃ the weight reshaped
to (C_out, C_in/G·prod(K)) per group, X̃ = unfold(X_pad) of shape
(C_in/G·prod(K), N·prod(out)) per group, δ = dL/dY.

    forward          Y  = W̃ · X̃ + b                       (eq. F)
    weight gradient  dW̃ = δ · X̃ᵀ                          (eq. BW)
    bias gradient    db = Σ_{n, o} δ                       (eq. BB)
    input gradient   dX_pad = fold(W̃ᵀ · δ)                 (eq. BX, col2im form)
                     = full convolution of δ (dilated by the stride) with the
                       flipped kernel, channels swapped per group    (eq. BX')

followed by the adjoint of the padding (a crop for zeros, a scatter back along the
index map for reflect / replicate / circular). The transposed convolution's forward
*is* eq. BX, and its backward is eq. F (input gradient) and eq. BW (weight gradient)
with the roles of input and output exchanged.
"""

from __future__ import annotations

import math
from typing import Any

from foldconv.backend import get_array_module
from foldconv.functional._args import (
    ConvGeometry,
    as_float_array,
    check_bias,
    check_grad_output,
    check_same_dtype,
    check_weight_rank,
    compute_dtype,
    conv_geometry,
    conv_transpose_geometry,
    split_batch,
)
from foldconv.functional.direct import conv_backward_direct, conv_forward_direct
from foldconv.functional.padding import apply_pad, pad_adjoint
from foldconv.functional.unfold import col2im_add, im2col_into, plan_tiles

ALGORITHMS = ("auto", "direct", "im2col")
BACKWARD_ALGORITHMS = ("auto", "direct", "im2col", "full_conv")


# ---------------------------------------------------------------------------------------
# The im2col kernels (eqs. F, BW, BX), tiled so that scratch memory stays bounded.
# Column buffers are laid out (C_in, *K, n, *box): per group a (C_in/G·prod(K), n·P)
# matrix, so each pass is one GEMM per group with no transposes of the big operand.
# ---------------------------------------------------------------------------------------
def _grouped(w: Any, g: ConvGeometry) -> Any:
    """W̃ per group: (C_out, C_in/G, *K) -> (G, C_out/G, C_in/G·prod(K))."""
    return w.reshape(g.groups, g.out_channels // g.groups, -1)


def _cols_view(buf: Any, g: ConvGeometry, n: int, box_shape) -> tuple[Any, Any]:
    """A buffer slice as the GEMM operand (G, C_in/G·prod(K), n·P) and as the
    (n, C_in, *K, *box) view that im2col/col2im index."""
    nd = g.ndim
    shape = (g.in_channels,) + g.kernel + (n,) + tuple(box_shape)
    arr = buf[: math.prod(shape)].reshape(shape)
    perm = (nd + 1, 0) + tuple(range(1, nd + 1)) + tuple(range(nd + 2, 2 * nd + 2))
    gemm = arr.reshape(g.groups, (g.in_channels // g.groups) * g.kernel_size, -1)
    return gemm, arr.transpose(perm)


def _dy_tile(dy: Any, g: ConvGeometry, tile) -> Any:
    """δ of a tile as (G, C_out/G, n·P): channels first, then samples and positions."""
    xp = get_array_module(dy)
    block = dy[(slice(tile.n0, tile.n1), slice(None)) + tile.out_box]
    moved = xp.ascontiguousarray(xp.moveaxis(block, 1, 0))
    return moved.reshape(g.groups, g.out_channels // g.groups, -1)


def _bytes_per_position(g: ConvGeometry, itemsize: int, buffers: int) -> int:
    return buffers * g.in_channels * g.kernel_size * itemsize


def _scratch(xp, g: ConvGeometry, tiles, dtype) -> Any:
    largest = max((t.positions for t in tiles), default=0)
    return xp.empty(largest * g.in_channels * g.kernel_size, dtype=dtype)


def conv_forward_im2col(x_pad: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. F without bias: Y = W̃ · unfold(X_pad), tile by tile.

    Parameters
    ----------
    x_pad : ndarray, shape (N, C_in, *S_pad)
    w : ndarray, shape (C_out, C_in/G, *K)

    Returns
    -------
    ndarray, shape (N, C_out, *out)
    """
    xp = get_array_module(x_pad)
    tiles = list(
        plan_tiles(
            g.batch,
            g.out_shape,
            g.kernel,
            g.stride,
            g.dilation,
            _bytes_per_position(g, x_pad.dtype.itemsize, 1),
        )
    )
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x_pad.dtype)
    if not tiles:
        return y
    wg = _grouped(w, g)
    buf = _scratch(xp, g, tiles, x_pad.dtype)
    for tile in tiles:
        cols, view = _cols_view(buf, g, tile.n, tile.box_shape)
        im2col_into(
            x_pad[(slice(tile.n0, tile.n1), slice(None)) + tile.in_box],
            view,
            g.kernel,
            g.stride,
            g.dilation,
        )
        out = xp.matmul(wg, cols)  # (G, C_out/G, n·P)
        out = out.reshape((g.out_channels, tile.n) + tile.box_shape)
        y[(slice(tile.n0, tile.n1), slice(None)) + tile.out_box] = xp.moveaxis(out, 0, 1)
    return y


def conv_weight_grad_im2col(dy: Any, x_pad: Any, g: ConvGeometry) -> Any:
    """Eq. BW: dW̃ = δ · X̃ᵀ, accumulated over tiles.

    Returns
    -------
    ndarray, shape (C_out, C_in/G, *K)
    """
    xp = get_array_module(x_pad)
    tiles = list(
        plan_tiles(
            g.batch,
            g.out_shape,
            g.kernel,
            g.stride,
            g.dilation,
            _bytes_per_position(g, x_pad.dtype.itemsize, 1),
        )
    )
    cig = g.in_channels // g.groups
    dw = xp.zeros((g.groups, g.out_channels // g.groups, cig * g.kernel_size), dtype=x_pad.dtype)
    if tiles:
        buf = _scratch(xp, g, tiles, x_pad.dtype)
        for tile in tiles:
            cols, view = _cols_view(buf, g, tile.n, tile.box_shape)
            im2col_into(
                x_pad[(slice(tile.n0, tile.n1), slice(None)) + tile.in_box],
                view,
                g.kernel,
                g.stride,
                g.dilation,
            )
            dw += xp.matmul(_dy_tile(dy, g, tile), cols.transpose(0, 2, 1))
    return dw.reshape((g.out_channels, cig) + g.kernel)


def conv_input_grad_col2im(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. BX: dX_pad = fold(W̃ᵀ · δ), one strided add per kernel tap.

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    tiles = list(
        plan_tiles(
            g.batch,
            g.out_shape,
            g.kernel,
            g.stride,
            g.dilation,
            _bytes_per_position(g, dy.dtype.itemsize, 1),
        )
    )
    dx_pad = xp.zeros((g.batch, g.in_channels) + g.padded_shape, dtype=dy.dtype)
    if not tiles:
        return dx_pad
    wg_t = _grouped(w, g).transpose(0, 2, 1)  # W̃ᵀ per group: (G, C_in/G·prod(K), C_out/G)
    buf = _scratch(xp, g, tiles, dy.dtype)
    for tile in tiles:
        cols, view = _cols_view(buf, g, tile.n, tile.box_shape)
        xp.matmul(wg_t, _dy_tile(dy, g, tile), out=cols)
        col2im_add(
            view,
            dx_pad[(slice(tile.n0, tile.n1), slice(None)) + tile.in_box],
            g.kernel,
            g.stride,
            g.dilation,
        )
    return dx_pad


def conv_input_grad_full_conv(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. BX': the input gradient as a full convolution of δ with the flipped kernel.

    dX_pad[k, p] = sum_{c, t} δ_s[c, p - t·dilation] · W[c, k, t], where δ_s is δ with
    stride-1 zeros between its entries. Padding δ_s by dilation·(K-1) on the low side
    (and up to the padded input's size on the high side) turns this into a stride-1
    convolution with W_flip[k, c, t] = W[c, k, K-1-t], groups kept.

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    nd, G = g.ndim, g.groups
    cog, cig = g.out_channels // G, g.in_channels // G
    spread_shape = tuple((o - 1) * s + 1 for o, s in zip(g.out_shape, g.stride, strict=True))
    lows = tuple(d * (k - 1) for d, k in zip(g.dilation, g.kernel, strict=True))
    highs = tuple(
        p - (o - 1) * s - 1 for p, o, s in zip(g.padded_shape, g.out_shape, g.stride, strict=True)
    )
    full_shape = tuple(lo + sp + hi for lo, sp, hi in zip(lows, spread_shape, highs, strict=True))
    dy_full = xp.zeros((g.batch, g.out_channels) + full_shape, dtype=dy.dtype)
    dst = tuple(
        slice(lo, lo + sp, s) for lo, sp, s in zip(lows, spread_shape, g.stride, strict=True)
    )
    dy_full[(slice(None), slice(None)) + dst] = dy
    w_flip = w.reshape((G, cog, cig) + g.kernel).swapaxes(1, 2)
    w_flip = w_flip[(slice(None),) * 3 + (slice(None, None, -1),) * nd]
    w_flip = xp.ascontiguousarray(w_flip).reshape((g.in_channels, cog) + g.kernel)
    full = ConvGeometry(
        batch=g.batch,
        in_channels=g.out_channels,
        out_channels=g.in_channels,
        groups=G,
        in_shape=full_shape,
        kernel=g.kernel,
        stride=(1,) * nd,
        dilation=g.dilation,
        pads=((0, 0),) * nd,
        out_shape=g.padded_shape,
    )
    return conv_forward_im2col(dy_full, w_flip, full)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def _check_algorithm(algorithm: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(algorithm, str) or algorithm not in allowed:
        raise ValueError(
            f"algorithm: expected one of {', '.join(map(repr, allowed))}, got {algorithm!r}"
        )
    return algorithm


def _prepare(x: Any, weight: Any, bias: Any = None, grad_output: Any = None):
    """Validate arrays; returns (x batched, unbatched?, weight, bias, ndim, xp)."""
    x = as_float_array(x, "x")
    weight = as_float_array(weight, "weight")
    if bias is not None:
        bias = as_float_array(bias, "bias")
    if grad_output is not None:
        grad_output = as_float_array(grad_output, "grad_output")
    xp = get_array_module(x, weight, bias, grad_output)
    check_same_dtype("x", x, weight=weight, bias=bias, grad_output=grad_output)
    ndim = check_weight_rank(weight)
    xb, unbatched = split_batch(x, ndim)
    return xb, unbatched, weight, bias, grad_output, xp


def _bias_shape(ndim: int) -> tuple[int, ...]:
    return (1, -1) + (1,) * ndim


def _batched_grad(grad_output: Any, unbatched: bool, expected: tuple[int, ...]) -> Any:
    shown = expected[1:] if unbatched else expected
    check_grad_output(grad_output, shown)
    return grad_output[None] if unbatched else grad_output


def conv(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    algorithm: str = "auto",
) -> Any:
    """N-d convolution (cross-correlation, as in every CNN library), eq. F.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *S) or (C_in, *S)
        Spatial rank len(S) = weight.ndim - 2 (1, 2 or 3).
    weight : ndarray, shape (C_out, C_in/groups, *K)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or tuple of int
    padding : int, tuple of int, tuple of (low, high) pairs, 'valid' or 'same'
        'same' follows TensorFlow's rule at any stride: out = ceil(S / stride), the total
        padding max((out-1)·stride + dilation·(K-1) + 1 - S, 0) split low = total // 2.
    groups : int
        Input and output channels are split into this many independent groups
        (groups == C_in: depthwise).
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}
    algorithm : {'auto', 'direct', 'im2col'}
        'direct' runs the seed's summation formula (slow; a reference); 'im2col' the
        unfold + GEMM form; 'auto' picks.

    Returns
    -------
    ndarray, shape (N, C_out, *out) or (C_out, *out), the dtype of x
        out = (S + low + high - dilation·(K-1) - 1) // stride + 1.
    """
    algorithm = _check_algorithm(algorithm, ALGORITHMS)
    xb, unbatched, weight, bias, _, xp = _prepare(x, weight, bias)
    g = conv_geometry(xb.shape, weight.shape, stride, padding, dilation, groups, padding_mode)
    check_bias(bias, g.out_channels)
    cdt = compute_dtype(xb.dtype)
    x_pad = apply_pad(xb.astype(cdt, copy=False), g.pads, g.padding_mode)
    w = weight.astype(cdt, copy=False)
    if algorithm == "direct":
        y = conv_forward_direct(x_pad, w, g)
    else:
        y = conv_forward_im2col(x_pad, w, g)
    if bias is not None:
        y += bias.astype(cdt, copy=False).reshape(_bias_shape(g.ndim))
    y = y.astype(xb.dtype, copy=False)
    return y[0] if unbatched else y


def conv_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    algorithm: str = "auto",
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : ndarray, shape of conv's output
        δ = dL/dY.
    x, weight, stride, padding, dilation, groups, padding_mode
        As given to :func:`conv`.
    algorithm : {'auto', 'direct', 'im2col', 'full_conv'}
        'im2col': dX by col2im of W̃ᵀ·δ (eq. BX); 'full_conv': dX as the full convolution
        of δ with the flipped kernel (eq. BX'); both use eq. BW for dW. 'direct': the
        seed's sums.

    Returns
    -------
    grad_input : ndarray, shape of x
    grad_weight : ndarray, shape of weight
    grad_bias : ndarray, shape (C_out,)
        Always returned (eq. BB), whether or not the forward had a bias.
    """
    algorithm = _check_algorithm(algorithm, BACKWARD_ALGORITHMS)
    xb, unbatched, weight, _, grad_output, xp = _prepare(x, weight, grad_output=grad_output)
    g = conv_geometry(xb.shape, weight.shape, stride, padding, dilation, groups, padding_mode)
    dy = _batched_grad(grad_output, unbatched, (g.batch, g.out_channels) + g.out_shape)
    cdt = compute_dtype(xb.dtype)
    x_pad = apply_pad(xb.astype(cdt, copy=False), g.pads, g.padding_mode)
    w = weight.astype(cdt, copy=False)
    dy = dy.astype(cdt, copy=False)
    if algorithm == "direct":
        dx_pad, dw = conv_backward_direct(dy, x_pad, w, g)
    else:
        dw = conv_weight_grad_im2col(dy, x_pad, g)
        if algorithm == "full_conv":
            dx_pad = conv_input_grad_full_conv(dy, w, g)
        else:
            dx_pad = conv_input_grad_col2im(dy, w, g)
    dx = pad_adjoint(dx_pad, g.in_shape, g.pads, g.padding_mode)
    db = dy.sum(axis=(0,) + tuple(range(2, 2 + g.ndim)))
    dtype = xb.dtype
    dx = dx.astype(dtype, copy=False)
    return (dx[0] if unbatched else dx), dw.astype(dtype, copy=False), db.astype(dtype)


def conv_transpose(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    algorithm: str = "auto",
) -> Any:
    """N-d transposed convolution (PyTorch's conv_transposeNd): eq. BX applied to x.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *S) or (C_in, *S)
    weight : ndarray, shape (C_in, C_out/groups, *K)
    bias : ndarray, shape (C_out,), optional
    stride, dilation, output_padding : int or tuple of int
        output_padding (< stride or < dilation) adds rows at the high end, to pick
        one of the input sizes a strided convolution maps to the same output size.
    padding : int, tuple of int or tuple of (low, high) pairs
        Removed from the output: the padding of the convolution this is the transpose of.
    groups : int
    algorithm : {'auto', 'direct', 'im2col'}

    Returns
    -------
    ndarray, shape (N, C_out, *out) or (C_out, *out)
        out = (S - 1)·stride - (low + high) + dilation·(K - 1) + output_padding + 1.
    """
    algorithm = _check_algorithm(algorithm, ALGORITHMS)
    xb, unbatched, weight, bias, _, xp = _prepare(x, weight, bias)
    g = conv_transpose_geometry(
        xb.shape, weight.shape, stride, padding, output_padding, groups, dilation
    )
    check_bias(bias, g.in_channels)
    cdt = compute_dtype(xb.dtype)
    dy = xb.astype(cdt, copy=False)
    w = weight.astype(cdt, copy=False)
    if algorithm == "direct":
        zeros = xp.zeros((g.batch, g.in_channels) + g.padded_shape, dtype=cdt)
        y_pad, _ = conv_backward_direct(dy, zeros, w, g)
    else:
        y_pad = conv_input_grad_col2im(dy, w, g)
    y = pad_adjoint(y_pad, g.in_shape, g.pads, "zeros")
    if bias is not None:
        y += bias.astype(cdt, copy=False).reshape(_bias_shape(g.ndim))
    y = y.astype(xb.dtype, copy=False)
    return y[0] if unbatched else y


def conv_transpose_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    algorithm: str = "auto",
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv_transpose` with respect to input, weight and bias.

    The transposed convolution is the linear map X -> fold(W̃ᵀ·X); its adjoint in X is
    the convolution (eq. F) of the padded δ, and its weight gradient is eq. BW with δ
    and X exchanged: dW̃ = X · unfold(δ_pad)ᵀ.

    Returns
    -------
    grad_input : ndarray, shape of x
    grad_weight : ndarray, shape of weight
    grad_bias : ndarray, shape (C_out,)
    """
    algorithm = _check_algorithm(algorithm, ALGORITHMS)
    xb, unbatched, weight, _, grad_output, xp = _prepare(x, weight, grad_output=grad_output)
    g = conv_transpose_geometry(
        xb.shape, weight.shape, stride, padding, output_padding, groups, dilation
    )
    dy = _batched_grad(grad_output, unbatched, (g.batch, g.in_channels) + g.in_shape)
    cdt = compute_dtype(xb.dtype)
    dy_pad = apply_pad(dy.astype(cdt, copy=False), g.pads, "zeros")
    xc = xb.astype(cdt, copy=False)
    w = weight.astype(cdt, copy=False)
    if algorithm == "direct":
        dx = conv_forward_direct(dy_pad, w, g)
        _, dw = conv_backward_direct(xc, dy_pad, w, g)
    else:
        dx = conv_forward_im2col(dy_pad, w, g)
        dw = conv_weight_grad_im2col(xc, dy_pad, g)
    db = dy.astype(cdt, copy=False).sum(axis=(0,) + tuple(range(2, 2 + g.ndim)))
    dtype = xb.dtype
    dx = dx.astype(dtype, copy=False)
    return (dx[0] if unbatched else dx), dw.astype(dtype, copy=False), db.astype(dtype)


def _ranked(name: str, ndim: int):
    def fn(
        x,
        weight,
        bias=None,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        padding_mode="zeros",
        *,
        algorithm="auto",
    ):
        w = as_float_array(weight, "weight")
        if w.ndim != ndim + 2:
            raise ValueError(
                f"weight: {name} expects a {ndim + 2}-d weight (C_out, C_in/groups, "
                f"{'kernel' if ndim == 1 else f'{ndim} kernel sizes'}), got shape {tuple(w.shape)}"
            )
        return conv(
            x, w, bias, stride, padding, dilation, groups, padding_mode, algorithm=algorithm
        )

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{ndim}-d :func:`conv`; checks that weight is {ndim + 2}-d."
    return fn


conv1d = _ranked("conv1d", 1)
conv2d = _ranked("conv2d", 2)
conv3d = _ranked("conv3d", 3)
