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

from typing import Any

import numpy as np

from foldconv.backend import get_array_module, gpu_path
from foldconv.functional import dispatch
from foldconv.functional._args import (
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
from foldconv.functional.padding import apply_pad

ALGORITHMS = (
    "auto",
    "direct",
    "im2col",
    "winograd",
    "depthwise",
    "direct_compiled",
    "im2col_compiled",
)
BACKWARD_ALGORITHMS = ALGORITHMS + ("full_conv",)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def _check_algorithm(algorithm: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(algorithm, str) or algorithm not in allowed:
        raise ValueError(
            f"algorithm: expected one of {', '.join(map(repr, allowed))}, got {algorithm!r}"
        )
    return algorithm


def _check_output_mask(output_mask: Any) -> tuple[bool, bool, bool]:
    if (
        not isinstance(output_mask, (tuple, list))
        or len(output_mask) != 3
        or not all(isinstance(m, (bool, np.bool_)) for m in output_mask)
    ):
        raise ValueError(
            f"output_mask: expected 3 bools (grad_input, grad_weight, grad_bias), "
            f"got {output_mask!r}"
        )
    return tuple(bool(m) for m in output_mask)


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


def _finish(y: Any, bias: Any, dtype: Any, unbatched: bool) -> Any:
    """Add the bias per output channel (eq. F's + b), cast back to the input's dtype
    (float16 is computed in float32) and drop the batch axis of unbatched input."""
    y = dispatch.add_bias(y, bias).astype(dtype, copy=False)
    return y[0] if unbatched else y


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
    algorithm : {'auto', 'direct', 'im2col', 'winograd', 'depthwise', 'direct_compiled',
        'im2col_compiled'}
        'direct' runs the seed's summation formula (slow; a reference); 'im2col' the
        unfold + GEMM form; 'winograd' F(2x2, 3x3) for 2-d 3x3 stride-1 layers;
        'depthwise' direct per-tap passes for groups == C_in; 'direct_compiled' the
        seed's sums compiled with Numba, for stride-1 layers (fast where channels are
        few); 'im2col_compiled' unfold + GEMM with the unfold and fold compiled (Numba),
        a block of samples at a time (fast for small layers); 'auto' picks (see
        :mod:`foldconv.functional.dispatch`).

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
    xc = xb.astype(cdt, copy=False)
    w = weight.astype(cdt, copy=False)
    b = None if bias is None else bias.astype(cdt, copy=False)
    y = dispatch.forward_unpadded(algorithm, g, xc, w, b)
    return _finish(y, None, xb.dtype, unbatched)


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
    output_mask: Any = (True, True, True),
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_output : ndarray, shape of conv's output
        δ = dL/dY.
    x, weight, stride, padding, dilation, groups, padding_mode
        As given to :func:`conv`.
    algorithm : {'auto', 'direct', 'im2col', 'full_conv', 'winograd', 'depthwise',
        'direct_compiled', 'im2col_compiled'}
        'im2col': dX by col2im of W̃ᵀ·δ (eq. BX); 'full_conv': dX as the full convolution
        of δ with the flipped kernel (eq. BX'); both use eq. BW for dW. 'winograd': dX as
        a Winograd full convolution, dW by eq. BW. 'direct': the seed's sums.
    output_mask : 3 bools
        Which of (grad_input, grad_weight, grad_bias) to compute, as in PyTorch's
        ``aten.convolution_backward``; a gradient not asked for is not computed and comes
        back as None. A network's first layer needs no grad_input (PyTorch skips it there
        because its input does not require grad; for LeNet-5's conv1 it is a 25 x 6 GEMM
        over the whole batch and a col2im).

    Returns
    -------
    grad_input : ndarray, shape of x, or None
    grad_weight : ndarray, shape of weight, or None
    grad_bias : ndarray, shape (C_out,), or None
        Returned (eq. BB) whether or not the forward had a bias.
    """
    algorithm = _check_algorithm(algorithm, BACKWARD_ALGORITHMS)
    want_dx, want_dw, want_db = _check_output_mask(output_mask)
    xb, unbatched, weight, _, grad_output, xp = _prepare(x, weight, grad_output=grad_output)
    g = conv_geometry(xb.shape, weight.shape, stride, padding, dilation, groups, padding_mode)
    dy = _batched_grad(grad_output, unbatched, (g.batch, g.out_channels) + g.out_shape)
    cdt = compute_dtype(xb.dtype)
    xc = xb.astype(cdt, copy=False)
    w = weight.astype(cdt, copy=False)
    dy = dy.astype(cdt, copy=False)
    dtype = xb.dtype
    dx = dw = db = None
    if want_dw:
        dw = dispatch.weight_grad_unpadded(algorithm, g, dy, xc).astype(dtype, copy=False)
    if want_dx:
        dx = dispatch.input_grad_unpadded(algorithm, g, dy, w).astype(dtype, copy=False)
        dx = dx[0] if unbatched else dx
    if want_db:
        db = dy.sum(axis=(0,) + tuple(range(2, 2 + g.ndim))).astype(dtype)
    return dx, dw, db


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
    algorithm : {'auto', 'direct', 'im2col', 'winograd', 'depthwise', 'direct_compiled',
        'im2col_compiled'}

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
    y = dispatch.input_grad_unpadded(algorithm, g, dy, w)
    return _finish(y, bias, xb.dtype, unbatched)


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
    output_mask: Any = (True, True, True),
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv_transpose` with respect to input, weight and bias.

    The transposed convolution is the linear map X -> fold(W̃ᵀ·X); its adjoint in X is
    the convolution (eq. F) of the padded δ, and its weight gradient is eq. BW with δ
    and X exchanged: dW̃ = X · unfold(δ_pad)ᵀ.

    ``output_mask`` as in :func:`conv_backward`: a gradient not asked for is None.

    Returns
    -------
    grad_input : ndarray, shape of x, or None
    grad_weight : ndarray, shape of weight, or None
    grad_bias : ndarray, shape (C_out,), or None
    """
    algorithm = _check_algorithm(algorithm, ALGORITHMS)
    want_dx, want_dw, want_db = _check_output_mask(output_mask)
    xb, unbatched, weight, _, grad_output, xp = _prepare(x, weight, grad_output=grad_output)
    g = conv_transpose_geometry(
        xb.shape, weight.shape, stride, padding, output_padding, groups, dilation
    )
    dy = _batched_grad(grad_output, unbatched, (g.batch, g.in_channels) + g.in_shape)
    cdt = compute_dtype(xb.dtype)
    xc = xb.astype(cdt, copy=False)
    w = weight.astype(cdt, copy=False)
    dx = dw = db = None
    if gpu_path(xp):
        # The GPU kernels read the zero padding themselves: no padded copy of δ.
        dyc = dy.astype(cdt, copy=False)
        if want_dx:
            dx = dispatch.forward_unpadded(algorithm, g, dyc, w)
        if want_dw:
            dw = dispatch.weight_grad_unpadded(algorithm, g, xc, dyc)
    elif want_dx or want_dw:
        dy_pad = apply_pad(dy.astype(cdt, copy=False), g.pads, "zeros")
        if want_dx:
            dx = dispatch.run("forward", algorithm, g, dy_pad, w)
        if want_dw:
            dw = dispatch.run("weight_grad", algorithm, g, xc, dy_pad)
    dtype = xb.dtype
    if want_db:
        db = dy.astype(cdt, copy=False).sum(axis=(0,) + tuple(range(2, 2 + g.ndim)))
        db = db.astype(dtype)
    if dx is not None:
        dx = dx.astype(dtype, copy=False)
        dx = dx[0] if unbatched else dx
    if dw is not None:
        dw = dw.astype(dtype, copy=False)
    return dx, dw, db


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
