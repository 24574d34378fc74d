"""Pooling layers: MaxPool, AvgPool, AdaptiveAvgPool and AdaptiveMaxPool, each 1-d/2-d/3-d.

Each forward keeps what its backward needs (for max pooling only the compact index of
the winning kernel tap, one byte per output for kernels of up to 256 taps) and the
backward applies the matching :mod:`foldconv.functional.pooling` backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foldconv.functional import pooling as F
from foldconv.nn.module import Module

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
]

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


def _single(value: Any) -> tuple:
    return tuple(value) if isinstance(value, Sequence) else (value,)


class _MaxPoolNd(Module):
    dims: int = 0

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        # validate now, so that a bad layer fails where it is built
        F._pool_args(self.dims, kernel_size, stride, padding, dilation)
        self.kernel_size = _plain(kernel_size)
        self.stride = _plain(kernel_size if stride is None else stride)
        self.padding = _plain(padding)
        self.dilation = _plain(dilation)
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)
        self._argmax = None
        self._indices = None
        self._x = None
        self._input_shape = None

    def _args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) or (C, *S) -> y: (N, C, *O) or (C, *O), same dtype.

        ``y[n, c, o] = max_t x_pad[n, c, o*s + t*d]`` (``-inf`` padding). With
        ``return_indices`` returns ``(y, indices)``, PyTorch's int64 indices (the flat
        position of each maximum in its input plane), which the backward then uses.
        Otherwise, in training mode the winning taps are recorded; in eval mode only a
        reference to x is kept (the plain maximum is ~2x faster), and a backward then
        finds the taps again.
        """
        self._argmax = self._indices = self._x = None
        if self.return_indices:
            y, self._indices = F.max_pool(x, *self._args(), return_indices=True, dims=self.dims)
        elif self.training:
            y, self._argmax = F.max_pool(x, *self._args(), return_indices="argmax", dims=self.dims)
        else:
            y = F.max_pool(x, *self._args(), dims=self.dims)
            self._x = x
        self._input_shape = tuple(x.shape)
        return (y, self._indices) if self.return_indices else y

    def backward(self, grad_output: Any) -> Any:
        """dx[i] = sum of dy[o] over the windows o whose maximum is x[i]."""
        if self._indices is not None:
            return F.max_pool_backward(
                grad_output,
                self._indices,
                self._input_shape,
                *self._args(),
                dims=self.dims,
                indices_kind="flat",
            )
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


_MAX_DOC = """{dims}-d max pooling over {shape} or unbatched input, as ``torch.nn.MaxPool{dims}d``.
{extra}
    Parameters
    ----------
    kernel_size : int or tuple of ints
        A 1-tuple stands for every dimension.
    stride : int or tuple of ints, optional
        Defaults to ``kernel_size`` (so does ``()``).
    padding : int or tuple of ints
        Implicit ``-inf`` padding on both sides, at most ``kernel_size // 2``.
    dilation : int or tuple of ints
    return_indices : bool
        ``forward`` also returns PyTorch's int64 indices (flat positions of the maxima
        in each input plane), as ``(y, indices)``.
    ceil_mode : bool
        Round the output size up.

    Only the batch of the input may be empty.
    """


class MaxPool1d(_MaxPoolNd):
    dims = 1


class MaxPool2d(_MaxPoolNd):
    dims = 2


class MaxPool3d(_MaxPoolNd):
    dims = 3


MaxPool1d.__doc__ = _MAX_DOC.format(dims=1, shape="(N, C, L)", extra="")
MaxPool2d.__doc__ = _MAX_DOC.format(
    dims=2,
    shape="(N, C, H, W)",
    extra="""
    Overlapping windows (``stride < kernel_size``, AlexNet's 3x3 stride 2) are supported;
    their gradients add up.
""",
)
MaxPool3d.__doc__ = _MAX_DOC.format(dims=3, shape="(N, C, D, H, W)", extra="")


