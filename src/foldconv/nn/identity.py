"""The identity layer, as ``torch.nn.Identity``."""

from __future__ import annotations

from typing import Any

from foldconv.nn.module import Module

__all__ = ["Identity"]


class Identity(Module):
    """y = x, dx = dy. Takes and ignores any arguments, as ``torch.nn.Identity`` does, so
    that it can stand in for another layer without changing the call that builds it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        """x: any shape -> x itself."""
        return x

    def backward(self, grad_output: Any) -> Any:
        """dx = dy (returned as is)."""
        return grad_output
