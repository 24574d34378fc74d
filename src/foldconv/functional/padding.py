"""Padding of the spatial dimensions and its adjoint.

Every mode other than zeros is a gather along each padded axis: padded[i] = x[idx[i]]
with an index map ``idx`` (reflect, replicate, circular). Its adjoint, used by the
convolution's input gradient, scatters the gradient back along the same map:
dx[j] = sum over i with idx[i] = j of dpadded[i]. The zeros mode's adjoint is a crop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional._args import (
    Pads,
    as_float_array,
    check_mode_fits,
    check_padding_mode,
    compute_dtype,
    parse_padding,
)


def pad_index_map(size: int, low: int, high: int, mode: str) -> np.ndarray:
    """Source index in [0, size) of each of the ``low + size + high`` padded positions."""
    i = np.arange(-low, size + high)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    if mode == "circular":
        return np.mod(i, size)
    if mode == "reflect":
        if size == 1:
            return np.zeros_like(i)
        period = 2 * (size - 1)
        j = np.mod(i, period)
        return np.where(j >= size, period - j, j)
    raise ValueError(f"padding_mode: no index map for mode {mode!r}")


def apply_pad(x: Any, pads: Pads, mode: str) -> Any:
    """Pad the trailing ``len(pads)`` axes of ``x``; returns ``x`` itself when pads are 0."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    xp = get_array_module(x)
    lead = x.ndim - len(pads)
    if mode == "zeros":
        shape = x.shape[:lead] + tuple(
            n + lo + hi for n, (lo, hi) in zip(x.shape[lead:], pads, strict=True)
        )
        out = xp.zeros(shape, dtype=x.dtype)
        inner = tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape[lead:], pads, strict=True))
        out[(Ellipsis,) + inner] = x
        return out
    for d, (lo, hi) in enumerate(pads):
        if lo or hi:
            idx = pad_index_map(x.shape[lead + d], lo, hi, mode)
            x = xp.take(x, xp.asarray(idx), axis=lead + d)
    return x


def pad_adjoint(grad: Any, in_shape: tuple[int, ...], pads: Pads, mode: str) -> Any:
    """The adjoint of :func:`apply_pad`: gradient of the unpadded input (a new array).

    Each padded axis is handled in turn: the centre block is copied, then each border
    position adds its gradient to the source position it was copied from.
    """
    xp = get_array_module(grad)
    lead = grad.ndim - len(pads)
    if mode == "zeros" or all(lo == 0 and hi == 0 for lo, hi in pads):
        inner = tuple(slice(lo, lo + n) for n, (lo, _) in zip(in_shape, pads, strict=True))
        return xp.ascontiguousarray(grad[(Ellipsis,) + inner])
    for d, (lo, hi) in enumerate(pads):
        if not (lo or hi):
            continue
        axis = lead + d
        n = in_shape[d]
        idx = pad_index_map(n, lo, hi, mode)
        g = xp.moveaxis(grad, axis, 0)
        out = g[lo : lo + n].copy()
        for i in list(range(lo)) + list(range(lo + n, lo + n + hi)):
            out[int(idx[i])] += g[i]
        grad = xp.moveaxis(out, 0, axis)
    return xp.ascontiguousarray(grad)


def _check_pad_args(x: Any, padding: Any, mode: Any, name: str) -> tuple[Pads, str]:
    if not hasattr(padding, "__len__") or isinstance(padding, str):
        raise TypeError(
            f"padding: expected a sequence of (low, high) pairs, one per padded dim, "
            f"got {padding!r}"
        )
    ndim = len(padding)
    if ndim < 1 or ndim > x.ndim:
        raise ValueError(
            f"padding: expected between 1 and {x.ndim} (low, high) pairs for a {x.ndim}-d "
            f"{name}, got {len(padding)}"
        )
    for p in padding:
        if not hasattr(p, "__len__") or len(p) != 2:
            raise ValueError(f"padding: expected (low, high) pairs, got {padding!r}")
    pads = parse_padding(padding, ndim, allow_strings=False)
    return pads, check_padding_mode(mode, "mode")


def pad(x: Any, padding: Any, mode: str = "zeros") -> Any:
    """Pad the last ``len(padding)`` axes of ``x``.

    Parameters
    ----------
    x : ndarray, shape (..., *S)
    padding : sequence of (low, high) pairs
        One pair per padded axis, first padded axis first (unlike ``torch.nn.functional.pad``,
        which lists the last axis first).
    mode : {'zeros', 'reflect', 'replicate', 'circular'}
        reflect mirrors without repeating the edge (needs pads < size); replicate
        repeats the edge; circular wraps around (needs pads <= size).

    Returns
    -------
    ndarray, shape (..., *(S + low + high))
        Always a new array.
    """
    x = as_float_array(x, "x")
    pads, mode = _check_pad_args(x, padding, mode, "x")
    spatial = tuple(x.shape[x.ndim - len(pads) :])
    if mode != "zeros":
        check_mode_fits(pads, spatial, mode)
    out = apply_pad(x, pads, mode)
    return out.copy() if out is x else out


def pad_backward(grad_output: Any, input_shape: Any, padding: Any, mode: str = "zeros") -> Any:
    """Gradient of :func:`pad` with respect to its input (the adjoint map).

    Parameters
    ----------
    grad_output : ndarray, shape (..., *(S + low + high))
    input_shape : tuple of int
        The shape of the unpadded input, (..., *S).
    padding, mode
        As given to :func:`pad`.

    Returns
    -------
    ndarray, shape input_shape
    """
    grad_output = as_float_array(grad_output, "grad_output")
    pads, mode = _check_pad_args(grad_output, padding, mode, "grad_output")
    input_shape = tuple(int(s) for s in input_shape)
    k = len(pads)
    expected = input_shape[:-k] + tuple(
        n + lo + hi for n, (lo, hi) in zip(input_shape[-k:], pads, strict=True)
    )
    if len(input_shape) != grad_output.ndim or tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} for input_shape {input_shape} and "
            f"padding {pads}, got {tuple(grad_output.shape)}"
        )
    if mode != "zeros":
        check_mode_fits(pads, input_shape[-k:], mode)
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return grad_output.copy()
    # float16 sums its border contributions in float32, as every kernel here does.
    g = grad_output.astype(compute_dtype(grad_output.dtype), copy=False)
    return pad_adjoint(g, input_shape[-k:], pads, mode).astype(grad_output.dtype, copy=False)
