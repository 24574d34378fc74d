"""Dropout (inverted: kept values are scaled by 1/(1-p) in training)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional.activation import _as_float_array, _check_same_shape

__all__ = [
    "channel_dropout_backward",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "dropout_backward",
    "dropout_mask",
]


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
    # The draws stay on the host, so that a seed gives the same mask on every device; a GPU
    # receives one byte per element (a quarter of a float32 mask) and scales it itself.
    return xp.asarray(keep).astype(dtype) * np.dtype(dtype).type(1.0 / (1.0 - p))


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


def _channel_dropout(
    x: Any, p: float, training: bool, inplace: bool, rng: Any, batched: bool
) -> tuple[Any, Any]:
    """Zero whole channels: one draw per (sample, channel), or per channel if unbatched.

    The mask has shape (N, C, 1, ..., 1) (batched) or (C, 1, ..., 1) and broadcasts over
    the remaining dims; kept channels are scaled by 1/(1-p).
    """
    if not training or p == 0.0:
        return x, None
    lead = 2 if batched else 1
    shape = tuple(x.shape[:lead]) + (1,) * (x.ndim - lead)
    mask = dropout_mask(shape, p, rng, dtype=x.dtype, xp=get_array_module(x))
    if inplace:
        x *= mask
        return x, mask
    return x * mask, mask


def dropout1d(
    input: Any,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[Any, Any]:
    """Channel dropout of 1-d signals, as ``torch.nn.functional.dropout1d``.

    Each channel of each sample is zeroed with probability ``p`` (all its positions
    together); the others are scaled by 1/(1-p). The identity when not training or p = 0.

    Parameters
    ----------
    input : ndarray, shape (N, C, L) or (C, L)
    p : float in [0, 1]
    training : bool
    inplace : bool
        Multiply ``input`` by the mask in place.
    rng : numpy.random.Generator, int seed or None (the global generator)

    Returns
    -------
    y : ndarray, shape and dtype of ``input``
    mask : ndarray, shape (N, C, 1) or (C, 1), or None
        What :func:`channel_dropout_backward` needs; None for the identity.
    """
    x = _as_float_array(input, "input")
    p = _check_p(p)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"input: dropout1d expected a 2D (C, L) or 3D (N, C, L) input, got {x.ndim}D"
        )
    return _channel_dropout(x, p, training, inplace, rng, batched=x.ndim == 3)


def dropout2d(
    input: Any,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[Any, Any]:
    """Channel dropout of 2-d feature maps, as ``torch.nn.functional.dropout2d``.

    As torch does, a 3D input is read as (N, C, L), not as an unbatched (C, H, W), with a
    warning; other ranks but 4D warn and drop along the first two dims.

    Parameters
    ----------
    input : ndarray, shape (N, C, H, W)
    p, training, inplace, rng
        As for :func:`dropout1d`.

    Returns
    -------
    y : ndarray, shape and dtype of ``input``
    mask : ndarray, shape (N, C, 1, 1), or None
    """
    x = _as_float_array(input, "input")
    p = _check_p(p)
    if x.ndim not in (3, 4):
        warnings.warn(
            f"dropout2d: received a {x.ndim}-D input; dropout2d is channel-wise dropout of "
            "3D or 4D inputs (as in torch, which deprecates other ranks)",
            UserWarning,
            stacklevel=2,
        )
    if x.ndim == 3:
        warnings.warn(
            "dropout2d: received a 3D input, read as (N, C, L) with channel-wise 1D dropout "
            "as torch does; use dropout1d for that",
            UserWarning,
            stacklevel=2,
        )
    if x.ndim < 2:
        raise ValueError(f"input: dropout2d needs at least 2 dims (N, C), got {x.ndim}D")
    return _channel_dropout(x, p, training, inplace, rng, batched=True)


def dropout3d(
    input: Any,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    rng: np.random.Generator | int | None = None,
) -> tuple[Any, Any]:
    """Channel dropout of 3-d volumes, as ``torch.nn.functional.dropout3d``.

    Parameters
    ----------
    input : ndarray, shape (N, C, D, H, W) or (C, D, H, W)
        Other ranks warn (as in torch) and are read as unbatched, dropping along dim 0.
    p, training, inplace, rng
        As for :func:`dropout1d`.

    Returns
    -------
    y : ndarray, shape and dtype of ``input``
    mask : ndarray, shape (N, C, 1, 1, 1) or (C, 1, 1, 1), or None
    """
    x = _as_float_array(input, "input")
    p = _check_p(p)
    if x.ndim not in (4, 5):
        warnings.warn(
            f"dropout3d: received a {x.ndim}-D input; dropout3d is channel-wise dropout of "
            "4D or 5D inputs (as in torch, which deprecates other ranks)",
            UserWarning,
            stacklevel=2,
        )
    if x.ndim < 1:
        raise ValueError("input: dropout3d needs at least 1 dim, got a 0-d array")
    return _channel_dropout(x, p, training, inplace, rng, batched=x.ndim == 5)


def channel_dropout_backward(grad_output: Any, mask: Any) -> Any:
    """dx = dy * mask, the forward's per-channel mask broadcast over the other dims.

    The gradient of :func:`dropout1d`, :func:`dropout2d` and :func:`dropout3d`
    (``dy`` itself if ``mask`` is None).
    """
    if mask is None:
        return grad_output
    grad_output = _as_float_array(grad_output, "grad_output")
    if grad_output.ndim != mask.ndim or any(
        m not in (1, g) for g, m in zip(grad_output.shape, mask.shape, strict=True)
    ):
        raise ValueError(
            f"grad_output: expected a shape that the mask of shape {tuple(mask.shape)} "
            f"broadcasts to, got {tuple(grad_output.shape)}"
        )
    return grad_output * mask
