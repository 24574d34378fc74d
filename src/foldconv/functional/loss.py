"""Losses: cross-entropy on logits and mean squared error, with their gradients.

A loss is returned as a 0-d array of the input's dtype (``float(loss)`` gives a Python
float); ``reduction='none'`` returns the per-element losses instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional.activation import _as_float_array, _compute_dtype

__all__ = ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _check_label_smoothing(label_smoothing: Any) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"label_smoothing: expected a float in [0, 1], got {type(label_smoothing).__name__}"
        )
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing: expected a float in [0, 1], got {label_smoothing}")
    return float(label_smoothing)


def _check_ce_args(logits: Any, target: Any) -> tuple[Any, Any]:
    logits = _as_float_array(logits, "logits")
    if logits.ndim < 2:
        raise ValueError(
            f"logits: expected shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}"
        )
    if not (hasattr(target, "dtype") and hasattr(target, "shape")):
        target = np.asarray(target)
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(
            f"target: expected integer class indices, got dtype {target.dtype} "
            "(probability targets are not supported)"
        )
    want = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != want:
        raise ValueError(
            f"target: expected shape {want} for logits of shape {tuple(logits.shape)}, got "
            f"{tuple(target.shape)}"
        )
    c = logits.shape[1]
    if target.size:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target: expected class indices in [0, {c - 1}], got {bad}")
    return logits, target


def _class_last(logits: Any) -> Any:
    """(N, C, d1, ...) -> (M, C) with M = N * d1 * ..., classes along axis 1."""
    xp = get_array_module(logits)
    if logits.ndim == 2:
        return logits
    return xp.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])


def _log_softmax_rows(z: Any) -> Any:
    xp = get_array_module(z)
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def _per_sample_shape(logits: Any) -> tuple[int, ...]:
    return (logits.shape[0],) + tuple(logits.shape[2:])


def cross_entropy(
    logits: Any, target: Any, reduction: str = "mean", label_smoothing: float = 0.0
) -> Any:
    """Cross-entropy of softmax(logits) against class indices, with label smoothing.

    With log-probabilities l = log_softmax(logits) along axis 1, C classes and smoothing e,
    each sample's loss is -(1 - e) * l[target] - (e / C) * sum_c l[c] (PyTorch's definition).

    Parameters
    ----------
    logits : ndarray, shape (N, C) or (N, C, d1, ...)
    target : integer ndarray, shape (N,) or (N, d1, ...), values in [0, C)
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the number of samples N * d1 * ...
    label_smoothing : float in [0, 1]

    Returns
    -------
    ndarray
        0-d, dtype of ``logits``, for 'mean' and 'sum'; shape of ``target`` for 'none'.
    """
    reduction = _check_reduction(reduction)
    eps = _check_label_smoothing(label_smoothing)
    logits, target = _check_ce_args(logits, target)
    ct = _compute_dtype(logits.dtype)
    logp = _log_softmax_rows(_class_last(logits).astype(ct, copy=False))
    return _ce_from_log_probs(logp, target, reduction, eps, logits)


def _ce_from_log_probs(logp: Any, target: Any, reduction: str, eps: float, logits: Any) -> Any:
    """The loss from log-probabilities (M, C), classes along axis 1 (checked arguments)."""
    xp = get_array_module(logp)
    t = xp.asarray(target).reshape(-1).astype(np.int64, copy=False)
    picked = xp.take_along_axis(logp, t[:, None], axis=1)[:, 0]
    losses = -picked
    if eps > 0:
        c = logits.shape[1]
        losses = (1 - eps) * losses - (eps / c) * xp.sum(logp, axis=1)
    if reduction == "none":
        return losses.reshape(_per_sample_shape(logits)).astype(logits.dtype, copy=False)
    total = xp.sum(losses)
    if reduction == "mean":
        total = total / losses.shape[0] if losses.shape[0] else total * xp.nan
    return xp.asarray(total, dtype=logits.dtype)


def _ce_grad_from_probs(
    probs: Any,
    target: Any,
    reduction: str,
    label_smoothing: float,
    grad_output: Any,
    logits_shape: tuple[int, ...],
    out_dtype: Any,
) -> Any:
    """dL/dlogits = (softmax - q) * scale, with q = (1 - e) onehot(target) + e / C.

    ``probs`` is (M, C) with classes along axis 1; ``grad_output`` is a scalar for 'mean'
    and 'sum' (scaled by 1/M for 'mean') and an array of the per-sample shape for 'none'.
    """
    xp = get_array_module(probs)
    m, c = probs.shape
    t = xp.asarray(target).reshape(-1).astype(np.int64, copy=False)
    g = probs.copy()
    if label_smoothing > 0:
        g -= label_smoothing / c
    rows = xp.arange(m)
    g[rows, t] -= 1 - label_smoothing
    if reduction == "none":
        go = xp.asarray(grad_output, dtype=probs.dtype)
        per = (logits_shape[0],) + tuple(logits_shape[2:])
        if tuple(go.shape) != per:
            raise ValueError(
                f"grad_output: expected shape {per} (reduction='none'), got {tuple(go.shape)}"
            )
        g *= go.reshape(-1, 1)
    else:
        go = xp.asarray(grad_output, dtype=probs.dtype)
        if go.size != 1:
            raise ValueError(
                f"grad_output: expected a scalar for reduction={reduction!r}, got shape "
                f"{tuple(go.shape)}"
            )
        scale = go.reshape(())
        if reduction == "mean":
            scale = scale / m
        g *= scale
    if len(logits_shape) > 2:
        g = xp.moveaxis(g.reshape((logits_shape[0],) + tuple(logits_shape[2:]) + (c,)), -1, 1)
    return g.astype(out_dtype, copy=False)


def cross_entropy_backward(
    logits: Any,
    target: Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_output: Any = 1.0,
) -> Any:
    """Gradient of :func:`cross_entropy` with respect to the logits.

    dL/dz = g * (softmax(z) - q), q = (1 - e) * onehot(target) + e / C, with g =
    grad_output (divided by the number of samples for 'mean', per sample for 'none').

    Parameters
    ----------
    logits, target, reduction, label_smoothing
        As given to :func:`cross_entropy`.
    grad_output : float or ndarray
        dOut/dloss: a scalar, or an array of the target's shape for 'none'.

    Returns
    -------
    ndarray, shape and dtype of ``logits``
    """
    reduction = _check_reduction(reduction)
    eps = _check_label_smoothing(label_smoothing)
    logits, target = _check_ce_args(logits, target)
    xp = get_array_module(logits)
    ct = _compute_dtype(logits.dtype)
    probs = xp.exp(_log_softmax_rows(_class_last(logits).astype(ct, copy=False)))
    return _ce_grad_from_probs(
        probs, target, reduction, eps, grad_output, tuple(logits.shape), logits.dtype
    )


def _check_mse_args(input: Any, target: Any) -> tuple[Any, Any]:
    input = _as_float_array(input, "input")
    target = _as_float_array(target, "target")
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"target: expected the shape of input {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    return input, target


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """Mean squared error: mean (or sum) of (input - target)^2.

    Parameters
    ----------
    input, target : ndarray, same shape
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    ndarray
        0-d of the dtype of ``input`` for 'mean'/'sum', shape of ``input`` for 'none'.
    """
    reduction = _check_reduction(reduction)
    input, target = _check_mse_args(input, target)
    xp = get_array_module(input)
    ct = _compute_dtype(input.dtype)
    d = input.astype(ct, copy=False) - target.astype(ct, copy=False)
    sq = d * d
    if reduction == "none":
        return sq.astype(input.dtype, copy=False)
    total = xp.sum(sq)
    if reduction == "mean":
        total = total / sq.size if sq.size else total * xp.nan
    return xp.asarray(total, dtype=input.dtype)


def mse_loss_backward(
    input: Any, target: Any, reduction: str = "mean", grad_output: Any = 1.0
) -> Any:
    """dL/dinput = 2 (input - target) * g, with g = grad_output (/ numel for 'mean').

    Returns
    -------
    ndarray, shape and dtype of ``input``
    """
    reduction = _check_reduction(reduction)
    input, target = _check_mse_args(input, target)
    xp = get_array_module(input)
    ct = _compute_dtype(input.dtype)
    d = input.astype(ct, copy=False) - target.astype(ct, copy=False)
    go = xp.asarray(grad_output, dtype=ct)
    if reduction == "none":
        if tuple(go.shape) not in ((), tuple(input.shape)):
            raise ValueError(
                f"grad_output: expected shape {tuple(input.shape)} (reduction='none'), got "
                f"{tuple(go.shape)}"
            )
    elif go.size != 1:
        raise ValueError(
            f"grad_output: expected a scalar for reduction={reduction!r}, got shape "
            f"{tuple(go.shape)}"
        )
    else:
        go = go.reshape(())
        if reduction == "mean":
            go = go / max(d.size, 1)
    return (2 * d * go).astype(input.dtype, copy=False)
