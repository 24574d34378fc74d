"""Activation layers: ReLU, LeakyReLU, Tanh, Sigmoid, GELU, Softmax, LogSoftmax.

Each keeps the one array its backward needs (the output, or the input where the
derivative is a function of the input) and applies the matching
``foldconv.functional.activation`` backward.
"""

from __future__ import annotations

import warnings
from typing import Any

from foldconv.functional import activation as F
from foldconv.nn.module import Module

__all__ = ["GELU", "LeakyReLU", "LogSoftmax", "ReLU", "Sigmoid", "Softmax", "Tanh"]


def _saved(module: Module, attr: str) -> Any:
    """The array cached by the last forward; RuntimeError if there was none."""
    value = module.__dict__.get(attr)
    if value is None:
        raise RuntimeError(f"{type(module).__name__}: backward() called before forward()")
    return value


def _implicit_dim(name: str, x: Any) -> int:
    """PyTorch's legacy choice for ``dim=None``: axis 0 for 0-d, 1-d and 3-d input (taken
    as unbatched), else axis 1; deprecated there, so it warns here too."""
    ndim = len(getattr(x, "shape", ()))
    warnings.warn(
        f"{name}: implicit dim is deprecated (as in PyTorch); pass dim explicitly",
        UserWarning,
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _into(x: Any, y: Any) -> Any:
    """Write ``y`` over ``x`` (the ``inplace=True`` layers) and return ``x``."""
    if hasattr(x, "__setitem__") and hasattr(x, "dtype") and x.dtype == y.dtype and x is not y:
        x[...] = y
        return x
    return y


class ReLU(Module):
    """y = max(x, 0), element-wise; any input shape.

    Parameters
    ----------
    inplace : bool
        Overwrite the input array with the output (saves memory; the caller's array
        changes, as with PyTorch's ``inplace=True``).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        y = F.relu(x)
        if self.inplace:
            y = _into(x, y)
        self._y = y
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * [y > 0]."""
        return F.relu_backward(grad_output, _saved(self, "_y"))

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """y = x for x > 0, negative_slope * x otherwise; any input shape."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)
        if self.inplace and self.negative_slope < 0:
            # The backward needs the sign of x, which a negative slope's output no longer
            # shows once x is overwritten.
            raise ValueError(
                f"negative_slope: expected >= 0 with inplace=True, got {self.negative_slope}"
            )
        self._x = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        y = F.leaky_relu(x, self.negative_slope)
        if self.inplace:
            y = _into(x, y)
        # The backward needs the sign of x; for a slope >= 0 the output has the same sign
        # test (y > 0 iff x > 0), and it survives an in-place forward.
        self._x = y if self.negative_slope >= 0 else x
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy for x > 0, negative_slope * dy otherwise."""
        return F.leaky_relu_backward(grad_output, _saved(self, "_x"), self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Tanh(Module):
    """y = tanh(x); any input shape."""

    def __init__(self) -> None:
        super().__init__()
        self._y = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        self._y = F.tanh(x)
        return self._y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * (1 - y^2)."""
        return F.tanh_backward(grad_output, _saved(self, "_y"))


class Sigmoid(Module):
    """y = 1 / (1 + exp(-x)); any input shape."""

    def __init__(self) -> None:
        super().__init__()
        self._y = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        self._y = F.sigmoid(x)
        return self._y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * y * (1 - y)."""
        return F.sigmoid_backward(grad_output, _saved(self, "_y"))


class GELU(Module):
    """y = x * Phi(x) (``approximate='none'``) or its tanh approximation; any shape.

    Parameters
    ----------
    approximate : {'none', 'tanh'}
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = F._check_approximate(approximate)
        self._x = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        y = F.gelu(x, self.approximate)
        self._x = x
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * (Phi(x) + x phi(x)) (see :func:`foldconv.functional.gelu_backward`)."""
        return F.gelu_backward(grad_output, _saved(self, "_x"), self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Softmax(Module):
    """y = exp(x) / sum(exp(x)) along ``dim`` (computed stably).

    Parameters
    ----------
    dim : int or None
        The axis whose entries sum to one; None picks PyTorch's legacy default (axis 0
        for 0-d, 1-d and 3-d input, else 1) with a warning.
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"dim: expected an int or None, got {type(dim).__name__}")
        self.dim = dim
        self._dim = dim  # the axis the last forward used
        self._y = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        self._dim = _implicit_dim("Softmax", x) if self.dim is None else self.dim
        self._y = F.softmax(x, self._dim)
        return self._y

    def backward(self, grad_output: Any) -> Any:
        """dx = y * (dy - sum(dy * y, dim))."""
        return F.softmax_backward(grad_output, _saved(self, "_y"), self._dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """y = x - logsumexp(x) along ``dim`` (computed stably).

    Parameters
    ----------
    dim : int or None
        As for :class:`Softmax`.
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"dim: expected an int or None, got {type(dim).__name__}")
        self.dim = dim
        self._dim = dim  # the axis the last forward used
        self._y = None

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype."""
        self._dim = _implicit_dim("LogSoftmax", x) if self.dim is None else self.dim
        self._y = F.log_softmax(x, self._dim)
        return self._y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy - exp(y) * sum(dy, dim)."""
        return F.log_softmax_backward(grad_output, _saved(self, "_y"), self._dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
