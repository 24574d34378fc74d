"""Losses: cross-entropy, negative log-likelihood and mean squared error, with gradients.

Signatures, argument order and formulas are PyTorch's (``torch.nn.functional``). A loss
is returned as a 0-d array of the input's dtype (``float(loss)`` gives a Python float);
``reduction='none'`` returns the per-element losses instead.

Notation for the class losses: the input is flattened to rows i (samples and positions
d1, ...) and classes c, so that z is (M, C); l = log_softmax(z) along c (cross-entropy)
or the input itself (NLL), p = exp(l). A class-index target t_i gives the mask
m_i = [t_i != ignore_index] and the row weight v_i = m_i · w[t_i] (w = 1 without a
class ``weight``); 'mean' divides by W = Σ_i v_i, the sum of the weights of the rows
that count (PyTorch's definition), so it is nan when W = 0 (an empty batch, or every
target ignored), as in PyTorch.

On CuPy arrays, the class losses with class-index targets run as the kernels of
:mod:`foldconv.cuda.loss` (the loss stays on the GPU as a 0-d array; one scalar comes back
per call, the check that every target is in range); probability targets and the MSE run
the array code below on CuPy. Input, target and weight must be on one device.

The deprecated ``size_average`` and ``reduce`` are mapped to ``reduction`` as PyTorch
maps them (both None: ``reduction`` is used; otherwise reduce=False gives 'none',
size_average=False gives 'sum', else 'mean'), with a DeprecationWarning.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from foldconv import backend
from foldconv.backend import get_array_module
from foldconv.functional.activation import _as_float_array, _compute_dtype

__all__ = [
    "cross_entropy",
    "cross_entropy_backward",
    "mse_loss",
    "mse_loss_backward",
    "nll_loss",
    "nll_loss_backward",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _legacy_reduction(size_average: Any, reduce: Any, reduction: Any) -> str:
    """``reduction``, or what the deprecated size_average / reduce mean (PyTorch's rule)."""
    if size_average is None and reduce is None:
        return _check_reduction(reduction)
    for name, v in (("size_average", size_average), ("reduce", reduce)):
        if v is not None and not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name}: expected a bool or None, got {type(v).__name__} {v!r}")
    size_average = True if size_average is None else bool(size_average)
    reduce = True if reduce is None else bool(reduce)
    mapped = "none" if not reduce else ("mean" if size_average else "sum")
    warnings.warn(
        f"size_average and reduce are deprecated (as in PyTorch); use reduction={mapped!r}",
        DeprecationWarning,
        stacklevel=3,
    )
    return mapped


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


def _check_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
        ignore_index, (int, np.integer)
    ):
        raise TypeError(
            f"ignore_index: expected an int, got {type(ignore_index).__name__} {ignore_index!r}"
        )
    return int(ignore_index)


class _Rows:
    """A class loss's checked arguments, flattened to rows.

    z : (M, C) input in the compute dtype; t : (M,) int64 class indices (0 where ignored)
    and m : (M,) bool mask for index targets, or q : (M, C) class probabilities; w : (C,)
    class weights or None; shape, dtype : the input's; per : the per-row loss shape;
    ignore : ignore_index.

    kernel : True on the GPU path with index targets, where foldconv.cuda.loss's kernels
    read the input in its own layout: z is then the input (N, C, d1, ...) ((1, C) for
    unbatched input), C-contiguous in the compute dtype, t the raw targets (M,) as int64
    (checked by the kernels) and m None.
    """

    __slots__ = ("z", "t", "m", "q", "w", "shape", "dtype", "per", "xp", "ignore", "kernel")


