"""Dropout (inverted: kept values are scaled by 1/(1-p) in training)."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional.activation import _as_float_array, _check_same_shape

__all__ = ["dropout", "dropout_backward", "dropout_mask"]


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p: expected a float in [0, 1], got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p}")
    return float(p)


def dropout_mask(
    shape: tuple[int, ...],
    p: float,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
    xp: Any = np,
) -> Any:
    """A scaled keep-mask: 1/(1-p) with probability 1-p, else 0 (all zeros when p = 1).

    The uniform draws come from the NumPy generator ``rng`` (so a seed gives the same mask
    on any device) and are moved to the array module ``xp``.

    Parameters
    ----------
    shape : tuple of int
    p : float in [0, 1]
        Probability of dropping an element.
    rng : numpy.random.Generator, int seed or None (the global generator)
    dtype : float dtype of the mask
    xp : array module (numpy or cupy)

    Returns
    -------
    ndarray of ``shape`` and ``dtype``
    """
    # Imported here: foldconv.nn imports this module, so a top-level import would be circular.
    from foldconv.nn.init import get_generator  # noqa: PLC0415

    p = _check_p(p)
    gen = get_generator(rng)
    if p == 1.0:
        return xp.zeros(shape, dtype=dtype)
    keep = gen.random(size=shape) >= p
    mask = keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
    return mask if xp is np else xp.asarray(mask)


def dropout(
    x: Any,
    p: float = 0.5,
    training: bool = True,
    rng: np.random.Generator | int | None = None,
) -> tuple[Any, Any]:
    """y = x * mask, mask from :func:`dropout_mask` (identity when not training or p = 0).

    Parameters
    ----------
    x : ndarray, any shape
    p : float in [0, 1]
    training : bool
    rng : numpy.random.Generator, int seed or None

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
        ``x`` itself when nothing is dropped.
    mask : ndarray of the shape of ``x``, or None
        What :func:`dropout_backward` needs; None for the identity.
    """
    x = _as_float_array(x, "x")
    p = _check_p(p)
    if not training or p == 0.0:
        return x, None
    mask = dropout_mask(tuple(x.shape), p, rng, dtype=x.dtype, xp=get_array_module(x))
    return x * mask, mask


def dropout_backward(grad_output: Any, mask: Any) -> Any:
    """dx = dy * mask, the same scaled mask as the forward (dy itself if mask is None)."""
    if mask is None:
        return grad_output
    _check_same_shape(grad_output, mask, "grad_output", "mask")
    return grad_output * mask
