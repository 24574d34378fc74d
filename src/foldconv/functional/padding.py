"""Padding of the spatial dimensions and its adjoint.

:func:`pad` is ``torch.nn.functional.pad`` (flat ``pad`` list, last dimension first;
negative padding crops). It also takes the convolution's form, a sequence of (low, high)
pairs listing the first padded dimension first.

Every mode other than zeros is a gather along each padded axis: padded[i] = x[idx[i]]
with an index map ``idx`` (reflect, replicate, circular). Its adjoint, used by the
convolution's input gradient, scatters the gradient back along the same map:
dx[j] = sum over i with idx[i] = j of dpadded[i]. The zeros mode's adjoint is a crop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv import backend
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
    if backend.gpu_path(xp):
        # One gather launch per padded axis instead of a launch per border position.
        for d, (lo, hi) in enumerate(pads):
            if lo or hi:
                n = in_shape[d]
                idx = pad_index_map(n, lo, hi, mode)
                grad = _gather_adjoint(grad, idx, n, lead + d, ("pad", n, lo, hi, mode), xp)
        return xp.ascontiguousarray(grad)
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


def _gather_adjoint(g: Any, idx: np.ndarray, n: int, axis: int, key: tuple, xp: Any) -> Any:
    """GPU path of a gather's adjoint along ``axis``: dx[j] = sum over idx[i] = j of g[i]
    (idx[i] = -1: no source), as a gather kernel (foldconv.cuda.axis_map): one thread per
    element of dx sums the positions that read it, in increasing i; no atomics."""
    from foldconv.cuda import axis_map  # noqa: PLC0415 - numba.cuda only on the GPU path

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return axis_map.adjoint_table(n, len(idx), [(idx, None)])

    table = axis_map.device_table(xp, key, g.dtype, build)
    return axis_map.apply(xp, g, axis, n, table)


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


def _pad_pairs(x: Any, padding: Any, mode: str = "zeros") -> Any:
    """Pad the last ``len(padding)`` axes of ``x`` (the (low, high) pairs form of :func:`pad`).

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


def _pad_pairs_backward(
    grad_output: Any, input_shape: Any, padding: Any, mode: str = "zeros"
) -> Any:
    """Gradient of :func:`_pad_pairs` with respect to its input (the adjoint map).

    Parameters
    ----------
    grad_output : ndarray, shape (..., *(S + low + high))
    input_shape : tuple of int
        The shape of the unpadded input, (..., *S).
    padding, mode
        As given to :func:`_pad_pairs`.

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


# ----------------------------------------------------------------------------------------
# torch.nn.functional.pad
# ----------------------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _is_pairs(pad: Any) -> bool:
    """True for the convolution's form, a non-empty sequence of (low, high) sequences."""
    return (
        hasattr(pad, "__len__")
        and not isinstance(pad, str)
        and len(pad) > 0
        and all(hasattr(p, "__len__") and not isinstance(p, str) for p in pad)
    )