def _class_rows(
    input: Any, target: Any, weight: Any, ignore_index: int, *, allow_probs: bool
) -> _Rows:
    """Validate (input, target, weight) as PyTorch does and flatten them to rows."""
    input = _as_float_array(input, "input")
    if input.ndim < 1:
        raise ValueError(
            f"input: expected shape (C,), (N, C) or (N, C, d1, ...), got {tuple(input.shape)}"
        )
    xp = get_array_module(input)
    class_axis = 0 if input.ndim == 1 else 1
    c = input.shape[class_axis]
    if c == 0:
        raise ValueError(f"input: expected at least one class, got shape {tuple(input.shape)}")
    if not (hasattr(target, "dtype") and hasattr(target, "shape")) or isinstance(
        target, np.generic
    ):
        target = np.asarray(target)  # a number or a list: taken to the input's device
    else:
        get_array_module(input, target)  # a NumPy/CuPy mix is a TypeError, as in PyTorch
    per = tuple(input.shape[:class_axis]) + tuple(input.shape[class_axis + 1 :])
    r = _Rows()
    r.shape, r.dtype, r.per, r.xp = tuple(input.shape), input.dtype, per, xp
    r.ignore, r.kernel = ignore_index, False
    ct = _compute_dtype(input.dtype)
    z = input.astype(ct, copy=False)
    kind = np.dtype(target.dtype).kind

    def rows(a: Any) -> Any:
        """(N, C, d1, ...) -> (M, C): classes last, one row per sample and position."""
        return a.reshape(1, c) if a.ndim == 1 else xp.moveaxis(a, 1, -1).reshape(-1, c)

    if allow_probs and tuple(target.shape) == tuple(input.shape):
        # PyTorch reads a target of the input's shape as class probabilities.
        if kind != "f":
            raise TypeError(
                f"target: expected a float array of class probabilities (a target of the "
                f"input's shape {tuple(input.shape)}), got dtype {target.dtype}"
            )
        if ignore_index >= 0:
            raise ValueError(
                f"ignore_index: not supported with class-probability targets, got {ignore_index}"
            )
        r.z = rows(z)
        r.q = rows(target.astype(ct, copy=False))
        r.t = r.m = None
    else:
        if kind not in "iu":
            what = "integer class indices" + (" or class probabilities" if allow_probs else "")
            raise TypeError(f"target: expected {what}, got dtype {target.dtype}")
        if tuple(target.shape) != per:
            raise ValueError(
                f"target: expected shape {per} for an input of shape {tuple(input.shape)}, got "
                f"{tuple(target.shape)}"
            )
        t = xp.asarray(target).reshape(-1).astype(np.int64, copy=False)
        if backend.gpu_path(xp):
            # The kernels read the input as it lies and check the targets themselves
            # (no host round trip for the check here).
            r.kernel = True
            r.z = xp.ascontiguousarray(z.reshape(1, c) if z.ndim == 1 else z)
            r.t = xp.ascontiguousarray(t)
            r.m = r.q = None
            r.w = _class_weight(weight, c, ct, input)
            return r
        m = t != ignore_index
        if t.size:
            bad = (t < 0) | (t >= c)
            bad &= m
            if bool(bad.any()):
                value = int(t[xp.argmax(bad)])
                raise ValueError(
                    f"target: expected class indices in [0, {c - 1}] (or ignore_index="
                    f"{ignore_index}), got {value}"
                )
        r.z = rows(z)
        r.t = xp.where(m, t, 0)
        r.m = m
        r.q = None
    r.w = _class_weight(weight, c, ct, input)
    return r


def _class_weight(weight: Any, c: int, ct: np.dtype, input: Any) -> Any:
    """The class weight (C,) in the compute dtype, or None."""
    if weight is None:
        return None
    if hasattr(weight, "shape") and not isinstance(weight, np.generic):
        get_array_module(input, weight)  # a NumPy/CuPy mix is a TypeError
    weight = _as_float_array(weight, "weight")
    if tuple(weight.shape) != (c,):
        raise ValueError(
            f"weight: expected shape ({c},) (one per class), got {tuple(weight.shape)}"
        )
    return get_array_module(input).asarray(weight).astype(ct, copy=False)


def _row_weights(r: _Rows) -> Any:
    """v_i = m_i · w[t_i] for index targets (the weights 'mean' divides by)."""
    v = r.m.astype(r.z.dtype)
    if r.w is not None:
        v = v * r.w[r.t]
    return v


def _reduce(losses: Any, r: _Rows, reduction: str, denominator: Any) -> Any:
    xp = r.xp
    if reduction == "none":
        return losses.reshape(r.per).astype(r.dtype, copy=False)
    total = xp.sum(losses)
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is nan, as in PyTorch
            total = total / denominator
    return xp.asarray(total, dtype=r.dtype)


