"""Batch and group normalisation: stateless forward/backward pairs (PyTorch's semantics).

Local response normalisation lives in :mod:`foldconv.functional.lrn`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional._args import _as_int
from foldconv.functional.activation import _as_float_array, _compute_dtype

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
]


def _channel_shape(x: Any) -> tuple[int, ...]:
    """Shape that broadcasts a (C,) vector over x of shape (N, C, *)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x: Any) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _values_per_channel(shape: tuple[int, ...]) -> int:
    """N * prod(spatial); PyTorch refuses exactly 1 in training (an empty batch is fine)."""
    n = shape[0]
    for s in shape[2:]:
        n *= s
    if n == 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training, got shape {tuple(shape)}"
        )
    return n


def _check_eps(eps: Any, training: bool) -> float:
    """PyTorch: eps > 0 with batch statistics (a constant channel would divide by 0), else >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps: expected a float, got {type(eps).__name__} {eps!r}")
    if training and not eps > 0:
        raise ValueError(
            f"eps: expected a positive float when training (batch statistics), got {eps}"
        )
    if not eps >= 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps}")
    return float(eps)


def _check_vector(v: Any, name: str, c: int) -> Any:
    if v is None:
        return None
    v = _as_float_array(v, name)
    if tuple(v.shape) != (c,):
        raise ValueError(f"{name}: expected shape ({c},) (one per channel), got {tuple(v.shape)}")
    return v


def batch_norm_forward(
    x: Any,
    running_mean: Any = None,
    running_var: Any = None,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, Any, Any]:
    """Batch normalisation returning the statistics its backward needs.

    y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1).

    In training the mean and the biased variance come from the batch (over every axis
    but 1) and, when given, ``running_mean``/``running_var`` are updated *in place*:
    running = (1 - momentum) * running + momentum * stat, with the unbiased variance
    var * n / (n - 1) (n values per channel), as PyTorch does. Otherwise the running
    statistics are used.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *)
    running_mean, running_var : ndarray, shape (C,), optional in training
    weight, bias : ndarray, shape (C,), optional (1 and 0 when absent)
    training : bool
    momentum : float
    eps : float

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean : ndarray, shape (C,)
        The mean used (the batch's or the running one).
    invstd : ndarray, shape (C,)
        1 / sqrt(var + eps) for the variance used.

    Raises
    ------
    ValueError
        For an input of rank < 2, parameter shapes other than (C,), missing running
        statistics outside training, a single value per channel in training, or
        ``eps <= 0`` in training (``eps < 0`` otherwise), as PyTorch.

    Notes
    -----
    An empty input (a batch of 0, or an empty spatial dimension) gives an empty output
    and leaves the running statistics unchanged, as in PyTorch.
    """
    y, mean, invstd, _ = _batch_norm_impl(
        x, running_mean, running_var, weight, bias, training, momentum, eps
    )
    return y, mean, invstd


def _batch_norm_impl(
    x: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any,
    bias: Any,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Any, Any, Any, Any]:
    """The forward, also returning x_hat = (x - mean) * invstd (compute dtype) for layers."""
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (N, C) or (N, C, *), got {tuple(x.shape)}")
    c = x.shape[1]
    running_mean = _check_vector(running_mean, "running_mean", c)
    running_var = _check_vector(running_var, "running_var", c)
    weight = _check_vector(weight, "weight", c)
    bias = _check_vector(bias, "bias", c)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_var: expected running_mean and running_var both given or both None, "
            f"got running_mean={'None' if running_mean is None else 'array'}, "
            f"running_var={'None' if running_var is None else 'array'}"
        )
    if not training and running_mean is None:
        raise ValueError("running_mean: expected an array when training=False, got None")
    _check_eps(eps, training)

    xp = get_array_module(x)
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    cs = _channel_shape(x)
    n = _values_per_channel(x.shape) if training else 0
    if training and x.size == 0:
        # PyTorch: an empty batch gives an empty output and leaves the running statistics
        # alone (no statistics of nothing); the mean and invstd returned are placeholders.
        mean = xp.zeros(c, dtype=ct)
        var = xp.ones(c, dtype=ct)
        centered = xc - mean.reshape(cs)
    elif training:
        axes = _reduce_axes(x)
        mean = xp.mean(xc, axis=axes)
        centered = xc - mean.reshape(cs)
        var = xp.mean(centered * centered, axis=axes)
        if running_mean is not None:
            m = float(momentum)
            running_mean *= 1 - m
            running_mean += (m * mean).astype(running_mean.dtype, copy=False)
            running_var *= 1 - m
            running_var += (m * var * (n / (n - 1))).astype(running_var.dtype, copy=False)
    else:
        # Copies: the running buffers change in place at the next training step.
        mean = running_mean.astype(ct, copy=True)
        var = running_var.astype(ct, copy=True)
        centered = xc - mean.reshape(cs)
    invstd = 1 / xp.sqrt(var + ct.type(eps))
    centered *= invstd.reshape(cs)  # centered is a fresh array: now x_hat
    xhat = centered
    if weight is None and bias is None:
        y = xhat.copy()
    elif weight is None:
        y = xhat + bias.astype(ct, copy=False).reshape(cs)
    else:
        y = xhat * weight.astype(ct, copy=False).reshape(cs)
        if bias is not None:
            y += bias.astype(ct, copy=False).reshape(cs)
    return y.astype(x.dtype, copy=False), mean, invstd, xhat


def batch_norm(
    x: Any,
    running_mean: Any = None,
    running_var: Any = None,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Any:
    """Batch normalisation (as ``torch.nn.functional.batch_norm``); returns y only.

    See :func:`batch_norm_forward` for the parameters; use that function when the
    backward pass is needed.
    """
    return batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps)[
        0
    ]


def _batch_norm_backward_xhat(
    grad_output: Any, xhat: Any, invstd: Any, weight: Any, training: bool
) -> tuple[Any, Any, Any]:
    """The backward from the normalised input x_hat = (x - mean) * invstd (compute dtype).

    dbias = sum dy,  dweight = sum dy * x_hat  (sums over every axis but 1);
    training: dx = (1/n) * weight * invstd * (n * dy - sum dy - x_hat * sum(dy * x_hat)),
    since mean and var depend on x; otherwise: dx = dy * weight * invstd.
    """
    xp = get_array_module(xhat)
    cs = _channel_shape(xhat)
    axes = _reduce_axes(xhat)
    g = grad_output.astype(xhat.dtype, copy=False)
    scale = invstd if weight is None else invstd * weight.astype(xhat.dtype, copy=False)
    dbias = xp.sum(g, axis=axes)
    dweight = xp.sum(g * xhat, axis=axes)
    if training and xhat.size == 0:
        dx = xp.zeros(xhat.shape, dtype=xhat.dtype)
    elif training:
        n = xhat.size // xhat.shape[1]
        dx = (scale / n).reshape(cs) * (n * g - dbias.reshape(cs) - xhat * dweight.reshape(cs))
    else:
        dx = g * scale.reshape(cs)
    return dx, dweight, dbias


def batch_norm_backward(
    grad_output: Any,
    x: Any,
    mean: Any,
    invstd: Any,
    weight: Any = None,
    training: bool = True,
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`batch_norm_forward`.

    With x_hat = (x - mean) * invstd and n values per channel:
    dx = (1/n) * weight * invstd * (n * dy - sum dy - x_hat * sum(dy * x_hat)) in training
    (batch statistics), dx = dy * weight * invstd otherwise; dweight = sum dy * x_hat,
    dbias = sum dy.

    Parameters
    ----------
    grad_output : ndarray, shape of ``x``
    x : ndarray, shape (N, C, *), the forward's input
    mean, invstd : ndarray, shape (C,), as returned by :func:`batch_norm_forward`
    weight : ndarray, shape (C,), optional
    training : bool
        Whether the forward used batch statistics.

    Returns
    -------
    (dx, dweight, dbias)
        ``dx`` with the shape and dtype of ``x``; ``dweight`` and ``dbias`` of shape (C,)
        (``None`` when ``weight`` is None; the dtype of ``weight`` otherwise).
    """
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (N, C) or (N, C, *), got {tuple(x.shape)}")
    if tuple(grad_output.shape) != tuple(x.shape):
        raise ValueError(
            f"grad_output: expected shape {tuple(x.shape)}, got {tuple(grad_output.shape)}"
        )
    c = x.shape[1]
    _check_vector(mean, "mean", c)
    _check_vector(invstd, "invstd", c)
    _check_vector(weight, "weight", c)
    ct = _compute_dtype(x.dtype)
    cs = _channel_shape(x)
    xhat = (x.astype(ct, copy=False) - mean.astype(ct, copy=False).reshape(cs)) * invstd.astype(
        ct, copy=False
    ).reshape(cs)
    dx, dweight, dbias = _batch_norm_backward_xhat(
        grad_output, xhat, invstd.astype(ct, copy=False), weight, training
    )
    dx = dx.astype(x.dtype, copy=False)
    if weight is None:
        return dx, None, None
    return dx, dweight.astype(weight.dtype, copy=False), dbias.astype(weight.dtype, copy=False)


# -- group normalisation ---------------------------------------------------------------------
def _group_setup(x: Any, num_groups: Any, weight: Any, bias: Any) -> tuple[Any, int, Any, Any]:
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (N, C) or (N, C, *), got {tuple(x.shape)}")
    g = _as_int(num_groups, "num_groups")
    c = x.shape[1]
    if g < 1 or c % g:
        raise ValueError(
            f"num_groups: expected a positive int dividing the {c} channels of x, got {g}"
        )
    # PyTorch's check: N * C / G * prod(spatial) must not be exactly 1
    _values_per_channel((x.shape[0] * c // g, g) + tuple(x.shape[2:]))
    return x, g, _check_vector(weight, "weight", c), _check_vector(bias, "bias", c)


def _grouped(a: Any, g: int) -> Any:
    """(N, C, *S) -> (N, G, C/G * prod(S)): one row per (sample, group)."""
    m = a.shape[1] // g
    for s in a.shape[2:]:
        m *= s
    return a.reshape(a.shape[0], g, m)


def group_norm_forward(
    x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """Group normalisation returning the statistics its backward needs.

    The C channels are split into ``num_groups`` groups of C/G consecutive channels;
    each (sample, group) is normalised by its own mean and biased variance over its
    m = C/G * prod(S) values, then scaled and shifted per channel::

        y[n, c] = (x[n, c] - mean[n, g(c)]) * invstd[n, g(c)] * weight[c] + bias[c]
        invstd = 1 / sqrt(var + eps)

    There are no running statistics: training and eval compute the same thing.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *S)
        float16/32/64. N, C and S may be 0 (an empty output), as in PyTorch.
    num_groups : int
        G, a positive divisor of C.
    weight, bias : ndarray, shape (C,), optional (1 and 0 when absent)
    eps : float

    Returns
    -------
    y : ndarray, shape and dtype of x
    mean, invstd : ndarray, shape (N, G)
        In the compute dtype (float32 for float16 input).

    Raises
    ------
    ValueError
        For rank < 2, G not dividing C, parameter shapes other than (C,), or, as
        PyTorch, N * C / G * prod(S) == 1.
    """
    x, g, weight, bias = _group_setup(x, num_groups, weight, bias)
    y, mean, invstd, _ = _group_norm_impl(x, g, weight, bias, eps)
    return y, mean, invstd


def _group_norm_impl(x, g, weight, bias, eps):
    """The forward, also returning x_hat (compute dtype, shape of x) for layers."""
    xp = get_array_module(x)
    ct = _compute_dtype(x.dtype)
    xg = _grouped(x.astype(ct, copy=False), g)
    cs = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if xg.shape[2] == 0:  # empty groups: no statistics; placeholders for an empty output
        mean = xp.zeros(xg.shape[:2], dtype=ct)
        var = xp.ones(xg.shape[:2], dtype=ct)
    else:
        mean = xp.mean(xg, axis=2)
        var = xp.mean((xg - mean[..., None]) ** 2, axis=2)
    invstd = 1 / xp.sqrt(var + ct.type(eps))
    xhat = ((xg - mean[..., None]) * invstd[..., None]).reshape(x.shape)
    y = xhat if weight is None else xhat * weight.astype(ct, copy=False).reshape(cs)
    if bias is not None:
        y = y + bias.astype(ct, copy=False).reshape(cs)
    return y.astype(x.dtype, copy=True), mean, invstd, xhat


def group_norm(
    x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> Any:
    """Group normalisation (as ``torch.nn.functional.group_norm``); returns y only.

    See :func:`group_norm_forward` for the parameters; use that function when the
    backward pass is needed.
    """
    return group_norm_forward(x, num_groups, weight, bias, eps)[0]


def _group_norm_backward_xhat(grad_output, xhat, invstd, g, weight):
    """The backward from x_hat (compute dtype, shape of x) and invstd (N, G).

    Per (sample, group) of m values, with dxhat = dy * weight[c]:
    dx = invstd / m * (m dxhat - sum dxhat - x_hat * sum(dxhat * x_hat));
    dweight[c] = sum over n and S of dy * x_hat, dbias[c] = sum of dy.
    """
    xp = get_array_module(xhat)
    ct = xhat.dtype
    cs = (1, xhat.shape[1]) + (1,) * (xhat.ndim - 2)
    axes = (0,) + tuple(range(2, xhat.ndim))
    dy = grad_output.astype(ct, copy=False)
    dweight = xp.sum(dy * xhat, axis=axes)
    dbias = xp.sum(dy, axis=axes)
    dxhat = dy if weight is None else dy * weight.astype(ct, copy=False).reshape(cs)
    dxg, xg = _grouped(dxhat, g), _grouped(xhat, g)
    m = dxg.shape[2]
    if m == 0 or dxg.size == 0:
        return xp.zeros(xhat.shape, dtype=ct), dweight, dbias
    s1 = xp.sum(dxg, axis=2, keepdims=True)
    s2 = xp.sum(dxg * xg, axis=2, keepdims=True)
    dx = (invstd[..., None] / m) * (m * dxg - s1 - xg * s2)
    return dx.reshape(xhat.shape), dweight, dbias


def group_norm_backward(
    grad_output: Any,
    x: Any,
    mean: Any,
    invstd: Any,
    num_groups: int,
    weight: Any = None,
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`group_norm_forward`.

    With x_hat = (x - mean) * invstd per (sample, group) of m = C/G * prod(S) values and
    dxhat = dy * weight[c]::

        dx = invstd / m * (m dxhat - sum_group dxhat - x_hat * sum_group(dxhat * x_hat))
        dweight[c] = sum_{n, S} dy * x_hat,    dbias[c] = sum_{n, S} dy

    Parameters
    ----------
    grad_output : ndarray, shape of x
    x : ndarray, shape (N, C, *S), the forward's input
    mean, invstd : ndarray, shape (N, G), as returned by :func:`group_norm_forward`
    num_groups : int
    weight : ndarray, shape (C,), optional

    Returns
    -------
    (dx, dweight, dbias)
        ``dx`` with the shape and dtype of x; ``dweight`` and ``dbias`` of shape (C,)
        in weight's dtype (None when ``weight`` is None).
    """
    x, g, weight, _ = _group_setup(x, num_groups, weight, None)
    grad_output = _as_float_array(grad_output, "grad_output")
    if tuple(grad_output.shape) != tuple(x.shape):
        raise ValueError(
            f"grad_output: expected shape {tuple(x.shape)}, got {tuple(grad_output.shape)}"
        )
    expected = (x.shape[0], g)
    for name, v in (("mean", mean), ("invstd", invstd)):
        if tuple(getattr(v, "shape", ())) != expected:
            raise ValueError(
                f"{name}: expected shape {expected} (N, num_groups), "
                f"got {tuple(getattr(v, 'shape', ()))}"
            )
    ct = _compute_dtype(x.dtype)
    mean = mean.astype(ct, copy=False)
    invstd = invstd.astype(ct, copy=False)
    xg = _grouped(x.astype(ct, copy=False), g)
    xhat = ((xg - mean[..., None]) * invstd[..., None]).reshape(x.shape)
    dx, dweight, dbias = _group_norm_backward_xhat(grad_output, xhat, invstd, g, weight)
    dx = dx.astype(x.dtype, copy=False)
    if weight is None:
        return dx, None, None
    return dx, dweight.astype(weight.dtype, copy=False), dbias.astype(weight.dtype, copy=False)
