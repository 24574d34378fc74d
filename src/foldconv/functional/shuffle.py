"""Pixel shuffle (sub-pixel convolution's rearrangement) and its inverse.

Both are permutations of the elements, so each one's gradient is the other one:
pixel_shuffle's adjoint is pixel_unshuffle with the same factor, and vice versa.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.functional.activation import _as_float_array

__all__ = [
    "pixel_shuffle",
    "pixel_shuffle_backward",
    "pixel_unshuffle",
    "pixel_unshuffle_backward",
]


def _check_factor(factor: Any, name: str) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {type(factor).__name__}")
    if factor < 1:
        raise ValueError(f"{name}: expected a positive int, got {factor}")
    return int(factor)


def _check_rank(x: Any, name: str) -> None:
    if x.ndim < 3:
        raise ValueError(
            f"{name}: expected at least 3 dims (*, C, H, W), got shape {tuple(x.shape)}"
        )


def pixel_shuffle(input: Any, upscale_factor: int) -> Any:
    """(*, C r^2, H, W) -> (*, C, H r, W r), as ``torch.nn.functional.pixel_shuffle``.

    ``y[..., c, h r + i, w r + j] = x[..., c r^2 + i r + j, h, w]``.

    Parameters
    ----------
    input : ndarray, shape (*, C * r**2, H, W)
    upscale_factor : int r >= 1

    Returns
    -------
    ndarray, shape (*, C, H * r, W * r), the dtype of ``input``
    """
    x = _as_float_array(input, "input")
    r = _check_factor(upscale_factor, "upscale_factor")
    _check_rank(x, "input")
    *lead, c, h, w = x.shape
    if c % (r * r):
        raise ValueError(
            f"input: expected channels divisible by upscale_factor**2 = {r * r}, got {c}"
        )
    y = x.reshape(*lead, c // (r * r), r, r, h, w)
    k = len(lead)
    y = y.transpose(*range(k), k, k + 3, k + 1, k + 4, k + 2)
    return y.reshape(*lead, c // (r * r), h * r, w * r)


def pixel_unshuffle(input: Any, downscale_factor: int) -> Any:
    """(*, C, H r, W r) -> (*, C r^2, H, W), as ``torch.nn.functional.pixel_unshuffle``.

    The inverse of :func:`pixel_shuffle`. For empty inputs the result has this shape too
    (torch 2.13 returns an empty input unchanged there).

    Parameters
    ----------
    input : ndarray, shape (*, C, H * r, W * r)
    downscale_factor : int r >= 1

    Returns
    -------
    ndarray, shape (*, C * r**2, H, W), the dtype of ``input``
    """
    x = _as_float_array(input, "input")
    r = _check_factor(downscale_factor, "downscale_factor")
    _check_rank(x, "input")
    *lead, c, hr, wr = x.shape
    if hr % r or wr % r:
        raise ValueError(
            f"input: expected height and width divisible by downscale_factor {r}, got {hr} x {wr}"
        )
    h, w = hr // r, wr // r
    y = x.reshape(*lead, c, h, r, w, r)
    k = len(lead)
    y = y.transpose(*range(k), k, k + 2, k + 4, k + 1, k + 3)
    return y.reshape(*lead, c * r * r, h, w)


def pixel_shuffle_backward(grad_output: Any, upscale_factor: int) -> Any:
    """dx = pixel_unshuffle(dy, r): the adjoint of a permutation is its inverse."""
    return pixel_unshuffle(grad_output, upscale_factor)


def pixel_unshuffle_backward(grad_output: Any, downscale_factor: int) -> Any:
    """dx = pixel_shuffle(dy, r): the adjoint of a permutation is its inverse."""
    return pixel_shuffle(grad_output, downscale_factor)