def _row_scale(r: _Rows, reduction: str, grad_output: Any, denominator: Any) -> Any:
    """g_i, the factor of row i's gradient: dOut/dloss, / denominator for 'mean'."""
    xp = r.xp
    _check_grad_output(grad_output, r.per, reduction)
    if reduction == "none":
        return xp.asarray(grad_output, dtype=r.z.dtype).reshape(-1)
    go = _scalar_grad_output(grad_output, r.z.dtype, xp)
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            go = go / denominator
    return xp.full(r.z.shape[0], go, dtype=r.z.dtype)


def _check_grad_output(grad_output: Any, per: tuple[int, ...], reduction: str) -> None:
    """grad_output must have the per-row loss shape for 'none', one element otherwise."""
    shape = tuple(np.shape(grad_output))
    if reduction == "none":
        if shape != per:
            raise ValueError(f"grad_output: expected shape {per} (reduction='none'), got {shape}")
    elif math.prod(shape) != 1:
        raise ValueError(
            f"grad_output: expected a scalar for reduction={reduction!r}, got shape {shape}"
        )


def _scalar_grad_output(grad_output: Any, dtype: np.dtype, xp: Any) -> Any:
    """A one-element grad_output in ``dtype``: a NumPy scalar for a number (so that
    nothing is copied to the GPU for it), else a 0-d array of ``xp``."""
    if np.isscalar(grad_output):
        return np.dtype(dtype).type(grad_output)
    return xp.asarray(grad_output, dtype=dtype).reshape(())


def _unrows(g: Any, r: _Rows) -> Any:
    """(M, C) rows back to the input's layout (N, C, d1, ...) and dtype."""
    xp = r.xp
    c = r.z.shape[1]
    if len(r.shape) == 1:
        g = g.reshape(c)
    elif len(r.shape) > 2:
        g = xp.moveaxis(g.reshape((r.shape[0],) + r.shape[2:] + (c,)), -1, 1)
    return g.astype(r.dtype, copy=False)


def _log_softmax_rows(z: Any) -> Any:
    xp = get_array_module(z)
    if z.shape[0] == 0:
        return z.copy()
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------
# Cross-entropy
# ---------------------------------------------------------------------------------------
def _ce_forward(r: _Rows, logp: Any, reduction: str, eps: float) -> Any:
    """The cross-entropy from log-probabilities (PyTorch's formulas).

    Index targets: loss_i = (1-e) v_i (-l[i, t_i]) + (e/C) m_i (-Σ_c w_c l[i, c]); 'mean'
    divides both terms by W = Σ v_i. Probability targets y: q = (1-e) y + e/C,
    loss_i = -Σ_c w_c q[i, c] l[i, c]; 'mean' divides by the number of rows M.
    """
    xp = r.xp
    c = logp.shape[1]
    if r.q is not None:
        q = (1 - eps) * r.q + eps / c if eps > 0 else r.q
        wq = q * r.w if r.w is not None else q
        return _reduce(-xp.sum(wq * logp, axis=1), r, reduction, logp.shape[0])
    v = _row_weights(r)
    rows = xp.arange(logp.shape[0])
    losses = -v * logp[rows, r.t]
    if eps > 0:
        wl = logp * r.w if r.w is not None else logp
        smooth = -xp.sum(wl, axis=1) * r.m
        losses = (1 - eps) * losses + (eps / c) * smooth
    return _reduce(losses, r, reduction, xp.sum(v))


