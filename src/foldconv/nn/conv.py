"""Convolution layers: Conv1d/2d/3d and ConvTranspose1d/2d/3d (PyTorch's constructors)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv.functional import convolution as F
from foldconv.functional._args import (
    _as_int,
    check_padding_mode,
    int_tuple,
    parse_padding,
)
from foldconv.nn import init
from foldconv.nn.linear import _check_float_dtype, _on_device
from foldconv.nn.module import Module, Parameter


class _ConvNd(Module):
    _ndim = 0
    _transposed = False
    # False: backward skips dL/dx and returns None. For a network's first layer, whose
    # input gradient nobody reads (PyTorch skips it there: the input does not require
    # grad); the trainer sets it for the duration of a step (:func:`skip_input_grad`).
    needs_input_grad = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
        bias: bool,
        padding_mode: str,
        output_padding: Any,
        device: Any,
        dtype: Any,
        rng: np.random.Generator | int | None,
    ) -> None:
        super().__init__()
        nd = self._ndim
        in_channels = _as_int(in_channels, "in_channels")
        out_channels = _as_int(out_channels, "out_channels")
        if in_channels < 1:
            raise ValueError(f"in_channels: expected a positive int, got {in_channels}")
        if out_channels < 1:
            raise ValueError(f"out_channels: expected a positive int, got {out_channels}")
        groups = _as_int(groups, "groups")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups: expected a positive int dividing in_channels={in_channels} and "
                f"out_channels={out_channels}, got {groups}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_tuple(kernel_size, nd, "kernel_size", minimum=1)
        self.stride = int_tuple(stride, nd, "stride", minimum=1)
        self.dilation = int_tuple(dilation, nd, "dilation", minimum=1)
        pads = parse_padding(padding, nd, allow_strings=not self._transposed)
        self.padding = padding if isinstance(padding, str) else pads
        self.padding_mode = check_padding_mode(padding_mode)
        if self._transposed and self.padding_mode != "zeros":
            raise ValueError(
                f"padding_mode: transposed convolutions support only 'zeros', got {padding_mode!r}"
            )
        self.output_padding = int_tuple(output_padding, nd, "output_padding", minimum=0)
        dtype = _check_float_dtype(dtype)
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) gives U(±1/sqrt(fan_in)), with
        # fan_in = weight.shape[1]·prod(K) (for transposed layers too).
        gen = init.get_generator(rng)
        bound = init.default_bound(shape[1] * math.prod(self.kernel_size))
        self.weight = Parameter(_on_device(init.uniform(shape, bound, gen, dtype), device))
        self.bias = (
            Parameter(_on_device(init.uniform((out_channels,), bound, gen, dtype), device))
            if bias
            else None
        )
        self._x = None
        self._output_padding = self.output_padding  # the one the last forward used

    def _options(self) -> dict[str, Any]:
        if self._transposed:
            return dict(
                stride=self.stride,
                padding=self.padding,
                output_padding=self._output_padding,
                groups=self.groups,
                dilation=self.dilation,
            )
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )

    def forward(self, x: Any) -> Any:
        """Shapes: (N, C_in, *S) or (C_in, *S) -> (N, C_out, *out) or (C_out, *out)."""
        b = self.bias.data if self.bias is not None else None
        y = F.conv(x, self.weight.data, b, **self._options())
        self._x = x  # a reference, not a copy: backward needs it (in eval mode too)
        return y

    def backward(self, grad_output: Any) -> Any:
        """Returns dL/dx (None when ``needs_input_grad`` is False); accumulates dL/dW
        (eq. BW) and dL/db (eq. BB) into ``.grad``."""
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        fn = F.conv_transpose_backward if self._transposed else F.conv_backward
        mask = (self.needs_input_grad, True, self.bias is not None)
        dx, dw, db = fn(grad_output, self._x, self.weight.data, **self._options(), output_mask=mask)
        self.weight.accumulate(dw, take=True)
        if self.bias is not None:
            self.bias.accumulate(db, take=True)
        return dx

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != ((0, 0),) * self._ndim:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if any(self.output_padding):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class Conv1d(_ConvNd):
    """1-d convolution layer: weight (C_out, C_in/groups, K), bias (C_out,)."""

    _ndim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            0,
            device,
            dtype,
            rng,
        )


class Conv2d(Conv1d):
    """2-d convolution layer: weight (C_out, C_in/groups, KH, KW), bias (C_out,)."""

    _ndim = 2


class Conv3d(Conv1d):
    """3-d convolution layer: weight (C_out, C_in/groups, KD, KH, KW), bias (C_out,)."""

    _ndim = 3


class _ConvTransposeNd(_ConvNd):
    _transposed = True

    def _output_padding_for(self, x: Any, output_size: Any) -> tuple[int, ...]:
        """The output_padding that gives ``output_size`` (PyTorch's rule and range check).

        Without output_padding the output is min = (S-1)·stride - (low+high) +
        dilation·(K-1) + 1; a size in [min, min + stride - 1] is reached by adding
        output_size - min rows at the high end. ``output_size`` may also carry the batch
        and channel sizes (as ``y.shape`` would), which are not checked, as in PyTorch.
        """
        nd = self._ndim
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) not in (nd + 1, nd + 2):
            return self.output_padding  # F.conv_transpose reports the bad x
        leading = len(shape) - nd
        try:
            sizes = [_as_int(v, "output_size") for v in output_size]
        except TypeError:
            raise TypeError(
                f"output_size: expected a sequence of ints, got {type(output_size).__name__} "
                f"{output_size!r}"
            ) from None
        if len(sizes) == nd + leading:
            sizes = sizes[leading:]
        if len(sizes) != nd:
            raise ValueError(
                f"output_size: expected {nd} or {nd + leading} ints for a {len(shape)}-d input, "
                f"got {len(sizes)} ({tuple(output_size)!r})"
            )
        lows_highs = self.padding
        mins = [
            (s - 1) * st - (lo + hi) + dl * (k - 1) + 1
            for s, st, (lo, hi), dl, k in zip(
                shape[leading:],
                self.stride,
                lows_highs,
                self.dilation,
                self.kernel_size,
                strict=True,
            )
        ]
        maxs = [m + st - 1 for m, st in zip(mins, self.stride, strict=True)]
        if any(not lo <= v <= hi for v, lo, hi in zip(sizes, mins, maxs, strict=True)):
            raise ValueError(
                f"output_size: expected sizes from {tuple(mins)} to {tuple(maxs)} for an input "
                f"of spatial size {shape[leading:]}, got {tuple(sizes)}"
            )
        return tuple(v - m for v, m in zip(sizes, mins, strict=True))

    def forward(self, x: Any, output_size: Any = None) -> Any:
        """Shapes: (N, C_in, *S) or (C_in, *S) -> (N, C_out, *out) or (C_out, *out).

        ``output_size`` (optional): the spatial size of the output, or the whole output
        shape; it picks the output_padding (overriding the layer's) among the sizes a
        strided convolution maps to the input size S.
        """
        b = self.bias.data if self.bias is not None else None
        self._output_padding = (
            self.output_padding if output_size is None else self._output_padding_for(x, output_size)
        )
        y = F.conv_transpose(x, self.weight.data, b, **self._options())
        self._x = x
        return y


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution layer: weight (C_in, C_out/groups, K), bias (C_out,)."""

    _ndim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            output_padding,
            device,
            dtype,
            rng,
        )


class ConvTranspose2d(ConvTranspose1d):
    """2-d transposed convolution layer: weight (C_in, C_out/groups, KH, KW)."""

    _ndim = 2


class ConvTranspose3d(ConvTranspose1d):
    """3-d transposed convolution layer: weight (C_in, C_out/groups, KD, KH, KW)."""

    _ndim = 3
