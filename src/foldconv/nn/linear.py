"""Fully-connected layer and flattening."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from foldconv.backend import to_device
from foldconv.functional.linear import flatten, flatten_backward, linear, linear_backward
from foldconv.nn import init
from foldconv.nn.activation import _saved
from foldconv.nn.module import Module, Parameter

__all__ = ["Flatten", "Linear"]


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a non-negative int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name}: expected a non-negative int, got {type(value).__name__} {value!r}"
        ) from None
    if v < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {v}")
    return v


def _check_float_dtype(dtype: Any) -> np.dtype:
    """A parameter dtype: float16/32/64; None is PyTorch's default, float32."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float16, float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float16, float32 or float64, got {dt}")
    return dt


def _on_device(a: np.ndarray, device: Any) -> Any:
    """A new parameter's array on ``device``: None or 'cpu' keeps NumPy, 'cuda' or 'cuda:i'
    moves it to CuPy (as :meth:`Module.to` does; an error naming ``device`` without CuPy)."""
    if device is None:
        return a
    if not isinstance(device, str):
        raise TypeError(
            f"device: expected None, 'cpu' or 'cuda', got {type(device).__name__} {device!r}"
        )
    return to_device(a, device)


class Linear(Module):
    """y = x W^T + b.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    device : None, 'cpu' or 'cuda' (CuPy) for the parameters
    dtype : float dtype of the parameters (None: float32)
    rng : numpy.random.Generator, int seed or None (the global generator)

    Attributes
    ----------
    weight : Parameter, shape (out_features, in_features), initialised U(-k, k),
        k = 1/sqrt(in_features) (PyTorch's default)
    bias : Parameter, shape (out_features,), U(-k, k); None when ``bias=False``

    Shapes: input (*, in_features) -> output (*, out_features), the input's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _check_count(in_features, "in_features")
        self.out_features = _check_count(out_features, "out_features")
        dt = _check_float_dtype(dtype)
        gen = init.get_generator(rng)
        bound = init.default_bound(self.in_features)
        self.weight = Parameter(
            _on_device(init.uniform((self.out_features, self.in_features), bound, gen, dt), device)
        )
        self.bias = (
            Parameter(_on_device(init.uniform((self.out_features,), bound, gen, dt), device))
            if bias
            else None
        )
        self._x = None

    def forward(self, x: Any) -> Any:
        """x: (*, in_features) -> y: (*, out_features)."""
        b = self.bias.data if self.bias is not None else None
        y = linear(x, self.weight.data, b)
        self._x = x
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy W; accumulates dW = dy^T x and db = sum(dy) over the leading axes."""
        x = _saved(self, "_x")
        dx, dw, db = linear_backward(
            grad_output, x, self.weight.data, need_bias_grad=self.bias is not None
        )
        self.weight.accumulate(dw, take=True)
        if self.bias is not None:
            self.bias.accumulate(db, take=True)
        return dx

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Flatten(Module):
    """Merge the axes ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._shape = None

    def forward(self, x: Any) -> Any:
        """x: (d0, ..., d_{n-1}) -> the same with axes start_dim..end_dim merged."""
        y = flatten(x, self.start_dim, self.end_dim)
        self._shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy reshaped to the input's shape."""
        return flatten_backward(grad_output, _saved(self, "_shape"))

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