def _ce_backward(r: _Rows, p: Any, reduction: str, eps: float, grad_output: Any) -> Any:
    """dL/dz from the probabilities p (M, C), in the input's layout.

    Index targets: g_i [(1-e) v_i (p_ij - [j = t_i]) + (e/C) m_i (p_ij Σ_c w_c - w_j)],
    zero on ignored rows; probability targets: g_i (p_ij Σ_c w_c q_ic - w_j q_ij).
    g_i is grad_output (/ W or / M for 'mean'; per row for 'none').
    """
    xp = r.xp
    m, c = p.shape
    if r.q is not None:
        q = (1 - eps) * r.q + eps / c if eps > 0 else r.q
        wq = q * r.w if r.w is not None else q
        g = p * xp.sum(wq, axis=1, keepdims=True) - wq
        return _unrows(g * _row_scale(r, reduction, grad_output, m)[:, None], r)
    v = _row_weights(r)
    rows = xp.arange(m)
    g = p * v[:, None]
    g[rows, r.t] -= v
    if eps > 0:
        g *= 1 - eps
        w_sum = xp.sum(r.w) if r.w is not None else c
        smooth = p * w_sum - (r.w[None, :] if r.w is not None else 1.0)
        g += (eps / c) * r.m[:, None] * smooth
    scale = _row_scale(r, reduction, grad_output, xp.sum(v))
    # Ignored rows get exactly zero, also where 'mean' divides by W = 0 (PyTorch skips them).
    with np.errstate(invalid="ignore"):
        g = xp.where(r.m[:, None], g * scale[:, None], 0)
    return _unrows(g, r)


# The losses' two entry points, shared by the functions and the nn layers: on the GPU
# path with index targets, foldconv.cuda.loss's kernels (which keep each row's
# log-sum-exp and W for the gradient); otherwise the array code above (which keeps the
# probabilities p for cross-entropy).
def _kernel_forward(r: _Rows, reduction: str, eps: float, log_softmax: bool) -> tuple[Any, Any]:
    from foldconv.cuda import loss as cuda_loss  # noqa: PLC0415

    out, saved = cuda_loss.class_loss_forward(
        r.z, r.t, r.w, ignore_index=r.ignore, eps=eps, log_softmax=log_softmax,
        reduction=reduction,
    )  # fmt: skip
    out = out.reshape(r.per if reduction == "none" else ())
    return out.astype(r.dtype, copy=False), saved


def _kernel_backward(
    r: _Rows, saved: Any, reduction: str, eps: float, log_softmax: bool, grad_output: Any
) -> Any:
    from foldconv.cuda import loss as cuda_loss  # noqa: PLC0415

    _check_grad_output(grad_output, r.per, reduction)
    if saved is None:  # the functional backward: the rows' sums first
        saved = _kernel_forward(r, reduction, eps, log_softmax)[1]
    g = cuda_loss.class_loss_backward(
        r.z, r.t, r.w, saved, ignore_index=r.ignore, eps=eps, log_softmax=log_softmax,
        reduction=reduction, grad_output=grad_output,
    )  # fmt: skip
    return g.reshape(r.shape).astype(r.dtype, copy=False)


def _ce_loss(r: _Rows, reduction: str, eps: float, keep: bool = False) -> tuple[Any, Any]:
    """(loss, what :func:`_ce_grad` needs, or None unless ``keep``)."""
    if r.kernel:
        return _kernel_forward(r, reduction, eps, True)
    logp = _log_softmax_rows(r.z)
    return _ce_forward(r, logp, reduction, eps), (r.xp.exp(logp) if keep else None)


