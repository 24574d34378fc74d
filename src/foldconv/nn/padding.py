"""Padding layers, as ``torch.nn``'s: ZeroPad, ConstantPad, ReflectionPad, ReplicationPad
and CircularPad, 1-d, 2-d and 3-d.

Each is :func:`foldconv.functional.pad` with a fixed mode; the backward is its adjoint,
:func:`foldconv.functional.pad_backward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from foldconv.functional import padding as F
from foldconv.nn.module import Module

__all__ = [
    "CircularPad1d",
    "CircularPad2d",
    "CircularPad3d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ConstantPad3d",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReflectionPad3d",
    "ReplicationPad1d",
    "ReplicationPad2d",
    "ReplicationPad3d",
    "ZeroPad1d",
    "ZeroPad2d",
    "ZeroPad3d",
]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _padding_tuple(padding: Any, dims: int) -> tuple[int, ...]:
    """An int repeated ``2 * dims`` times, or a sequence of ints kept as given (as torch)."""
    if _is_int(padding):
        return (int(padding),) * (2 * dims)
    if (
        isinstance(padding, Sequence)
        and not isinstance(padding, str)
        and all(_is_int(p) for p in padding)
    ):
        return tuple(int(p) for p in padding)
    order = ", ".join(("left, right", "top, bottom", "front, back")[:dims])
    raise TypeError(
        f"padding: expected an int or a tuple of {2 * dims} ints ({order}), got {padding!r}"
    )


class _PadNd(Module):
    dims: int = 0
    mode: str = "constant"

    def __init__(self, padding: Any) -> None:
        super().__init__()
        self.padding = _padding_tuple(padding, self.dims)
        self.value = 0.0
        self._input_shape: tuple[int, ...] | None = None

    def _check_input_dim(self, x: Any) -> None:
        """Constant, reflect and replicate rely on :func:`pad`'s checks."""

    def forward(self, x: Any) -> Any:
        """x: (*, *S) -> y: (*, *(S + low + high)), same dtype."""
        self._check_input_dim(x)
        value = self.value if self.mode == "constant" else None
        y = F.pad(x, self.padding, self.mode, value)
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx[j] = sum of dy[i] over the output positions i copied from input position j."""
        if self._input_shape is None:
            raise RuntimeError(f"{type(self).__name__}: backward() called before forward()")
        return F.pad_backward(grad_output, self._input_shape, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class _ConstantPadNd(_PadNd):
    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"value: expected a float, got {type(value).__name__}")
        self.value = float(value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ConstantPad1d(_ConstantPadNd):
    """Pad the last dim with ``value``, as ``torch.nn.ConstantPad1d``; negative values crop.

    Parameters
    ----------
    padding : int or (left, right)
    value : float

    Shapes: (*, W) -> (*, W + left + right).
    """

    dims = 1


class ConstantPad2d(_ConstantPadNd):
    """Pad the last two dims with ``value``, as ``torch.nn.ConstantPad2d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom)
    value : float

    Shapes: (*, H, W) -> (*, H + top + bottom, W + left + right).
    """

    dims = 2


class ConstantPad3d(_ConstantPadNd):
    """Pad the last three dims with ``value``, as ``torch.nn.ConstantPad3d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom, front, back)
    value : float

    Shapes: (*, D, H, W) -> (*, D + front + back, H + top + bottom, W + left + right).
    """

    dims = 3


class ZeroPad1d(ConstantPad1d):
    """:class:`ConstantPad1d` with zeros, as ``torch.nn.ZeroPad1d``."""

    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad2d(ConstantPad2d):
    """:class:`ConstantPad2d` with zeros, as ``torch.nn.ZeroPad2d``."""

    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad3d(ConstantPad3d):
    """:class:`ConstantPad3d` with zeros, as ``torch.nn.ZeroPad3d``."""

    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ReflectionPad1d(_PadNd):
    """Mirror the last dim without repeating the edge, as ``torch.nn.ReflectionPad1d``.

    Parameters
    ----------
    padding : int or (left, right), each less than the input's size

    Shapes: (C, W) or (N, C, W) -> (.., W + left + right).
    """

    dims, mode = 1, "reflect"


class ReflectionPad2d(_PadNd):
    """Mirror the last two dims, as ``torch.nn.ReflectionPad2d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom), each less than the size it pads

    Shapes: (C, H, W) or (N, C, H, W) -> (.., H + top + bottom, W + left + right).
    """

    dims, mode = 2, "reflect"


class ReflectionPad3d(_PadNd):
    """Mirror the last three dims, as ``torch.nn.ReflectionPad3d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom, front, back)

    Shapes: (C, D, H, W) or (N, C, D, H, W) -> padded D, H, W.
    """

    dims, mode = 3, "reflect"


class ReplicationPad1d(_PadNd):
    """Repeat the edge of the last dim, as ``torch.nn.ReplicationPad1d``.

    Parameters
    ----------
    padding : int or (left, right)

    Shapes: (C, W) or (N, C, W) -> (.., W + left + right).
    """

    dims, mode = 1, "replicate"


class ReplicationPad2d(_PadNd):
    """Repeat the edges of the last two dims, as ``torch.nn.ReplicationPad2d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom)

    Shapes: (C, H, W) or (N, C, H, W) -> (.., H + top + bottom, W + left + right).
    """

    dims, mode = 2, "replicate"


class ReplicationPad3d(_PadNd):
    """Repeat the edges of the last three dims, as ``torch.nn.ReplicationPad3d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom, front, back)

    Shapes: (C, D, H, W) or (N, C, D, H, W) -> padded D, H, W.
    """

    dims, mode = 3, "replicate"


class _CircularPadNd(_PadNd):
    mode = "circular"

    def _check_input_dim(self, x: Any) -> None:
        # torch's CircularPad layers check the rank themselves, with a ValueError.
        ndim = len(getattr(x, "shape", ()))
        if ndim not in (self.dims + 1, self.dims + 2):
            raise ValueError(
                f"input: expected {self.dims + 1}D or {self.dims + 2}D input (got {ndim}D input)"
            )


class CircularPad1d(_CircularPadNd):
    """Wrap the last dim around, as ``torch.nn.CircularPad1d``.

    Parameters
    ----------
    padding : int or (left, right), each at most the input's size

    Shapes: (C, W) or (N, C, W) -> (.., W + left + right).
    """

    dims = 1


class CircularPad2d(_CircularPadNd):
    """Wrap the last two dims around, as ``torch.nn.CircularPad2d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom)

    Shapes: (C, H, W) or (N, C, H, W) -> (.., H + top + bottom, W + left + right).
    """

    dims = 2


class CircularPad3d(_CircularPadNd):
    """Wrap the last three dims around, as ``torch.nn.CircularPad3d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom, front, back)

    Shapes: (C, D, H, W) or (N, C, D, H, W) -> padded D, H, W.
    """

    dims = 3