def _pad_spec(
    shape: tuple[int, ...], pad: Any, mode: Any, value: Any, name: str
) -> tuple[list[tuple[int, int]], str, float]:
    """Validate torch's ``pad`` arguments for an input of ``shape``.

    Returns the (low, high) pairs of the last ``len(pad) // 2`` axes, first axis first, the
    mode and the fill value. The rules (and the errors) are PyTorch's: constant padding
    pads any trailing dims and crops for negative values; reflect, replicate and circular
    pad 1, 2 or 3 dims of a batched or unbatched input, reflect by less than the size,
    circular by at most the size.
    """
    if not isinstance(mode, str) or mode not in PAD_MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    if not isinstance(pad, (tuple, list)) or any(
        isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in pad
    ):
        raise TypeError(
            f"pad: expected a tuple of ints, (low, high) per padded dim, last dim first, "
            f"got {pad!r}"
        )
    if len(pad) % 2:
        raise ValueError(f"pad: expected an even number of values, got {len(pad)}")
    k = len(pad) // 2
    ndim = len(shape)
    if k > ndim:
        raise ValueError(
            f"pad: expected at most 2 values per dim of the {ndim}-d {name}, got {len(pad)}"
        )
    # pad lists the last dim first; pairs[d] belongs to axis ndim - k + d.
    pairs = [(int(pad[2 * (k - 1 - d)]), int(pad[2 * (k - 1 - d) + 1])) for d in range(k)]
    sizes = shape[ndim - k :]
    if mode == "constant":
        fill = 0.0 if value is None else float(value)
        for axis, (n, (lo, hi)) in enumerate(zip(sizes, pairs, strict=True)):
            if n + min(lo, 0) + min(hi, 0) < 0:
                raise ValueError(
                    f"pad: cropping ({lo}, {hi}) removes more than the size {n} of dim "
                    f"{ndim - k + axis} of the {name} of shape {tuple(shape)}"
                )
        return pairs, mode, fill
    if value is not None and float(value) != 0.0:
        raise ValueError(f"value: padding mode {mode!r} takes no value, got {value!r}")
    if k not in (1, 2, 3) or ndim not in (k + 1, k + 2):
        raise ValueError(
            f"pad: {mode} padding takes 2, 4 or 6 values for a 2-d or 3-d, 3-d or 4-d, "
            f"4-d or 5-d {name} respectively, got {len(pad)} values for a {ndim}-d {name}"
        )
    if mode != "circular" and any(s == 0 for s in shape[ndim - k - 1 :]):
        # A batch of 0 is fine; an empty channel or spatial dim has nothing to mirror.
        raise ValueError(
            f"{name}: {mode} padding needs non-empty channel and spatial dims, "
            f"got shape {tuple(shape)}"
        )
    for axis, (n, (lo, hi)) in enumerate(zip(sizes, pairs, strict=True)):
        where = f"dim {ndim - k + axis} of size {n}"
        out = n + lo + hi
        if mode == "reflect" and (lo >= n or hi >= n):
            raise ValueError(
                f"pad: reflect padding must be less than the size, got ({lo}, {hi}) for {where}"
            )
        if mode == "circular":
            if lo > n or hi > n:
                raise ValueError(
                    f"pad: circular padding of more than the size wraps around more than "
                    f"once, got ({lo}, {hi}) for {where}"
                )
            # Negative values crop first, then the rest wraps around the cropped part.
            kept = n - max(-lo, 0) - max(-hi, 0)
            if kept < 0:
                raise ValueError(
                    f"pad: cropping ({lo}, {hi}) removes more than the size of {where}"
                )
            if out > 0 and (kept < 1 or max(lo, 0) > kept or max(hi, 0) > kept):
                raise ValueError(
                    f"pad: circular padding ({lo}, {hi}) wraps around more than the "
                    f"{max(kept, 0)} elements left after cropping {where}"
                )
        if out < (0 if mode == "circular" else 1):
            raise ValueError(f"pad: ({lo}, {hi}) leaves no elements of {where}")
    return pairs, mode, 0.0