def _ce_grad(r: _Rows, saved: Any, reduction: str, eps: float, grad_output: Any) -> Any:
    """dL/dinput from :func:`_ce_loss`'s saved values (None: recomputed)."""
    if r.kernel:
        return _kernel_backward(r, saved, reduction, eps, True, grad_output)
    p = saved if saved is not None else r.xp.exp(_log_softmax_rows(r.z))
    return _ce_backward(r, p, reduction, eps, grad_output)


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: Any = None,
    ignore_index: int = -100,
    reduce: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Any:
    """Cross-entropy of softmax(input) against class indices or class probabilities.

    Parameters
    ----------
    input : ndarray, shape (C,), (N, C) or (N, C, d1, ...)
        Logits; classes along axis 1 (axis 0 for unbatched (C,) input).
    target : ndarray
        Class indices, integers of shape (), (N,) or (N, d1, ...) in [0, C) or equal to
        ``ignore_index``; or class probabilities, floats of the input's shape.
    weight : ndarray, shape (C,), optional
        A weight per class.
    size_average, reduce : deprecated, mapped to ``reduction`` (see the module docstring)
    ignore_index : int
        Index targets equal to it add nothing and do not count in the mean (must be
        negative with probability targets).
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by W = Σ_i w[t_i] over the rows not ignored (index targets) or by
        the number of rows N·d1·... (probability targets); nan when that is 0.
    label_smoothing : float in [0, 1]
        The target is mixed with the uniform distribution: q = (1 - e) target + e / C.

    Returns
    -------
    ndarray
        0-d, dtype of ``input``, for 'mean' and 'sum'; shape (N, d1, ...) (or () for
        unbatched input) for 'none'.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    eps = _check_label_smoothing(label_smoothing)
    r = _class_rows(input, target, weight, _check_ignore_index(ignore_index), allow_probs=True)
    return _ce_loss(r, reduction, eps)[0]


def cross_entropy_backward(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: Any = None,
    ignore_index: int = -100,
    reduce: Any = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    grad_output: Any = 1.0,
) -> Any:
    """Gradient of :func:`cross_entropy` with respect to ``input``.

    Index targets: dL/dz_ij = g_i [(1-e) v_i (p_ij - [j = t_i]) + (e/C) m_i (p_ij Σ_c w_c
    - w_j)], zero on ignored rows; probability targets: dL/dz_ij = g_i (p_ij Σ_c w_c q_ic
    - w_j q_ij), q = (1-e) y + e/C. p = softmax(z), g_i = grad_output (divided by W or
    by the number of rows for 'mean'; per row for 'none').

    Parameters
    ----------
    input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As given to :func:`cross_entropy`.
    grad_output : float or ndarray
        dOut/dloss: a scalar, or an array of the per-row loss shape for 'none'.

    Returns
    -------
    ndarray, shape and dtype of ``input``
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    eps = _check_label_smoothing(label_smoothing)
    r = _class_rows(input, target, weight, _check_ignore_index(ignore_index), allow_probs=True)
    return _ce_grad(r, None, reduction, eps, grad_output)


# ---------------------------------------------------------------------------------------
# Negative log-likelihood
# ---------------------------------------------------------------------------------------
def _nll_forward(r: _Rows, reduction: str) -> Any:
    """loss_i = -v_i x[i, t_i]; 'mean' divides by W = Σ v_i."""
    v = _row_weights(r)
    rows = r.xp.arange(r.z.shape[0])
    return _reduce(-v * r.z[rows, r.t], r, reduction, r.xp.sum(v))


def _nll_backward(r: _Rows, reduction: str, grad_output: Any) -> Any:
    """dL/dx_ij = -g_i v_i [j = t_i]; zero elsewhere and on ignored rows."""
    xp = r.xp
    v = _row_weights(r)
    scale = _row_scale(r, reduction, grad_output, xp.sum(v))
    rows = xp.arange(r.z.shape[0])
    g = xp.zeros_like(r.z)
    with np.errstate(invalid="ignore"):  # inf·0 where W = 0 (PyTorch's nan)
        picked = -scale * v
    g[rows, r.t] = xp.where(r.m, picked, 0)
    return _unrows(g, r)


def _nll_loss(r: _Rows, reduction: str) -> tuple[Any, Any]:
    """(loss, what :func:`_nll_grad` needs: None off the kernel path)."""
    if r.kernel:
        return _kernel_forward(r, reduction, 0.0, False)
    return _nll_forward(r, reduction), None


def _nll_grad(r: _Rows, saved: Any, reduction: str, grad_output: Any) -> Any:
    if r.kernel:
        return _kernel_backward(r, saved, reduction, 0.0, False, grad_output)
    return _nll_backward(r, reduction, grad_output)


