"""Resampling: ``interpolate`` (nearest, nearest-exact, linear, bilinear, trilinear) and its
adjoint, and the pixel-index rules they share with PyTorch.

Every mode is separable: along each spatial axis the output is a fixed linear map of the
input, ``y[o] = sum_i A[o, i] x[i]``, with one tap (nearest: ``A[o, src(o)] = 1``) or two
(linear: ``A[o, i0] = 1 - l``, ``A[o, i1] = l``). The forward gathers the taps axis by
axis; the backward is the adjoint, ``dx[i] = sum_o A[o, i] dy[o]``, scattered axis by axis.
The source indices and weights follow PyTorch's kernels exactly (``UpSample.h``):

- nearest: ``src = min(floor(o * s), n_in - 1)`` in float32, ``s = 1 / scale_factor`` when
  a scale factor reaches the kernel, else ``n_in / n_out``; in 2-d, an output of the input's
  size or of twice it copies or halves the index (``o`` or ``o >> 1``) whatever the scale.
  (torch 2.13's backward takes these shortcuts in 1-d and 3-d too, where its forward does
  not, so there its gradient is not that of its forward; ours is the adjoint of the
  forward, which finite differences confirm.)
- nearest-exact: ``src = min(floor((o + 0.5) * s), n_in - 1)``.
- linear: ``r = s * o`` (align_corners) or ``max(s * (o + 0.5) - 0.5, 0)``, with
  ``s = (n_in - 1) / (n_out - 1)`` (align_corners; 0 for one output) or as for nearest;
  ``i0 = min(floor(r), n_in - 1)``, ``i1 = min(i0 + 1, n_in - 1)``, ``l = clip(r - i0, 0, 1)``;
  an output of the input's size copies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv import backend
from foldconv.backend import get_array_module
from foldconv.functional._args import as_float_array, compute_dtype

__all__ = ["interpolate", "interpolate_backward"]

LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3}
MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _resolve(
    shape: tuple[int, ...],
    size: Any,
    scale_factor: Any,
    mode: Any,
    align_corners: Any,
    recompute_scale_factor: Any,
    name: str = "input",
) -> tuple[list[int], list[float | None], bool]:
    """Output sizes, the scales the kernel sees, and align_corners, by torch's rules."""
    if not isinstance(mode, str) or mode not in MODES:
        extra = " (bicubic and area are not implemented)" if mode in ("bicubic", "area") else ""
        raise ValueError(
            f"mode: expected one of {', '.join(map(repr, MODES))}{extra}, got {mode!r}"
        )
    if mode in ("nearest", "nearest-exact"):
        if align_corners is not None:
            raise ValueError(
                f"align_corners: only the modes linear, bilinear and trilinear take it, "
                f"got align_corners={align_corners!r} with mode {mode!r}"
            )
        align = False
    else:
        align = bool(align_corners) if align_corners is not None else False
    if len(shape) not in (3, 4, 5):
        raise ValueError(
            f"{name}: expected a 3D, 4D or 5D (N, C, *spatial) input, got shape {tuple(shape)}"
        )
    dims = len(shape) - 2
    if mode in LINEAR_MODES and LINEAR_MODES[mode] != dims:
        raise ValueError(
            f"mode: {mode!r} needs a {LINEAR_MODES[mode] + 2}D input, got {len(shape)}D"
        )
    spatial = list(shape[2:])
    if size is not None and scale_factor is not None:
        raise ValueError("size: only one of size or scale_factor should be given")
    if size is None and scale_factor is None:
        raise ValueError("size: either size or scale_factor should be given")
    if recompute_scale_factor is not None and recompute_scale_factor and size is not None:
        raise ValueError("recompute_scale_factor: not meaningful with an explicit size")
    scales: list[float | None]
    if size is not None:
        sizes = list(size) if isinstance(size, (list, tuple)) else [size] * dims
        if len(sizes) != dims:
            raise ValueError(
                f"size: expected {dims} output sizes for the spatial dims {spatial}, "
                f"got {tuple(sizes)}"
            )
        if not all(_is_int(s) for s in sizes):
            raise TypeError(f"size: expected an int or a tuple of ints, got {size!r}")
        out = [int(s) for s in sizes]
        scales = [None] * dims
        what = "size"
    else:
        factors = (
            list(scale_factor) if isinstance(scale_factor, (list, tuple)) else [scale_factor] * dims
        )
        if len(factors) != dims:
            raise ValueError(
                f"scale_factor: expected {dims} factors for the spatial dims {spatial}, "
                f"got {tuple(factors)}"
            )
        if not all(_is_number(f) for f in factors):
            raise TypeError(
                f"scale_factor: expected a float or a tuple of floats, got {scale_factor!r}"
            )
        factors = [float(f) for f in factors]
        if recompute_scale_factor:
            # torch: output size in Python, and the kernel then uses n_in / n_out.
            out = [math.floor(float(n) * f) for n, f in zip(spatial, factors, strict=True)]
            scales = [None] * dims
        else:
            # torch's kernel: the size truncated from n_in * scale, the scale kept.
            out = [int(float(n) * f) for n, f in zip(spatial, factors, strict=True)]
            scales = list(factors)
        what = "scale_factor"
    if shape[1] == 0 or any(n <= 0 for n in spatial):
        # A batch of 0 is fine; torch rejects an empty channel or spatial dim.
        raise ValueError(
            f"{name}: expected channel and spatial sizes greater than 0, got shape {tuple(shape)}"
        )
    if any(n <= 0 for n in out):
        raise ValueError(
            f"{what}: expected output sizes greater than 0, got {tuple(out)} for the "
            f"spatial sizes {tuple(spatial)}"
        )
    return out, scales, align


