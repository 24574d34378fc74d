"""Dropout layer (inverted dropout, seedable)."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.functional.dropout import (
    _check_p,
    channel_dropout_backward,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    dropout_backward,
)
from foldconv.nn.init import get_generator
from foldconv.nn.module import Module

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]


class _DropoutBase(Module):
    """What element and channel dropout share: p, inplace, the generator, the kept mask."""

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.inplace = bool(inplace)
        self._rng = None if rng is None else get_generator(rng)
        self._mask = None
        self._forward_called = False

    def _forward_mask(self) -> Any:
        """The mask the last forward kept (None: identity), for the backward."""
        if not self._forward_called:
            raise RuntimeError(f"{type(self).__name__}: backward() called before forward()")
        return self._mask


class Dropout(_DropoutBase):
    """Zero each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    The identity in eval mode. Shapes: any input -> output of the same shape and dtype.

    Parameters
    ----------
    p : float in [0, 1]
    inplace : bool
        Multiply the input array by the mask in place (training only).
    rng : numpy.random.Generator, int seed or None
        A Generator is used as is and an int seeds a generator of this layer's own, so
        masks are reproducible; None draws from the global generator at each call
        (see :func:`foldconv.nn.manual_seed`).
    """

    def forward(self, x: Any) -> Any:
        """x: (*) -> y: (*), same dtype; the mask is kept for the backward."""
        y, mask = dropout(x, self.p, self.training, self._rng)
        if self.inplace and mask is not None and hasattr(x, "__setitem__"):
            x *= mask
            y = x
        self._mask = mask
        self._forward_called = True
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * mask, the forward's scaled mask (dy itself in eval or for p = 0)."""
        return dropout_backward(grad_output, self._forward_mask())

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


class _DropoutNd(_DropoutBase):
    """Channel dropout: each channel of each sample is zeroed with probability ``p``."""

    _function: Any = None

    def forward(self, x: Any) -> Any:
        """x -> y of the same shape and dtype; the per-channel mask is kept for backward."""
        y, mask = type(self)._function(x, self.p, self.training, self.inplace, rng=self._rng)
        self._mask = mask
        self._forward_called = True
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx = dy * mask, the forward's per-channel scaled mask (dy itself in eval)."""
        return channel_dropout_backward(grad_output, self._forward_mask())

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout1d(_DropoutNd):
    """Zero whole channels of (N, C, L) or (C, L) input, as ``torch.nn.Dropout1d``.

    Kept channels are scaled by 1/(1-p); the identity in eval mode.

    Parameters
    ----------
    p : float in [0, 1]
    inplace : bool
    rng : numpy.random.Generator, int seed or None
        As for :class:`Dropout`.
    """

    _function = staticmethod(dropout1d)


class Dropout2d(_DropoutNd):
    """Zero whole channels of (N, C, H, W) input, as ``torch.nn.Dropout2d``.

    A 3D input is read as (N, C, L), with a warning, as torch does.

    Parameters
    ----------
    p, inplace, rng
        As for :class:`Dropout1d`.
    """

    _function = staticmethod(dropout2d)


class Dropout3d(_DropoutNd):
    """Zero whole channels of (N, C, D, H, W) or (C, D, H, W) input, as ``torch.nn.Dropout3d``.

    Parameters
    ----------
    p, inplace, rng
        As for :class:`Dropout1d`.
    """

    _function = staticmethod(dropout3d)
