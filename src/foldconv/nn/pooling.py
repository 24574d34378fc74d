"""Pooling layers: MaxPool1d/2d/3d, AvgPool2d, AdaptiveAvgPool2d.

Each forward keeps what its backward needs (for max pooling only the compact index of
the winning kernel tap, one byte per output for kernels of up to 256 taps) and the
backward applies the matching :mod:`foldconv.functional.pooling` backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foldconv.functional import pooling as F
from foldconv.nn.module import Module

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool1d", "MaxPool2d", "MaxPool3d"]

IntOrTuple = int | Sequence[int]


def _saved(module: Module, attr: str) -> Any:
    value = module.__dict__.get(attr)
    if value is None:
        raise RuntimeError(f"{type(module).__name__}: backward() called before forward()")
    return value


def _plain(value: Any) -> Any:
    """Ints stay ints, sequences become tuples (for repr and for passing on)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


class _MaxPoolNd(Module):
    dims: int = 0

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        # validate now, so that a bad layer fails where it is built
        F._pool_args(self.dims, kernel_size, stride, padding, dilation)
        self.kernel_size = _plain(kernel_size)
        self.stride = _plain(kernel_size if stride is None else stride)
        self.padding = _plain(padding)
        self.dilation = _plain(dilation)
        self.ceil_mode = bool(ceil_mode)
        self._argmax = None
        self._x = None
        self._input_shape = None

    def _args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) or (C, *S) -> y: (N, C, *O) or (C, *O), same dtype.

        ``y[n, c, o] = max_t x_pad[n, c, o*s + t*d]`` (``-inf`` padding). In training
        mode the winning taps are recorded; in eval mode only a reference to x is kept
        (the plain maximum is ~2x faster), and a backward then finds the taps again.
        """
        if self.training:
            y, self._argmax = F.max_pool(x, *self._args(), return_indices="argmax", dims=self.dims)
            self._x = None
        else:
            y = F.max_pool(x, *self._args(), dims=self.dims)
            self._argmax, self._x = None, x
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx[i] = sum of dy[o] over the windows o whose maximum is x[i]."""
        if self._argmax is None and self._x is not None:
            _, self._argmax = F.max_pool(
                self._x, *self._args(), return_indices="argmax", dims=self.dims
            )
        argmax = _saved(self, "_argmax")
        return F.max_pool_backward(
            grad_output, argmax, self._input_shape, *self._args(), dims=self.dims
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class MaxPool1d(_MaxPoolNd):
    """1-d max pooling over (N, C, L) or (C, L) input, as ``torch.nn.MaxPool1d``.

    Parameters
    ----------
    kernel_size : int or (int,)
    stride : int or (int,), optional
        Defaults to ``kernel_size``.
    padding : int or (int,)
        Implicit ``-inf`` padding on both sides, at most ``kernel_size // 2``.
    dilation : int or (int,)
    ceil_mode : bool
        Round the output length up.
    """

    dims = 1


class MaxPool2d(_MaxPoolNd):
    """2-d max pooling over (N, C, H, W) or (C, H, W) input, as ``torch.nn.MaxPool2d``.

    Overlapping windows (``stride < kernel_size``, AlexNet's 3x3 stride 2) are supported;
    their gradients add up.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit ``-inf`` padding on both sides, at most ``kernel_size // 2``.
    dilation : int or (int, int)
    ceil_mode : bool
        Round the output size up.
    """

    dims = 2


class MaxPool3d(_MaxPoolNd):
    """3-d max pooling over (N, C, D, H, W) or (C, D, H, W) input, as ``torch.nn.MaxPool3d``.

    Parameters
    ----------
    kernel_size : int or (int, int, int)
    stride : int or (int, int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int, int)
        Implicit ``-inf`` padding on both sides, at most ``kernel_size // 2``.
    dilation : int or (int, int, int)
    ceil_mode : bool
        Round the output size up.
    """

    dims = 3


class AvgPool2d(Module):
    """2-d average pooling over (N, C, H, W) or (C, H, W) input, as ``torch.nn.AvgPool2d``.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit zero padding, at most ``kernel_size // 2``.
    ceil_mode : bool
        Round the output size up.
    count_include_pad : bool
        Count padding cells in each window's divisor.
    divisor_override : int, optional
        A fixed non-zero divisor for every window.
    """

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        padding: IntOrTuple = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        F._pool_args(2, kernel_size, stride, padding, 1)
        if divisor_override is not None:
            # the functional checks it; a 1x1 dummy input is enough to trigger that
            F._avg_setup((1, 1), 2, 1, 1, 0, False, divisor_override, "x")
        self.kernel_size = _plain(kernel_size)
        self.stride = _plain(kernel_size if stride is None else stride)
        self.padding = _plain(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override
        self._input_shape = None

    def _args(self) -> tuple:
        return (
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def forward(self, x: Any) -> Any:
        """x: (N, C, H, W) or (C, H, W) -> y: (N, C, H_out, W_out) or (C, H_out, W_out).

        ``y[o] = sum_t x_pad[o*s + t] / divisor(o)``.
        """
        y = F.avg_pool2d(x, *self._args())
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx_pad[o*s + t] += dy[o] / divisor(o) for every tap t; padding cropped."""
        shape = _saved(self, "_input_shape")
        return F.avg_pool2d_backward(grad_output, shape, *self._args())

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
            + (", ceil_mode=True" if self.ceil_mode else "")
            + ("" if self.count_include_pad else ", count_include_pad=False")
            + (
                ""
                if self.divisor_override is None
                else f", divisor_override={self.divisor_override}"
            )
        )


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d``.

    Output cell (i, j) averages input rows ``[floor(i H / H_out), ceil((i+1) H / H_out))``
    and columns likewise.

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        None keeps that input dimension.
    """

    def __init__(self, output_size: int | None | Sequence[int | None]) -> None:
        super().__init__()
        F._adaptive_size(output_size, (1, 1))  # validate now
        self.output_size = _plain(output_size)
        self._input_shape = None

    def forward(self, x: Any) -> Any:
        """x: (N, C, H, W) or (C, H, W) -> y: (N, C, H_out, W_out) or (C, H_out, W_out)."""
        y = F.adaptive_avg_pool2d(x, self.output_size)
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = B_h^T (dy / (c_h c_w^T)) B_w (the forward is linear in x)."""
        shape = _saved(self, "_input_shape")
        return F.adaptive_avg_pool2d_backward(grad_output, shape, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