def _source_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source index in [0, n) of each of the ``n + lo + hi`` output positions; -1 = fill."""
    if mode == "constant":
        i = np.arange(-lo, n + hi)
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "circular":
        if n + lo + hi <= 0:
            return np.zeros(0, dtype=np.int64)
        start = max(-lo, 0)
        kept = n - start - max(-hi, 0)
        i = np.arange(-max(lo, 0), kept + max(hi, 0))
        return start + np.mod(i, kept)
    # reflect and replicate: the convolution's index map, which also reads negative pads.
    return pad_index_map(n, lo, hi, mode)


def _take_axis(x: Any, idx: np.ndarray, axis: int, fill: float, xp: Any) -> Any:
    """out[..., i, ...] = x[..., idx[i], ...] along ``axis``, ``fill`` where idx[i] = -1."""
    shape = list(x.shape)
    shape[axis] = len(idx)
    inside = idx >= 0
    if not inside.any():
        return xp.full(tuple(shape), fill, dtype=x.dtype)
    out = xp.take(x, xp.asarray(np.where(inside, idx, 0)), axis=axis)
    if not inside.all():
        # Integer positions, not a boolean mask: CuPy would count a mask's hits on the host.
        out[(slice(None),) * axis + (xp.asarray(np.nonzero(~inside)[0]),)] = fill
    return out


def _take_axis_adjoint(g: Any, idx: np.ndarray, n: int, axis: int, xp: Any) -> Any:
    """The adjoint of :func:`_take_axis`: dx[..., j, ...] = sum over idx[i] = j of g[..., i, ...].

    Output positions are added in runs that read consecutive sources (the centre block,
    each circular wrap), so the loop is over the runs, not the positions.
    """
    shape = list(g.shape)
    shape[axis] = n
    out = xp.zeros(tuple(shape), dtype=g.dtype)
    lead = (slice(None),) * axis
    i, m = 0, len(idx)
    while i < m:
        if idx[i] < 0:
            i += 1
            continue
        j = i + 1
        while j < m and idx[j] == idx[j - 1] + 1:
            j += 1
        src = int(idx[i])
        out[lead + (slice(src, src + j - i),)] += g[lead + (slice(i, j),)]
        i = j
    return out


def pad(input: Any, pad: Any, mode: str = "constant", value: float | None = None) -> Any:
    """Pad (or, for negative values, crop) the trailing dims, as ``torch.nn.functional.pad``.

    Parameters
    ----------
    input : ndarray, shape (*, *S)
    pad : tuple of ints
        ``(low_last, high_last, low_second_last, high_second_last, ...)``: ``len(pad) // 2``
        trailing dims are padded, the last one first. Also accepted, for the convolution's
        padding: a sequence of (low, high) pairs, *first* padded dim first, non-negative,
        with mode ``'zeros'`` (the default for that form), ``'reflect'``, ``'replicate'`` or
        ``'circular'``.
    mode : {'constant', 'reflect', 'replicate', 'circular'}
        constant fills with ``value`` and crops for negative values (any number of dims);
        reflect mirrors without repeating the edge (padding < size); replicate repeats the
        edge; circular wraps around (padding <= size; negative values crop first, then the
        rest wraps around the cropped part). The last three pad 1, 2 or 3 dims of a
        (C, *S) or (N, C, *S) input.
    value : float, optional
        The fill of constant padding (default 0); other modes take none.

    Returns
    -------
    ndarray, shape (*, *(S + low + high)), the dtype of ``input``
        Always a new array.
    """
    if _is_pairs(pad):
        legacy_mode = "zeros" if mode == "constant" else mode
        if value is not None and float(value) != 0.0:
            raise ValueError(f"value: the (low, high) pairs form pads with zeros, got {value!r}")
        return _pad_pairs(input, pad, legacy_mode)
    x = as_float_array(input, "input")
    pairs, mode, fill = _pad_spec(tuple(x.shape), pad, mode, value, "input")
    xp = get_array_module(x)
    lead = x.ndim - len(pairs)
    y = x
    for d, (lo, hi) in enumerate(pairs):
        if lo or hi:
            idx = _source_index(x.shape[lead + d], lo, hi, mode)
            y = _take_axis(y, idx, lead + d, fill, xp)
    return y.copy() if y is x else y


def pad_backward(grad_output: Any, input_shape: Any, pad: Any, mode: str = "constant") -> Any:
    """Gradient of :func:`pad` with respect to its input: the adjoint map.

    Each padded dim is a gather ``y[i] = x[idx[i]]`` (constant padding: ``value`` where
    ``idx[i]`` is none), so ``dx[j] = sum over i with idx[i] = j of dy[i]``, dim by dim.

    Parameters
    ----------
    grad_output : ndarray, shape (*, *(S + low + high))
    input_shape : tuple of int
        The shape (*, *S) of the input of :func:`pad`.
    pad, mode
        As given to :func:`pad` (the fill value does not enter the gradient).

    Returns
    -------
    ndarray, shape ``input_shape``, the dtype of ``grad_output``
    """
    if _is_pairs(pad):
        return _pad_pairs_backward(
            grad_output, input_shape, pad, "zeros" if mode == "constant" else mode
        )
    grad_output = as_float_array(grad_output, "grad_output")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape: expected a tuple of ints, got {input_shape!r}") from None
    pairs, mode, _ = _pad_spec(input_shape, pad, mode, None, "input")
    k = len(pairs)
    lead = len(input_shape) - k
    expected = input_shape[:lead] + tuple(
        n + lo + hi for n, (lo, hi) in zip(input_shape[lead:], pairs, strict=True)
    )
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} for input_shape {input_shape} and pad "
            f"{tuple(pad)}, got {tuple(grad_output.shape)}"
        )
    xp = get_array_module(grad_output)
    # float16 sums the gradients of repeated sources in float32, as every kernel here does.
    g = grad_output.astype(compute_dtype(grad_output.dtype), copy=False)
    for d, (lo, hi) in enumerate(pairs):
        if lo or hi:
            n = input_shape[lead + d]
            idx = _source_index(n, lo, hi, mode)
            if backend.gpu_path(xp):
                g = _gather_adjoint(g, idx, n, lead + d, ("torch", n, lo, hi, mode), xp)
            else:
                g = _take_axis_adjoint(g, idx, n, lead + d, xp)
    g = g.astype(grad_output.dtype, copy=False)
    return g.copy() if g is grad_output else g
