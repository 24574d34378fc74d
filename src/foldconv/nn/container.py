"""Containers: :class:`Sequential` (from :mod:`foldconv.nn.module`) and :class:`Residual`."""

from __future__ import annotations

from typing import Any

from foldconv.nn.module import Module, Sequential

__all__ = ["Residual", "Sequential"]


class Residual(Module):
    """y = body(x) + shortcut(x), or body(x) + x without a shortcut (identity skip).

    The backward sums the input gradients of the two branches:
    dx = body.backward(dy) + shortcut.backward(dy)  (dx = body.backward(dy) + dy for the
    identity).

    Parameters
    ----------
    body : Module
        Must map x to an array of the shape of the shortcut's output.
    shortcut : Module or None
        E.g. a 1x1 convolution with batch norm where the body changes the shape.

    Children are named ``body`` and ``shortcut`` (parameter names ``body.0.weight``, ...).
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"body: expected a Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"shortcut: expected a Module or None, got {type(shortcut).__name__}")
        self.body = body
        self.add_module("shortcut", shortcut)

    def forward(self, x: Any) -> Any:
        """x -> body(x) + shortcut(x); the two shapes must agree."""
        shortcut = self._modules["shortcut"]
        out = self.body(x)
        skip = x if shortcut is None else shortcut(x)
        if tuple(out.shape) != tuple(skip.shape):
            what = "x" if shortcut is None else "shortcut(x)"
            raise ValueError(
                f"body: expected an output of the shape of {what} {tuple(skip.shape)}, "
                f"got {tuple(out.shape)}"
            )
        return out + skip

    def backward(self, grad_output: Any) -> Any:
        """dx = d body / dx^T dy + d shortcut / dx^T dy (dy itself for the identity)."""
        shortcut = self._modules["shortcut"]
        dx = self.body.backward(grad_output)
        if shortcut is None:
            return dx + grad_output
        return dx + shortcut.backward(grad_output)