def nll_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: Any = None,
    ignore_index: int = -100,
    reduce: Any = None,
    reduction: str = "mean",
) -> Any:
    """Negative log-likelihood of log-probabilities ``input`` at class indices ``target``.

    loss_i = -w[t_i] · input[i, t_i] for the rows i with t_i != ignore_index (0 for the
    others); 'mean' divides the sum by W = Σ w[t_i] over those rows (nan when W = 0).

    Parameters
    ----------
    input : ndarray, shape (C,), (N, C) or (N, C, d1, ...)
        Log-probabilities (e.g. :func:`log_softmax` along the class axis).
    target : integer ndarray, shape (), (N,) or (N, d1, ...)
    weight : ndarray, shape (C,), optional
    size_average, reduce : deprecated, mapped to ``reduction``
    ignore_index : int
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    ndarray
        0-d for 'mean' and 'sum', the target's shape for 'none'; dtype of ``input``.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    r = _class_rows(input, target, weight, _check_ignore_index(ignore_index), allow_probs=False)
    return _nll_loss(r, reduction)[0]


def nll_loss_backward(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: Any = None,
    ignore_index: int = -100,
    reduce: Any = None,
    reduction: str = "mean",
    grad_output: Any = 1.0,
) -> Any:
    """Gradient of :func:`nll_loss`: dL/dx_ij = -g_i w[t_i] [j = t_i] on rows not ignored.

    g_i is grad_output (/ W for 'mean'; per row for 'none').

    Returns
    -------
    ndarray, shape and dtype of ``input``
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    r = _class_rows(input, target, weight, _check_ignore_index(ignore_index), allow_probs=False)
    return _nll_grad(r, None, reduction, grad_output)


# ---------------------------------------------------------------------------------------
# Mean squared error
# ---------------------------------------------------------------------------------------
def _check_mse_args(input: Any, target: Any, weight: Any) -> tuple[Any, Any, Any]:
    input = _as_float_array(input, "input")
    target = _as_float_array(target, "target")
    get_array_module(input, target, weight)  # a NumPy/CuPy mix is a TypeError
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"target: expected the shape of input {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if weight is not None:
        weight = _as_float_array(weight, "weight")
        if tuple(weight.shape) != tuple(input.shape):
            raise ValueError(
                f"weight: expected the shape of input {tuple(input.shape)}, got "
                f"{tuple(weight.shape)}"
            )
    return input, target, weight


def mse_loss(
    input: Any,
    target: Any,
    size_average: Any = None,
    reduce: Any = None,
    reduction: str = "mean",
    weight: Any = None,
) -> Any:
    """Mean squared error: the mean (or sum) of w · (input - target)^2.

    Parameters
    ----------
    input, target : ndarray, same shape
    size_average, reduce : deprecated, mapped to ``reduction``
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the number of elements, or by Σ weight when given
        (PyTorch's rule); nan for an empty input.
    weight : ndarray, shape of input, optional

    Returns
    -------
    ndarray
        0-d of the dtype of ``input`` for 'mean'/'sum', shape of ``input`` for 'none'.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    input, target, weight = _check_mse_args(input, target, weight)
    xp = get_array_module(input)
    ct = _compute_dtype(input.dtype)
    d = input.astype(ct, copy=False) - target.astype(ct, copy=False)
    sq = d * d
    if weight is not None:
        sq = sq * weight.astype(ct, copy=False)
    if reduction == "none":
        return sq.astype(input.dtype, copy=False)
    total = xp.sum(sq)
    if reduction == "mean":
        denominator = xp.sum(weight.astype(ct, copy=False)) if weight is not None else sq.size
        with np.errstate(divide="ignore", invalid="ignore"):
            total = total / denominator
    return xp.asarray(total, dtype=input.dtype)


def mse_loss_backward(
    input: Any,
    target: Any,
    size_average: Any = None,
    reduce: Any = None,
    reduction: str = "mean",
    weight: Any = None,
    grad_output: Any = 1.0,
) -> Any:
    """dL/dinput = 2 w (input - target) · g, g = grad_output (/ numel or Σ w for 'mean').

    The gradient with respect to ``target`` is its negative.

    Returns
    -------
    ndarray, shape and dtype of ``input``
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    input, target, weight = _check_mse_args(input, target, weight)
    xp = get_array_module(input)
    ct = _compute_dtype(input.dtype)
    d = input.astype(ct, copy=False) - target.astype(ct, copy=False)
    if weight is not None:
        d = d * weight.astype(ct, copy=False)
    scalar = np.isscalar(grad_output)
    # A number stays a NumPy scalar: nothing to copy to the GPU for it.
    go = ct.type(grad_output) if scalar else xp.asarray(grad_output, dtype=ct)
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
        go = go if scalar else go.reshape(())
        if reduction == "mean":
            denominator = xp.sum(weight.astype(ct, copy=False)) if weight is not None else d.size
            with np.errstate(divide="ignore", invalid="ignore"):
                go = go / denominator
    return (2 * d * go).astype(input.dtype, copy=False)