class _AvgPoolNd(Module):
    dims: int = 0

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
        F._pool_args(self.dims, kernel_size, stride, padding, 1)
        if divisor_override is not None:
            # the functional checks it; a 1-cell dummy input is enough to trigger that
            F._avg_setup((1,) * self.dims, self.dims, 1, 1, 0, False, divisor_override, "x")
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
        """x: (N, C, *S) or (C, *S) -> y: (N, C, *O) or (C, *O), same dtype.

        ``y[o] = sum_t x_pad[o*s + t] / divisor(o)``.
        """
        y = F._avg_pool(x, self.dims, *self._args())
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx_pad[o*s + t] += dy[o] / divisor(o) for every tap t; padding cropped."""
        shape = _saved(self, "_input_shape")
        return F._avg_pool_backward(grad_output, shape, self.dims, *self._args())

    def extra_repr(self) -> str:
        # PyTorch's: the other options are not shown
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


_AVG_DOC = """{dims}-d average pooling over {shape} or unbatched input.

    As ``torch.nn.AvgPool{dims}d``.

    Parameters
    ----------
    kernel_size : int or tuple of ints
        A 1-tuple stands for every dimension.
    stride : int or tuple of ints, optional
        Defaults to ``kernel_size`` (so does ``()``).
    padding : int or tuple of ints
        Implicit zero padding, at most ``kernel_size // 2``.
    ceil_mode : bool
        Round the output size up.
    count_include_pad : bool
        Count padding cells in each window's divisor.{divisor}

    Only the batch of the input may be empty.
    """


class AvgPool1d(_AvgPoolNd):
    dims = 1

    def __init__(
        self,
        kernel_size: IntOrTuple,
        stride: IntOrTuple | None = None,
        padding: IntOrTuple = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        # PyTorch's AvgPool1d has no divisor_override, and keeps its sizes as 1-tuples
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        self.kernel_size = _single(self.kernel_size)
        self.stride = _single(self.stride)
        self.padding = _single(self.padding)


class AvgPool2d(_AvgPoolNd):
    dims = 2


class AvgPool3d(_AvgPoolNd):
    dims = 3


_DIVISOR_DOC = """
    divisor_override : int, optional
        A fixed non-zero divisor for every window."""
AvgPool1d.__doc__ = _AVG_DOC.format(dims=1, shape="(N, C, L)", divisor="")
AvgPool2d.__doc__ = _AVG_DOC.format(dims=2, shape="(N, C, H, W)", divisor=_DIVISOR_DOC)
AvgPool3d.__doc__ = _AVG_DOC.format(dims=3, shape="(N, C, D, H, W)", divisor=_DIVISOR_DOC)


class _AdaptiveAvgPoolNd(Module):
    dims: int = 0

    def __init__(self, output_size: int | None | Sequence[int | None]) -> None:
        super().__init__()
        F._adaptive_size(output_size, (1,) * self.dims)  # validate now
        self.output_size = _plain(output_size)
        self._input_shape = None

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) or (C, *S) -> y: (N, C, *output_size) or (C, *output_size)."""
        y = F._adaptive_avg_pool(x, self.dims, self.output_size)
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy x_1 A_1^T x_2 A_2^T ... (the forward is linear in x)."""
        shape = _saved(self, "_input_shape")
        return F._adaptive_avg_pool_backward(grad_output, shape, self.dims, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class _AdaptiveMaxPoolNd(Module):
    dims: int = 0

    def __init__(
        self, output_size: int | None | Sequence[int | None], return_indices: bool = False
    ) -> None:
        super().__init__()
        F._adaptive_size(output_size, (1,) * self.dims)  # validate now
        self.output_size = _plain(output_size)
        self.return_indices = bool(return_indices)
        self._indices = None
        self._input_shape = None

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) or (C, *S) -> y: (N, C, *output_size) or (C, *output_size);
        ``(y, indices)`` with ``return_indices``."""
        y, self._indices = F._adaptive_max_pool(x, self.dims, self.output_size, True)
        self._input_shape = tuple(x.shape)
        return (y, self._indices) if self.return_indices else y

    def backward(self, grad_output: Any) -> Any:
        """dx[i] = sum of dy[o] over the outputs o whose maximum is x[i]."""
        indices = _saved(self, "_indices")
        return F._adaptive_max_pool_backward(grad_output, indices, self._input_shape, self.dims)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


_ADAPTIVE_DOC = """{kind} pooling to a fixed output size, as ``torch.nn.Adaptive{name}Pool{dims}d``.

    Input {shape} or unbatched. Output cell ``i`` pools, in each spatial dimension of
    size ``n`` pooled to ``o``, the input cells ``[floor(i n / o), ceil((i+1) n / o))``.

    Parameters
    ----------
    output_size : {size_type}
        0 gives an empty output.{none_note}{indices}
    """
_INDICES_DOC = """
    return_indices : bool
        ``forward`` also returns PyTorch's int64 indices (flat positions of the maxima
        in each input plane), as ``(y, indices)``."""


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    dims = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    dims = 3


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    dims = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    dims = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    dims = 3


for _cls, _dims, _shape in (
    (AdaptiveAvgPool1d, 1, "(N, C, L)"),
    (AdaptiveAvgPool2d, 2, "(N, C, H, W)"),
    (AdaptiveAvgPool3d, 3, "(N, C, D, H, W)"),
    (AdaptiveMaxPool1d, 1, "(N, C, L)"),
    (AdaptiveMaxPool2d, 2, "(N, C, H, W)"),
    (AdaptiveMaxPool3d, 3, "(N, C, D, H, W)"),
):
    _max = issubclass(_cls, _AdaptiveMaxPoolNd)
    _cls.__doc__ = _ADAPTIVE_DOC.format(
        kind="Max" if _max else "Average",
        name="Max" if _max else "Avg",
        dims=_dims,
        shape=_shape,
        size_type="int or (int,)" if _dims == 1 else f"int or {_dims} ints or Nones",
        none_note="" if _dims == 1 else " None keeps that input size.",
        indices=_INDICES_DOC if _max else "",
    )
del _cls, _dims, _shape, _max
