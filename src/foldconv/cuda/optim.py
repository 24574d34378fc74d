"""Fused optimizer updates: one numba-cuda kernel launch per parameter, one thread per
element.

Each kernel performs, per element, the same operations in the same order as the CPU
path (:mod:`foldconv.optim.sgd`, :mod:`foldconv.optim.adam`, which apply NumPy ufuncs
to whole arrays), with the hyper-parameters rounded to the parameter's dtype as NumPy
rounds a Python float meeting a float32 array. Every product, quotient and square root
is an explicitly rounded (``_rn``) libdevice call on the GPU: NVVM would otherwise fuse
``a * b + c`` into one FMA (a single rounding), and the results would no longer equal
the CPU path's bit for bit. In Numba's CUDA simulator the same operations are NumPy
scalar operations, which round like NumPy's array operations: there the results equal
the CPU path exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import cuda

from foldconv.backend import get_array_module
from foldconv.cuda.launch import kernel, simulated

__all__ = ["adam_update", "sgd_update"]


def _sim_mul(a: Any, b: Any) -> Any:
    return a * b


def _sim_div(a: Any, b: Any) -> Any:
    return a / b


def _sim_sqrt(a: Any) -> Any:
    return np.sqrt(a)


def _rounded_ops(dtype: np.dtype) -> tuple[Callable, Callable, Callable]:
    """(mul, div, sqrt) rounded once each, never contracted into an FMA."""
    if simulated():
        return _sim_mul, _sim_div, _sim_sqrt
    from numba.cuda import libdevice  # noqa: PLC0415

    if dtype == np.float32:
        return libdevice.fmul_rn, libdevice.fdiv_rn, libdevice.fsqrt_rn
    return libdevice.dmul_rn, libdevice.ddiv_rn, libdevice.dsqrt_rn


def _make_sgd_kernel(dtype: np.dtype) -> Any:
    mul, _, _ = _rounded_ops(dtype)

    def sgd_update(
        n,
        data,
        grad,
        buf,
        lr,
        momentum,
        one_minus_dampening,
        weight_decay,
        maximize,
        decay,
        momentum_mode,
        dampening_zero,
        nesterov,
    ):
        # momentum_mode: 0 no momentum, 1 first step (the buffer takes g), 2 later steps.
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            d = data[i]
            g = grad[i]
            if maximize:
                g = -g
            if decay:
                g = mul(d, weight_decay) + g
            b = g
            if momentum_mode == 1:
                buf[i] = g
            elif momentum_mode == 2:
                b = mul(buf[i], momentum)
                if dampening_zero:
                    b = b + g
                else:
                    b = b + mul(g, one_minus_dampening)
                buf[i] = b
            if momentum_mode != 0:
                if nesterov:
                    g = mul(b, momentum) + g
                else:
                    g = b
            data[i] = d - mul(g, lr)

    # A module-level name per dtype (below), so that tools (bench/ptx_check.py) and
    # numba's cache find the kernel by its qualified name.
    sgd_update.__name__ = sgd_update.__qualname__ = f"_sgd_kernel_{np.dtype(dtype).name}"
    return kernel(sgd_update)


def _make_adam_kernel(dtype: np.dtype) -> Any:
    mul, div, sqrt = _rounded_ops(dtype)

    def adam_update(
        n,
        data,
        grad,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        lr_over_bc1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        bc2_sqrt,
        eps,
        weight_decay,
        decay_factor,
        maximize,
        decay_mode,
        amsgrad,
    ):
        # decay_mode: 0 none, 1 L2 (added to the gradient, Adam), 2 decoupled (AdamW).
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            d = data[i]
            g = grad[i]
            if maximize:
                g = -g
            if decay_mode == 2:
                d = mul(d, decay_factor)
            elif decay_mode == 1:
                g = g + mul(weight_decay, d)
            m = exp_avg[i]
            m = m + mul(one_minus_beta1, g - m)
            exp_avg[i] = m
            v = mul(exp_avg_sq[i], beta2)
            v = v + mul(one_minus_beta2, mul(g, g))
            exp_avg_sq[i] = v
            if amsgrad:
                vm = max_exp_avg_sq[i]
                # np.maximum: the larger, and nan if either is nan.
                if not (vm >= v or vm != vm):
                    vm = v
                max_exp_avg_sq[i] = vm
                v = vm
            denom = div(sqrt(v), bc2_sqrt) + eps
            data[i] = d - mul(lr_over_bc1, div(m, denom))

    adam_update.__name__ = adam_update.__qualname__ = f"_adam_kernel_{np.dtype(dtype).name}"
    return kernel(adam_update)


# Built at import (the simulator's setting is read then): the rounded operations differ by
# dtype, so each dtype has its own kernel.
_sgd_kernel_float32 = _make_sgd_kernel(np.dtype(np.float32))
_sgd_kernel_float64 = _make_sgd_kernel(np.dtype(np.float64))
_adam_kernel_float32 = _make_adam_kernel(np.dtype(np.float32))
_adam_kernel_float64 = _make_adam_kernel(np.dtype(np.float64))
_SGD = {np.dtype(np.float32): _sgd_kernel_float32, np.dtype(np.float64): _sgd_kernel_float64}
_ADAM = {np.dtype(np.float32): _adam_kernel_float32, np.dtype(np.float64): _adam_kernel_float64}


def _flat(a: Any, name: str) -> Any:
    """A contiguous 1-d view of ``a`` (state arrays are created contiguous)."""
    xp = get_array_module(a)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides}")
    return xp.reshape(a, -1)


class _Contiguous:
    """``data`` as a contiguous array to update in place; copied back when it was not."""

    def __init__(self, data: Any) -> None:
        xp = get_array_module(data)
        self.data = data
        self.work = data if data.flags.c_contiguous else xp.ascontiguousarray(data)

    def flat(self) -> Any:
        return self.work.reshape(-1)

    def done(self) -> None:
        if self.work is not self.data:
            self.data[...] = self.work


def _unused(xp: Any, dtype: np.dtype) -> Any:
    """An array for a kernel argument the chosen options never touch. Its own array,
    never an alias of one the kernel writes: the simulator copies every array argument
    back after the launch."""
    return xp.empty(1, dtype=dtype)


def _grad_like(grad: Any, data: Any) -> Any:
    """The gradient contiguous and in the parameter's dtype, flattened (read only)."""
    xp = get_array_module(grad)
    g = grad if grad.dtype == data.dtype else grad.astype(data.dtype)
    return xp.ascontiguousarray(g).reshape(-1)


