"""Batch and group normalisation layers (PyTorch's semantics, running statistics, train/eval).

LocalResponseNorm lives in :mod:`foldconv.nn.lrn`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.functional import normalization as F
from foldconv.nn.activation import _saved
from foldconv.nn.linear import _check_count, _check_float_dtype
from foldconv.nn.module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm"]


def _check_device(device: Any) -> str | None:
    """None, 'cpu', 'cuda' or 'cuda:N' (moved with :meth:`Module.to`, as the layer's arrays)."""
    if device is None:
        return None
    if not isinstance(device, str):
        raise TypeError(
            f"device: expected 'cpu', 'cuda', 'cuda:N' or None, got {type(device).__name__}"
        )
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or None, got {device!r}")
    return device


def _affine_parameters(module: Module, affine: bool, bias: bool, c: int, dt: np.dtype) -> None:
    """weight (ones) and bias (zeros) of c channels when ``affine``, else None (as PyTorch)."""
    module.affine = bool(affine)
    module.weight = Parameter(np.ones(c, dtype=dt)) if module.affine else None
    module.bias = Parameter(np.zeros(c, dtype=dt)) if module.affine and bias else None


class _BatchNorm(Module):
    """Shared machinery of :class:`BatchNorm1d`, :class:`BatchNorm2d` and :class:`BatchNorm3d`.

    Parameters
    ----------
    num_features : int
        C, the size of axis 1 of the input.
    eps : float
        Added to the variance.
    momentum : float or None
        Weight of the new batch in the running statistics; None for a cumulative average
        (1 / num_batches_tracked), as PyTorch.
    affine : bool
        Learn ``weight`` (init 1) and ``bias`` (init 0), each of shape (C,).
    track_running_stats : bool
        Keep ``running_mean`` (init 0), ``running_var`` (init 1) and
        ``num_batches_tracked`` (int64, 0-d). Without them batch statistics are used in
        eval mode too.
    device : 'cpu', 'cuda', 'cuda:N' or None (the CPU)
        Where the parameters and running statistics live (as :meth:`Module.to`).
    dtype : float dtype or its name, optional
        Of the parameters and running statistics; float32 by default, as PyTorch.
    bias : bool, keyword-only
        With ``affine``, also learn ``bias`` (PyTorch's keyword).

    Notes
    -----
    In training the batch statistics normalise the input and the running ones are updated
    with the *unbiased* batch variance; in eval the running statistics are used. As in
    PyTorch, ``eps`` must be positive whenever batch statistics are used, and an empty
    batch gives an empty output, zero parameter gradients and unchanged running
    statistics (``num_batches_tracked`` still counts it).
    """

    _expected_ranks: tuple[int, ...] = ()
    _shape_text = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: str | None = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = _check_count(num_features, "num_features")
        # eps = 0 is valid with running statistics (eval), so it is checked in forward
        F._check_eps(eps, False)
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum: expected a float in [0, 1] or None, got {momentum}")
        device = _check_device(device)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.track_running_stats = bool(track_running_stats)
        dt = _check_float_dtype(dtype)
        c = self.num_features
        _affine_parameters(self, affine, bias, c, dt)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dtype=dt))
            self.register_buffer("running_var", np.ones(c, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._xhat = None
        self._invstd = None
        self._used_batch_stats = True
        self._x_dtype = None
        if device is not None:
            self.to(device)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, num_batches_tracked 0 (in place)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1 and bias 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            if self.bias is not None:
                self.bias.data[...] = 0

    def _check_input(self, x: Any) -> None:
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if len(shape) not in self._expected_ranks:
            raise ValueError(f"x: expected shape {self._shape_text}, got {shape}")
        if shape[1] != self.num_features:
            raise ValueError(
                f"x: expected {self.num_features} channels along axis 1 "
                f"(num_features), got shape {shape}"
            )

    def forward(self, x: Any) -> Any:
        """Normalise per channel; output of the input's shape and dtype."""
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            nbt = self.num_batches_tracked
            nbt += 1  # in place: the buffer object stays registered
            if self.momentum is None:
                factor = 1.0 / float(nbt)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch = self.training or not self.track_running_stats
        keep_running = not self.training or self.track_running_stats
        y, _, invstd, xhat = F._batch_norm_impl(
            x,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight.data if self.affine else None,
            self.bias.data if self.bias is not None else None,
            use_batch,
            factor,
            self.eps,
        )
        self._xhat = xhat
        self._invstd = invstd
        self._used_batch_stats = use_batch
        self._x_dtype = y.dtype
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = (1/n) * weight * invstd * (n dy - sum dy - x_hat * sum(dy x_hat)) with batch
        statistics, dx = dy * weight * invstd with running ones; accumulates
        dweight = sum dy x_hat and dbias = sum dy (sums over every axis but 1).
        """
        xhat = _saved(self, "_xhat")
        if tuple(grad_output.shape) != tuple(xhat.shape):
            raise ValueError(
                f"grad_output: expected shape {tuple(xhat.shape)}, got {tuple(grad_output.shape)}"
            )
        dx, dw, db = F._batch_norm_backward_xhat(
            grad_output,
            xhat,
            self._invstd,
            self.weight.data if self.affine else None,
            self._used_batch_stats,
        )
        if self.affine:
            self.weight.accumulate(dw.astype(self.weight.dtype, copy=False))
        if self.bias is not None:
            self.bias.accumulate(db.astype(self.bias.dtype, copy=False))
        return dx.astype(self._x_dtype, copy=False)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) input; statistics per channel C.

    See :class:`_BatchNorm` for the parameters. Shapes: input (N, C) or (N, C, L) ->
    output of the same shape and dtype.
    """

    _expected_ranks = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) input; statistics per channel C.

    See :class:`_BatchNorm` for the parameters. Shapes: input (N, C, H, W) -> output of
    the same shape and dtype.
    """

    _expected_ranks = (4,)
    _shape_text = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation over (N, C, D, H, W) input; statistics per channel C.

    See :class:`_BatchNorm` for the parameters. Shapes: input (N, C, D, H, W) -> output
    of the same shape and dtype.
    """

    _expected_ranks = (5,)
    _shape_text = "(N, C, D, H, W)"


class GroupNorm(Module):
    """Group normalisation, as ``torch.nn.GroupNorm``.

    The channels are split into ``num_groups`` groups of consecutive channels; each
    (sample, group) is normalised by its own mean and biased variance, then scaled and
    shifted per channel: ``y = (x - mean) / sqrt(var + eps) * weight + bias``. No running
    statistics: training and eval compute the same thing.

    Parameters
    ----------
    num_groups : int
        G, a positive divisor of ``num_channels``.
    num_channels : int
        C, the size of axis 1 of the input.
    eps : float
        Added to the variance.
    affine : bool
        Learn ``weight`` (init 1) and ``bias`` (init 0), each of shape (C,).
    device : 'cpu', 'cuda', 'cuda:N' or None (the CPU)
    dtype : float dtype or its name, optional
        Of the parameters; float32 by default.
    bias : bool, keyword-only
        With ``affine``, also learn ``bias``.

    Shapes: input (N, C, *) -> output of the same shape and dtype; N may be 0.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: str | None = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_groups = _check_count(num_groups, "num_groups")
        self.num_channels = _check_count(num_channels, "num_channels")
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ValueError(
                f"num_groups: expected a positive int dividing num_channels="
                f"{self.num_channels}, got {self.num_groups}"
            )
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise TypeError(f"eps: expected a float, got {type(eps).__name__} {eps!r}")
        device = _check_device(device)
        self.eps = float(eps)
        dt = _check_float_dtype(dtype)
        _affine_parameters(self, affine, bias, self.num_channels, dt)
        self._xhat = None
        self._invstd = None
        self._x_dtype = None
        if device is not None:
            self.to(device)

    def reset_parameters(self) -> None:
        """Weight 1 and bias 0."""
        if self.weight is not None:
            self.weight.data[...] = 1
        if self.bias is not None:
            self.bias.data[...] = 0

    def forward(self, x: Any) -> Any:
        """x: (N, C, *) -> y of the same shape and dtype, normalised per (sample, group)."""
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if len(shape) >= 2 and self.affine and shape[1] != self.num_channels:
            raise ValueError(
                f"x: expected {self.num_channels} channels along axis 1 "
                f"(num_channels), got shape {shape}"
            )
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        x, g, w, b = F._group_setup(x, self.num_groups, w, b)
        y, _, invstd, xhat = F._group_norm_impl(x, g, w, b, self.eps)
        self._xhat, self._invstd, self._x_dtype = xhat, invstd, y.dtype
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = invstd / m (m dxhat - sum dxhat - x_hat sum(dxhat x_hat)) per (sample,
        group), dxhat = dy * weight; accumulates dweight = sum dy x_hat, dbias = sum dy."""
        xhat = _saved(self, "_xhat")
        if tuple(grad_output.shape) != tuple(xhat.shape):
            raise ValueError(
                f"grad_output: expected shape {tuple(xhat.shape)}, got {tuple(grad_output.shape)}"
            )
        w = self.weight.data if self.weight is not None else None
        dx, dw, db = F._group_norm_backward_xhat(
            grad_output, xhat, self._invstd, self.num_groups, w
        )
        if self.weight is not None:
            self.weight.accumulate(dw.astype(self.weight.dtype, copy=False))
        if self.bias is not None:
            self.bias.accumulate(db.astype(self.bias.dtype, copy=False))
        return dx.astype(self._x_dtype, copy=False)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