def _kernel_scale(n_in: int, n_out: int, scale: float | None, dtype: Any) -> Any:
    """torch's compute_scales_value: 1 / scale if a positive scale reached the kernel."""
    if scale is not None and scale > 0.0:
        return dtype(1.0 / scale)
    return dtype(n_in) / dtype(n_out)


def _nearest_index(
    n_in: int, n_out: int, scale: float | None, exact: bool, shortcuts: bool
) -> np.ndarray:
    """The source index of each output position (float32 arithmetic, as torch's kernel).

    ``shortcuts``: an output of the input's size copies and one of twice it halves the
    index, whatever the scale (torch 2.13's 2-d nearest forward does this; its 1-d and 3-d
    forwards apply the formula).
    """
    o = np.arange(n_out)
    if shortcuts and not exact:
        if n_out == n_in:
            return o
        if n_out == 2 * n_in:
            return o >> 1
    s = _kernel_scale(n_in, n_out, scale, np.float32)
    if exact:
        src = np.floor(((o + 0.5) * np.float64(s)).astype(np.float32))
    else:
        src = np.floor(o.astype(np.float32) * s)
    return np.minimum(src.astype(np.int64), n_in - 1)


def _linear_taps(
    n_in: int, n_out: int, scale: float | None, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight l of y[o] = (1 - l) x[i0] + l x[i1] (float64)."""
    o = np.arange(n_out)
    if n_out == n_in:
        return o, o, np.zeros(n_out)
    if align_corners:
        s = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        real = s * o
    else:
        s = _kernel_scale(n_in, n_out, scale, np.float64)
        real = np.maximum(s * (o + 0.5) - 0.5, 0.0)
    # torch floors in float32 (floorf); l is then clamped to [0, 1].
    i0 = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), n_in - 1)
    lam = np.clip(real - i0, 0.0, 1.0)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, lam


def _taps(n_in: int, n_out: int, scale: float | None, mode: str, align: bool, dims: int) -> list:
    """[(index, weight or None), ...] of one axis of a ``dims``-d resampling."""
    if mode in ("nearest", "nearest-exact"):
        exact = mode == "nearest-exact"
        return [(_nearest_index(n_in, n_out, scale, exact, shortcuts=dims == 2), None)]
    i0, i1, lam = _linear_taps(n_in, n_out, scale, align)
    return [(i0, 1.0 - lam), (i1, lam)]


def _gather_last(x: Any, taps: list, xp: Any) -> Any:
    """y[..., o] = sum over taps of w[o] * x[..., idx[o]]."""
    y = None
    for idx, w in taps:
        term = xp.take(x, xp.asarray(idx), axis=-1)
        if w is not None:
            term = term * xp.asarray(w, dtype=x.dtype)
        y = term if y is None else y + term
    return y


def _scatter_last(g: Any, taps: list, n_in: int, xp: Any) -> Any:
    """The adjoint of :func:`_gather_last`: dx[..., i] = sum over idx[o] = i of w[o] g[..., o].

    Each index array is non-decreasing, so outputs sharing a source are contiguous; adding
    the r-th output of every run at once touches distinct sources, and a few such passes
    (as many as the longest run) do the whole scatter without a duplicate-index write.
    """
    dx = xp.zeros(g.shape[:-1] + (n_in,), dtype=g.dtype)
    for idx, w in taps:
        first = np.searchsorted(idx, idx, side="left")
        rank = np.arange(len(idx)) - first
        for r in range(int(rank.max()) + 1 if len(idx) else 0):
            sel = np.nonzero(rank == r)[0]
            term = g[..., xp.asarray(sel)]
            if w is not None:
                term = term * xp.asarray(w[sel], dtype=g.dtype)
            dx[..., xp.asarray(idx[sel])] += term
    return dx


def _gpu_axis(
    y: Any, axis: int, n_in: int, n_out: int, scale: Any, mode: str, align: bool, adjoint: bool
) -> Any:
    """GPU path of one axis of :func:`interpolate` (``adjoint``: of its backward): the taps
    as a gather kernel (foldconv.cuda.axis_map). The backward's scatter becomes a gather
    too: each input position sums, in a fixed order, the outputs that read it."""
    from foldconv.cuda import axis_map  # noqa: PLC0415 - numba.cuda only on the GPU path

    dims = y.ndim - 2
    xp = get_array_module(y)

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        taps = _taps(n_in, n_out, scale, mode, align, dims)
        return (axis_map.adjoint_table if adjoint else axis_map.forward_table)(n_in, n_out, taps)

    key = ("interpolate", adjoint, n_in, n_out, scale, mode, align, dims)
    table = axis_map.device_table(xp, key, y.dtype, build)
    return axis_map.apply(xp, y, axis, n_in if adjoint else n_out, table)


def interpolate(
    input: Any,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Any:
    """Resize the spatial dims, as ``torch.nn.functional.interpolate``.

    Parameters
    ----------
    input : ndarray, shape (N, C, *S), 1 to 3 spatial dims
    size : int or tuple of ints, optional
        The output's spatial size (one of ``size`` and ``scale_factor``).
    scale_factor : float or tuple of floats, optional
        Output size ``floor(S * scale_factor)``; the kernel then maps with ``1 / scale``
        unless ``recompute_scale_factor`` (which maps with ``S / output size``).
    mode : {'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear'}
        The linear modes need 1, 2 and 3 spatial dims respectively.
    align_corners : bool, optional
        Linear modes only (default False): corner pixels' centres are aligned.
    recompute_scale_factor : bool, optional
    antialias : bool
        Must be False (anti-aliased downsampling is not implemented).

    Returns
    -------
    ndarray, shape (N, C, *size), the dtype of ``input``
    """
    x = as_float_array(input, "input")
    if antialias:
        raise ValueError("antialias: anti-aliased interpolation is not implemented, got True")
    out, scales, align = _resolve(
        tuple(x.shape), size, scale_factor, mode, align_corners, recompute_scale_factor
    )
    xp = get_array_module(x)
    dtype = x.dtype
    y = x.astype(compute_dtype(dtype), copy=False)
    for d in range(x.ndim - 2):
        axis = 2 + d
        if backend.gpu_path(xp):
            y = _gpu_axis(y, axis, x.shape[axis], out[d], scales[d], mode, align, False)
            continue
        taps = _taps(x.shape[axis], out[d], scales[d], mode, align, x.ndim - 2)
        y = xp.moveaxis(_gather_last(xp.moveaxis(y, axis, -1), taps, xp), -1, axis)
    y = xp.ascontiguousarray(y).astype(dtype, copy=False)
    return y.copy() if y is x else y


def interpolate_backward(
    grad_output: Any,
    input_shape: Any,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
) -> Any:
    """Gradient of :func:`interpolate` with respect to its input (the adjoint map).

    Along each spatial axis ``dx[i] = sum_o A[o, i] dy[o]`` with the forward's taps A.

    Parameters
    ----------
    grad_output : ndarray, shape (N, C, *size)
    input_shape : tuple of int
        The shape (N, C, *S) of the input of :func:`interpolate`.
    size, scale_factor, mode, align_corners, recompute_scale_factor
        As given to :func:`interpolate`.

    Returns
    -------
    ndarray, shape ``input_shape``, the dtype of ``grad_output``
    """
    g = as_float_array(grad_output, "grad_output")
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape: expected a tuple of ints, got {input_shape!r}") from None
    out, scales, align = _resolve(
        shape, size, scale_factor, mode, align_corners, recompute_scale_factor, "input_shape"
    )
    expected = shape[:2] + tuple(out)
    if tuple(g.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} for input_shape {shape}, got {tuple(g.shape)}"
        )
    xp = get_array_module(g)
    dtype = g.dtype
    dx = g.astype(compute_dtype(dtype), copy=False)
    for d in range(len(shape) - 2):
        axis = 2 + d
        if backend.gpu_path(xp):
            dx = _gpu_axis(dx, axis, shape[axis], out[d], scales[d], mode, align, True)
            continue
        taps = _taps(shape[axis], out[d], scales[d], mode, align, len(shape) - 2)
        dx = xp.moveaxis(_scatter_last(xp.moveaxis(dx, axis, -1), taps, shape[axis], xp), -1, axis)
    dx = xp.ascontiguousarray(dx).astype(dtype, copy=False)
    return dx.copy() if dx is g else dx