def sgd_update(
    data: Any,
    grad: Any,
    buf: Any,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> Any:
    """One SGD step on ``data`` in place (:class:`foldconv.optim.SGD`'s rule).

    Parameters
    ----------
    data : ndarray, float32 or float64, any shape
        The parameter, updated in place.
    grad : ndarray, shape of ``data``
    buf : ndarray or None
        The momentum buffer (updated in place), or None: a first momentum step then
        creates it (as a copy of the step's gradient).

    Returns
    -------
    ndarray or None
        The momentum buffer (None without momentum).
    """
    xp = get_array_module(data, grad)
    dt = np.dtype(data.dtype)
    scalar = dt.type
    n = data.size
    work = _Contiguous(data)
    if momentum == 0:
        mode, buf_arg = 0, _unused(xp, dt)
    elif buf is None:
        buf = xp.empty(data.shape, dtype=dt)
        mode, buf_arg = 1, buf.reshape(-1)
    else:
        mode, buf_arg = 2, _flat(buf, "momentum_buffer")
    k = _SGD[dt]
    k(
        n,
        n,
        work.flat(),
        _grad_like(grad, data),
        buf_arg,
        scalar(lr),
        scalar(momentum),
        scalar(1 - dampening),
        scalar(weight_decay),
        bool(maximize),
        weight_decay != 0,
        mode,
        dampening == 0,
        bool(nesterov),
    )
    work.done()
    return buf if mode else None


def adam_update(
    data: Any,
    grad: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    max_exp_avg_sq: Any,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """One Adam / AdamW step on ``data`` and its moments, in place
    (:class:`foldconv.optim.Adam`'s rule; ``decoupled``: AdamW's weight decay).

    Parameters
    ----------
    data : ndarray, float32 or float64, any shape
    grad, exp_avg, exp_avg_sq : ndarray, shape of ``data``
        The moments are C-contiguous, of ``data``'s dtype.
    max_exp_avg_sq : ndarray or None
        The running maximum of ``exp_avg_sq`` (amsgrad), or None.
    step : int
        The step number t >= 1 (for the bias corrections).
    """
    xp = get_array_module(data, grad)
    dt = np.dtype(data.dtype)
    scalar = dt.type
    n = data.size
    work = _Contiguous(data)
    amsgrad = max_exp_avg_sq is not None
    m = _flat(exp_avg, "exp_avg")
    v = _flat(exp_avg_sq, "exp_avg_sq")
    v_max = _flat(max_exp_avg_sq, "max_exp_avg_sq") if amsgrad else _unused(xp, dt)
    # The host computes the step's scalars in float64, as the CPU path does.
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    decay_mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
    k = _ADAM[dt]
    k(
        n,
        n,
        work.flat(),
        _grad_like(grad, data),
        m,
        v,
        v_max,
        scalar(lr / bias_correction1),
        scalar(1 - beta1),
        scalar(beta2),
        scalar(1 - beta2),
        scalar(bias_correction2_sqrt),
        scalar(eps),
        scalar(weight_decay),
        scalar(1 - lr * weight_decay),
        bool(maximize),
        decay_mode,
        amsgrad,
    )
    work.done()
