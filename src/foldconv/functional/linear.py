"""The affine map and flattening: stateless forward/backward pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional.activation import _as_float_array, _check_dim, _compute_dtype
from foldconv.functional.threads import gemm_ready

__all__ = ["flatten", "flatten_backward", "linear", "linear_backward"]


# y = (W x^T)^T when the rows of x are at most out_features / this (see linear()).
_FEW_ROWS_RATIO = 4


def _check_linear_args(x: Any, weight: Any, bias: Any) -> None:
    if weight.ndim != 2:
        raise ValueError(
            f"weight: expected a 2-d array (out_features, in_features), got shape "
            f"{tuple(weight.shape)}"
        )
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (*, {weight.shape[1]}), got a 0-d array")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x: expected shape (*, {weight.shape[1]}) (in_features = {weight.shape[1]}), "
            f"got {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """y = x W^T + b.

    Parameters
    ----------
    x : ndarray, shape (*, in_features)
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional

    Returns
    -------
    ndarray, shape (*, out_features), dtype of ``x``
        Parameters of another float dtype are cast to that of ``x`` (float16 computes
        in float32).
    """
    x = _as_float_array(x, "x")
    weight = _as_float_array(weight, "weight")
    if bias is not None:
        bias = _as_float_array(bias, "bias")
    _check_linear_args(x, weight, bias)
    gemm_ready(math.prod(x.shape) * weight.shape[0])  # BLAS's threads for this size
    ct = _compute_dtype(x.dtype)
    xc, wc = x.astype(ct, copy=False), weight.astype(ct, copy=False)
    rows, out_features = math.prod(x.shape[:-1]), weight.shape[0]
    if 0 < rows * _FEW_ROWS_RATIO <= out_features:
        # Few rows against a large weight: OpenBLAS runs (W x^T)^T faster than x W^T
        # (AlexNet's fc6 at batch 16: 13.4-14.5 against 19.9-24 ms, two threads;
        # BENCHMARKS.md), and then one small copy makes the result C-contiguous.
        yt = wc @ xc.reshape(rows, xc.shape[-1]).T
        y = get_array_module(yt).ascontiguousarray(yt.T).reshape(x.shape[:-1] + (out_features,))
    else:
        y = xc @ wc.T
    if bias is not None:
        y += bias.astype(ct, copy=False)
    return y.astype(x.dtype, copy=False)


def linear_backward(
    grad_output: Any, x: Any, weight: Any, need_bias_grad: bool = True
) -> tuple[Any, Any, Any]:
    """Gradients of y = x W^T + b.

    dx = dy W,  dW = dy^T x (summed over all leading axes),  db = sum(dy) over leading axes.

    Parameters
    ----------
    grad_output : ndarray, shape (*, out_features)
    x : ndarray, shape (*, in_features), the forward's input
    weight : ndarray, shape (out_features, in_features)
    need_bias_grad : bool
        Whether to compute ``db`` (``None`` is returned otherwise).

    Returns
    -------
    (dx, dweight, dbias)
        Shapes of ``x``, ``weight`` and (out_features,); ``dx`` has the dtype of ``x``,
        ``dweight``/``dbias`` the dtype of ``weight``.
    """
    _check_linear_args(x, weight, None)
    out_features, in_features = weight.shape
    if tuple(grad_output.shape) != tuple(x.shape[:-1]) + (out_features,):
        raise ValueError(
            f"grad_output: expected shape {tuple(x.shape[:-1]) + (out_features,)}, "
            f"got {tuple(grad_output.shape)}"
        )
    ct = _compute_dtype(x.dtype)
    gemm_ready(math.prod(x.shape) * out_features)  # each of the two GEMMs' size
    g = grad_output.astype(ct, copy=False)
    w = weight.astype(ct, copy=False)
    dx = (g @ w).astype(x.dtype, copy=False)
    # Rows counted explicitly: reshape(-1, k) cannot infer them when k or the batch is 0.
    rows = math.prod(x.shape[:-1])
    g2 = g.reshape(rows, out_features)
    x2 = x.astype(ct, copy=False).reshape(rows, in_features)
    dweight = (g2.T @ x2).astype(weight.dtype, copy=False)
    dbias = g2.sum(axis=0).astype(weight.dtype, copy=False) if need_bias_grad else None
    return dx, dweight, dbias


def _flatten_dims(ndim: int, start_dim: int, end_dim: int) -> tuple[int, int]:
    # A 0-d input flattens like a 1-d one, as in PyTorch.
    nd = max(ndim, 1)
    s = _check_dim(start_dim, nd, "start_dim")
    e = _check_dim(end_dim, nd, "end_dim")
    if s > e:
        raise ValueError(
            f"start_dim: expected a dimension not after end_dim ({end_dim}), got {start_dim}"
        )
    return s, e


def flatten(x: Any, start_dim: int = 1, end_dim: int = -1) -> Any:
    """Merge the axes ``start_dim..end_dim`` into one (a view where possible).

    Parameters
    ----------
    x : ndarray, shape (d0, ..., d_{n-1})
    start_dim, end_dim : int

    Returns
    -------
    ndarray, shape (d0, ..., d_{s-1}, d_s * ... * d_e, d_{e+1}, ...)
    """
    if not (hasattr(x, "shape") and hasattr(x, "reshape")):
        x = np.asarray(x)
    s, e = _flatten_dims(x.ndim, start_dim, end_dim)
    if x.ndim == 0:
        return x.reshape(1)
    shape = tuple(x.shape)
    merged = 1
    for d in shape[s : e + 1]:
        merged *= d
    return x.reshape(shape[:s] + (merged,) + shape[e + 1 :])


def flatten_backward(grad_output: Any, input_shape: tuple[int, ...]) -> Any:
    """dx = dy reshaped back to the forward's input shape."""
    input_shape = tuple(int(d) for d in input_shape)
    size = 1
    for d in input_shape:
        size *= d
    if grad_output.size != size:
        raise ValueError(
            f"grad_output: expected {size} elements (input shape {input_shape}), got shape "
            f"{tuple(grad_output.shape)}"
        )
    return grad_output.reshape(input_shape)
