"""Pooling: max, average, adaptive average and adaptive max (1-d/2-d/3-d), with backward passes.

All three follow PyTorch's semantics exactly (output sizes, ``ceil_mode``, padding,
divisors, tie-breaking), so that a network ported from PyTorch gives the same numbers.

Geometry (per spatial dimension, input size ``n``, kernel ``k``, stride ``s``,
padding ``p``, dilation ``d``)::

    out = floor((n + 2p - d(k-1) - 1 + (s-1 if ceil_mode else 0)) / s) + 1
    if ceil_mode and (out - 1) s >= n + p:   out -= 1   # last window must start in x or left pad

Window ``o`` reads the padded input at ``o*s + t*d`` for taps ``t = 0..k-1``.

The implementation loops over the ``prod(k)`` kernel taps, never over output
positions: tap ``t`` of every window at once is the strided view
``x_pad[..., t*d : t*d + (out-1)*s + 1 : s]``, so each step is one vectorised
operation on an output-sized array.

Max pooling on float32/float64 NumPy arrays runs compiled instead where Numba is
installed (:mod:`foldconv.functional.pooling_compiled`: one sweep per (n, c) plane, on
foldconv's thread pool), with the same results to the last bit;
``foldconv.set_compiled(False)`` keeps it on the tap loops below.

On the GPU (CuPy arrays) each function is instead one numba-cuda kernel launch
(:mod:`foldconv.cuda.pooling`): a thread per output element for the forwards, and for
the backwards a gather, a thread per input element summing over the windows that contain
it (deterministic, no atomics), with the same results (ties, NaN, divisors) as here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from foldconv.backend import get_array_module, gpu_path
from foldconv.functional import pooling_compiled
from foldconv.functional._args import as_float_array, compute_dtype, int_tuple

__all__ = [
    "adaptive_avg_pool1d",
    "adaptive_avg_pool1d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool3d_backward",
    "adaptive_max_pool1d",
    "adaptive_max_pool1d_backward",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d",
    "adaptive_max_pool3d_backward",
    "avg_pool1d",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool3d",
    "avg_pool3d_backward",
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool_backward",
]

# The NumPy max-pool backward scatters with np.bincount (float64 bins); it works on
# groups of (N, C) planes whose bins stay under this many bytes (cache-sized groups run
# ~2.5x faster than one big group: AlexNet's pool1, 4.5 ms against 12 ms).
_BINCOUNT_BYTES = 2 * 1024 * 1024
# The tap loops work on blocks of (N, C) planes with about this many bytes of output.
_BLOCK_BYTES = 512 * 1024


# -- arguments and geometry ----------------------------------------------------------------
def _is_seq(a: Any) -> bool:
    return isinstance(a, Sequence) and not isinstance(a, str)


def _resolve_dims(dims: Any, *args: Any) -> int:
    """Spatial rank: ``dims`` if given, else the longest tuple among ``args``.

    (A 1-tuple stands for every dimension, as in PyTorch, so it decides the rank only
    when no longer tuple is given.)
    """
    if dims is None:
        lengths = [len(a) for a in args if _is_seq(a) and len(a) > 0]
        if not lengths:
            raise ValueError(
                "dims: expected 1, 2 or 3 (the spatial rank) when kernel_size, stride, "
                "padding and dilation are all ints, got None"
            )
        dims = max(lengths)
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims not in (1, 2, 3):
        raise ValueError(f"dims: expected 1, 2 or 3, got {dims!r}")
    return int(dims)


def _pool_tuple(value: Any, dims: int, name: str, minimum: int) -> tuple[int, ...]:
    """PyTorch's parsing of a pooling argument: an int, a 1-tuple (every dimension) or a
    ``dims``-tuple of ints, each >= ``minimum``."""
    if _is_seq(value):
        vals = tuple(value)
        if len(vals) == 1:
            vals = vals * dims
        elif len(vals) != dims:
            raise ValueError(
                f"{name}: expected an int, a 1-tuple or a {dims}-tuple of ints, got {vals!r}"
            )
        return int_tuple(vals, dims, name, minimum=minimum)
    return int_tuple(value, dims, name, minimum=minimum)


def _split_batch(
    x: Any, dims: int, name: str = "x", *, adaptive: bool = False, zero_channels: bool = False
) -> tuple[Any, bool]:
    """(N, C, *S) as is, (C, *S) with a batch axis added; returns (array, was_unbatched).

    Only the batch may be empty, as in PyTorch: a zero-length channel or spatial
    dimension is a ValueError. PyTorch's adaptive pools treat an unbatched input's
    channels as a batch (so they may be 0), and its adaptive average pools of rank 1
    and 2 accept 0 channels in a batched input too (``zero_channels``).
    """
    if x.ndim == dims + 2:
        xb, unbatched = x, False
    elif x.ndim == dims + 1:
        xb, unbatched = x[None], True
    else:
        raise ValueError(
            f"{name}: expected a {dims + 2}-d (N, C, *spatial) or {dims + 1}-d (C, *spatial) "
            f"array for {dims}-d pooling, got shape {tuple(x.shape)}"
        )
    _check_sizes(tuple(x.shape), unbatched, name, adaptive=adaptive, zero_channels=zero_channels)
    return xb, unbatched


def _check_sizes(
    shape: tuple[int, ...], unbatched: bool, name: str, *, adaptive: bool, zero_channels: bool
) -> None:
    """ValueError for an empty channel or spatial dimension (see :func:`_split_batch`)."""
    spatial = shape[1:] if unbatched else shape[2:]
    channels = shape[0] if unbatched else shape[1]
    channels_may_be_empty = (unbatched and adaptive) or (not unbatched and zero_channels)
    if any(n == 0 for n in spatial) or (channels == 0 and not channels_may_be_empty):
        raise ValueError(
            f"{name}: expected non-zero channel and spatial sizes (only the batch may be "
            f"empty), got shape {shape}"
        )


def _check_padding(padding: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    half = tuple(k // 2 for k in kernel)
    if any(p > h for p, h in zip(padding, half, strict=True)):
        raise ValueError(
            f"padding: expected at most half the kernel size (kernel_size // 2 = {half}), "
            f"got {padding}"
        )


def _pool_out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _out_shape(
    in_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool,
    name: str = "x",
) -> tuple[int, ...]:
    out = tuple(
        _pool_out_size(n, k, s, p, d, ceil_mode)
        for n, k, s, p, d in zip(in_shape, kernel, stride, padding, dilation, strict=True)
    )
    if any(o < 1 for o in out):
        raise ValueError(
            f"{name}: expected a spatial size large enough for kernel_size={kernel}, "
            f"stride={stride}, padding={padding}, dilation={dilation} (output size >= 1), "
            f"got spatial size {in_shape}, which gives output size {out}"
        )
    return out


def _pool_args(
    dims: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    kernel = _pool_tuple(kernel_size, dims, "kernel_size", 1)
    # PyTorch: stride None or () means stride = kernel_size
    if stride is None or (_is_seq(stride) and len(stride) == 0):
        stride = kernel
    else:
        stride = _pool_tuple(stride, dims, "stride", 1)
    pad = _pool_tuple(padding, dims, "padding", 0)
    dil = _pool_tuple(dilation, dims, "dilation", 1)
    _check_padding(pad, kernel)
    return kernel, stride, pad, dil


def _padded_extent(
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[tuple[int, int], ...]:
    """(low, high) padding so that every window lies inside the padded array.

    ``high`` may exceed ``padding`` (ceil_mode windows running past it) or be
    smaller (trailing input rows no window reads).
    """
    pads = []
    for n, o, k, s, p, d in zip(
        in_shape, out_shape, kernel, stride, padding, dilation, strict=True
    ):
        needed = (o - 1) * s + d * (k - 1) + 1
        pads.append((p, max(needed - p - n, 0)))
    return tuple(pads)


def _pad(x: Any, pads: tuple[tuple[int, int], ...], value: float) -> Any:
    """x (N, C, *S) with constant padding of the spatial dims (x itself when none is needed)."""
    if not any(lo or hi for lo, hi in pads):
        return x
    xp = get_array_module(x)
    shape = x.shape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[2:], pads, strict=True))
    out = xp.full(shape, value, dtype=x.dtype)
    inner = (slice(None), slice(None)) + tuple(
        slice(lo, lo + n) for n, (lo, _) in zip(x.shape[2:], pads, strict=True)
    )
    out[inner] = x
    return out


def _crop(a: Any, pads: tuple[tuple[int, int], ...], in_shape: tuple[int, ...]) -> Any:
    """The inverse of :func:`_pad`'s placement: the input-sized region of a padded array."""
    if not any(lo or hi for lo, hi in pads):
        return a
    inner = (slice(None), slice(None)) + tuple(
        slice(lo, lo + n) for n, (lo, _) in zip(in_shape, pads, strict=True)
    )
    xp = get_array_module(a)
    return xp.ascontiguousarray(a[inner])


def _tap_views(
    a: Any,
    out_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
):
    """Yield (tap index, view) with view[..., o] = a[..., o*s + t*d] for each kernel tap t.

    Taps are enumerated in row-major order of the kernel (the order PyTorch scans a
    window), which fixes which of several equal maxima wins.
    """
    for t, tap in enumerate(np.ndindex(*kernel)):
        idx = (Ellipsis,) + tuple(
            slice(i * d, i * d + (o - 1) * s + 1, s)
            for i, o, s, d in zip(tap, out_shape, stride, dilation, strict=True)
        )
        yield t, a[idx]


def _argmax_dtype(taps: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if taps - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)  # pragma: no cover - a kernel with > 4e9 taps


@functools.lru_cache(maxsize=256)  # a training step asks for the same few geometries
def _windows_disjoint(
    out_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> bool:
    """True if no input position is read by two (window, tap) pairs.

    Overall injectivity of (o, t) -> o*s + t*d holds iff it holds in every dimension.
    """
    for o, k, s, d in zip(out_shape, kernel, stride, dilation, strict=True):
        pos = (np.arange(o)[:, None] * s + np.arange(k)[None, :] * d).ravel()
        if np.unique(pos).size != pos.size:
            return False
    return True


# -- max pooling -----------------------------------------------------------------------------
def max_pool(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool | Literal["argmax"] = False,
    dims: int | None = None,
) -> Any:
    """N-d max pooling (N = 1, 2, 3), PyTorch's ``max_pool{1,2,3}d``.

    ``y[n, c, o] = max_t x_pad[n, c, o*s + t*d]`` over the kernel taps ``t``, where
    ``x_pad`` is ``x`` padded with ``-inf`` (``padding`` on the left, and on the right as
    far as ``ceil_mode``'s last windows need).

    Parameters
    ----------
    x : ndarray, shape (N, C, *S) or (C, *S)
        float16/32/64 input; ``len(S)`` is the spatial rank. Only N may be 0.
    kernel_size, stride, padding, dilation : int or tuple of ints
        A 1-tuple stands for every dimension; ``stride`` None or () means
        ``kernel_size``; ``padding <= kernel_size // 2``.
    ceil_mode : bool
        Round the output size up (the last window must still start inside the input
        or its left padding).
    return_indices : bool or "argmax"
        ``True``: also return PyTorch's indices (int64, the flat position of each
        maximum inside its (n, c) input plane). ``"argmax"``: also return the compact
        index of the winning kernel tap (row-major over the kernel; uint8 for up to 256
        taps), which :func:`max_pool_backward` uses fastest.
    dims : int, optional
        The spatial rank; without it, the length of the longest tuple among
        kernel_size, stride, padding and dilation.

    Returns
    -------
    y : ndarray, shape (N, C, *O) or (C, *O)
        Same dtype as ``x``.
    indices : ndarray, shape of y
        Only with ``return_indices``.

    Notes
    -----
    Ties go to the first maximal tap in row-major order, and a NaN in a window wins
    (the last NaN, as PyTorch's CPU kernel). A window made only of padding (possible
    only with dilation on tiny inputs) gives ``-inf``, and so does a window whose real
    values are all ``-inf``: its gradient then goes to the padding (is dropped), where
    PyTorch gives it to the first ``-inf``.
    """
    x = as_float_array(x, "x")
    nd = _resolve_dims(dims, kernel_size, stride, padding, dilation)
    kernel, stride_t, pad, dil = _pool_args(nd, kernel_size, stride, padding, dilation)
    if return_indices not in (False, True, "argmax"):
        raise ValueError(
            f"return_indices: expected False, True or 'argmax', got {return_indices!r}"
        )
    xb, unbatched = _split_batch(x, nd)
    in_shape = tuple(xb.shape[2:])
    out_shape = _out_shape(in_shape, kernel, stride_t, pad, dil, bool(ceil_mode))
    xp = get_array_module(xb)
    cdt = compute_dtype(xb.dtype)
    xc = xb.astype(cdt, copy=False)
    if gpu_path(xp):  # one kernel launch: a thread per output scans its window
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        mode = None if not return_indices else "argmax" if return_indices == "argmax" else "flat"
        adt = _argmax_dtype(math.prod(kernel))
        y, idx = gpu.max_pool(xc, out_shape, kernel, stride_t, pad, dil, mode, adt)
        y = y.astype(xb.dtype, copy=False)
        if unbatched:
            y, idx = y[0], (None if idx is None else idx[0])
        return (y, idx) if return_indices else y
    adt = _argmax_dtype(math.prod(kernel)) if return_indices else None
    if pooling_compiled.applies(xc):  # one sweep per plane, bitwise the path below
        y, argmax = pooling_compiled.max_pool(xc, out_shape, kernel, stride_t, pad, dil, adt)
    else:
        y, argmax = _max_pool_numpy(xc, out_shape, kernel, stride_t, pad, dil, adt)
    y = y.astype(xb.dtype, copy=False)
    if unbatched:
        y = y[0]
    if not return_indices:
        return y
    if return_indices == "argmax":
        return y, (argmax[0] if unbatched else argmax)
    flat = _argmax_to_flat(argmax, in_shape, kernel, stride_t, pad, dil)
    return y, (flat[0] if unbatched else flat)


def _max_pool_numpy(xc, out_shape, kernel, stride, padding, dilation, adt):
    """Max pooling of xc (N, C, *S) by a pass per kernel tap: (y, argmax or None)."""
    xp = get_array_module(xc)
    in_shape = tuple(xc.shape[2:])
    pads = _padded_extent(in_shape, out_shape, kernel, stride, padding, dilation)
    xpad = _pad(xc, pads, -np.inf)
    planes = xpad.shape[0] * xpad.shape[1]
    xf = xpad.reshape((planes,) + tuple(xpad.shape[2:]))
    y = xp.empty((planes,) + out_shape, dtype=xc.dtype)
    argmax = None if adt is None else xp.empty(y.shape, dtype=adt)
    for blk in _plane_blocks(xp, planes, math.prod(out_shape) * xc.dtype.itemsize):
        _max_block(
            xf[blk],
            y[blk],
            None if argmax is None else argmax[blk],
            out_shape,
            kernel,
            stride,
            dilation,
        )
    if argmax is not None and bool(xp.isnan(y).any()):
        y, argmax = _max_pool_nan(xf, out_shape, kernel, stride, dilation, argmax.dtype)
    y = y.reshape(xc.shape[:2] + out_shape)
    return y, (None if argmax is None else argmax.reshape(y.shape))


def _plane_blocks(xp: Any, planes: int, plane_bytes: int):
    """Slices of the (N*C) planes, each holding about _BLOCK_BYTES of output.

    The tap loop makes ~4 passes per tap over its output block; with blocks that stay in
    the CPU's cache this runs ~2x faster than whole-array passes (AlexNet's pool1: 8 ms
    against 17 ms). A GPU wants one block: each pass is a kernel launch.
    """
    if xp is not np:
        yield slice(0, planes)
        return
    per = max(1, _BLOCK_BYTES // max(plane_bytes, 1))
    for lo in range(0, planes, per):
        yield slice(lo, min(lo + per, planes))


def _max_block(xf, y, argmax, out_shape, kernel, stride, dilation) -> None:
    """Max pooling of planes xf (B, *padded) into y (B, *O), and the winning taps."""
    xp = get_array_module(xf)
    views = _tap_views(xf, out_shape, kernel, stride, dilation)
    _, first = next(views)
    y[...] = first
    if argmax is None:
        for _, v in views:
            xp.maximum(y, v, out=y)
        return
    adt = argmax.dtype
    argmax[...] = 0
    greater = xp.empty(y.shape, dtype=bool)
    scratch = xp.empty(y.shape, dtype=adt)
    for t, v in views:
        # Taps come in increasing order, so "arg = max(arg, t * [v > y])" records the
        # last tap that strictly raised the running maximum: the first maximal one.
        # (Masked assignment, np.copyto(where=), is ~4x slower in NumPy.)
        xp.greater(v, y, out=greater)
        xp.multiply(greater, adt.type(t), out=scratch)
        xp.maximum(argmax, scratch, out=argmax)
        xp.maximum(y, v, out=y)


def _max_pool_nan(xpad, out_shape, kernel, stride, dilation, adt):
    """The slow path for windows holding NaN: PyTorch's ``val > max or isnan(val)`` scan."""
    xp = get_array_module(xpad)
    views = _tap_views(xpad, out_shape, kernel, stride, dilation)
    _, first = next(views)
    y = xp.array(first, copy=True)
    argmax = xp.zeros(y.shape, dtype=adt)
    for t, v in views:
        take = (v > y) | xp.isnan(v)
        y = xp.where(take, v, y)
        argmax = xp.where(take, adt.type(t), argmax)
    return y, argmax


def _tap_coords(argmax: Any, kernel: tuple[int, ...]) -> list[Any]:
    """Per-dimension tap coordinates of row-major tap indices."""
    coords = []
    rest = argmax.astype(np.int64)
    for k in reversed(kernel):
        coords.append(rest % k)
        rest = rest // k
    return coords[::-1]


def _argmax_to_flat(argmax, in_shape, kernel, stride, padding, dilation):
    """Tap indices -> PyTorch's indices: the flat position in the unpadded (n, c) plane."""
    xp = get_array_module(argmax)
    nd = len(kernel)
    flat = xp.zeros(argmax.shape, dtype=np.int64)
    for dim, tap in enumerate(_tap_coords(argmax, kernel)):
        o = argmax.shape[2 + dim]
        shape = (1,) * (2 + dim) + (o,) + (1,) * (nd - dim - 1)
        start = (xp.arange(o, dtype=np.int64) * stride[dim] - padding[dim]).reshape(shape)
        flat *= in_shape[dim]
        flat += start + tap * dilation[dim]
    return flat


def _flat_to_argmax(indices, in_shape, kernel, stride, padding, dilation):
    """PyTorch's indices -> tap indices (the inverse of :func:`_argmax_to_flat`)."""
    xp = get_array_module(indices)
    nd = len(kernel)
    rest = indices.astype(np.int64)
    taps = []
    for dim in reversed(range(nd)):
        coord = rest % in_shape[dim]
        rest = rest // in_shape[dim]
        o = indices.shape[2 + dim]
        shape = (1,) * (2 + dim) + (o,) + (1,) * (nd - dim - 1)
        start = (xp.arange(o, dtype=np.int64) * stride[dim] - padding[dim]).reshape(shape)
        offset = coord - start
        if bool(((offset < 0) | (offset % dilation[dim] != 0)).any()) or bool(
            (offset // dilation[dim] >= kernel[dim]).any()
        ):
            raise ValueError(
                "indices: expected positions inside each output's pooling window "
                "(as max_pool(..., return_indices=True) returns), got some outside"
            )
        taps.append(offset // dilation[dim])
    argmax = xp.zeros(indices.shape, dtype=np.int64)
    for dim, tap in zip(range(nd), reversed(taps), strict=True):
        argmax = argmax * kernel[dim] + tap
    return argmax.astype(_argmax_dtype(math.prod(kernel)))


def max_pool_backward(
    grad_output: Any,
    indices: Any,
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    dims: int | None = None,
    indices_kind: Literal["argmax", "flat"] = "argmax",
) -> Any:
    """Gradient of :func:`max_pool` with respect to its input.

    ``dx[n, c, i] = sum over windows o whose maximum sits at i of dy[n, c, o]``: each
    output gradient goes to its window's argmax, and contributions add up where
    windows overlap (e.g. 3x3 pooling at stride 2).

    Parameters
    ----------
    grad_output : ndarray, shape (N, C, *O) or (C, *O)
        dL/dy.
    indices : ndarray, shape of grad_output
        From ``max_pool(..., return_indices="argmax")`` (``indices_kind="argmax"``, the
        default) or ``return_indices=True`` (``indices_kind="flat"``).
    input_shape : tuple of ints
        The shape of the forward's ``x``.
    kernel_size, stride, padding, dilation, ceil_mode, dims
        As given to the forward.

    Returns
    -------
    ndarray, shape input_shape
        dL/dx, in grad_output's dtype.

    Notes
    -----
    Deterministic. On NumPy, overlapping windows are scattered with one ``np.bincount``
    per group of planes (float64 sums, in output order); otherwise a loop over the kernel
    taps adds ``dy`` where ``argmax == t`` (and nothing elsewhere: a NaN or inf ``dy``
    reaches its window's winner only, as in PyTorch) into tap ``t``'s strided view, which
    for a fixed tap never hits an input position twice. The compiled kernels (float32/float64, Numba
    installed) do the same sums per plane, bit for bit. Winning-tap indices outside
    ``[0, prod(kernel_size))`` are a ValueError. On the GPU one kernel gathers instead: a thread
    per input element sums, in output order and in float64, the ``dy`` of the windows
    whose winning tap sits on it.
    """
    grad_output = as_float_array(grad_output, "grad_output")
    nd = _resolve_dims(dims, kernel_size, stride, padding, dilation)
    kernel, stride_t, pad, dil = _pool_args(nd, kernel_size, stride, padding, dilation)
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) not in (nd + 1, nd + 2):
        raise ValueError(
            f"input_shape: expected {nd + 2} (N, C, *spatial) or {nd + 1} (C, *spatial) "
            f"entries for {nd}-d pooling, got {input_shape}"
        )
    unbatched = len(input_shape) == nd + 1
    _check_sizes(input_shape, unbatched, "input_shape", adaptive=False, zero_channels=False)
    full_in = (1,) + input_shape if unbatched else input_shape
    in_shape = full_in[2:]
    out_shape = _out_shape(in_shape, kernel, stride_t, pad, dil, bool(ceil_mode), "input_shape")
    expected = input_shape[: len(input_shape) - nd] + out_shape
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} (the output's shape), "
            f"got {tuple(grad_output.shape)}"
        )
    if not hasattr(indices, "shape") or tuple(indices.shape) != expected:
        got = tuple(indices.shape) if hasattr(indices, "shape") else type(indices).__name__
        raise ValueError(f"indices: expected shape {expected}, got {got}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices: expected an integer array, got dtype {indices.dtype}")
    if indices_kind not in ("argmax", "flat"):
        raise ValueError(f"indices_kind: expected 'argmax' or 'flat', got {indices_kind!r}")
    xp = get_array_module(grad_output, indices)
    g = grad_output[None] if unbatched else grad_output
    idx = indices[None] if unbatched else indices
    if indices_kind == "flat":
        idx = _flat_to_argmax(idx, in_shape, kernel, stride_t, pad, dil)
    cdt = compute_dtype(g.dtype)
    g = g.astype(cdt, copy=False)
    if gpu_path(xp):  # one kernel launch: a thread per input element gathers its windows
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        gin = gpu.max_pool_backward(g, idx, full_in, kernel, stride_t, pad, dil)
        gin = gin.astype(grad_output.dtype, copy=False)
        return gin[0] if unbatched else gin
    if indices_kind == "argmax":  # (flat indices were checked as they were converted)
        _check_taps(idx, math.prod(kernel))
    disjoint = _windows_disjoint(out_shape, kernel, stride_t, dil)
    if pooling_compiled.applies(g):  # one sweep per plane, bitwise the path below
        gin = pooling_compiled.max_pool_backward(
            g, idx, in_shape, kernel, stride_t, pad, dil, disjoint
        )
        gin = gin.astype(grad_output.dtype, copy=False)
        return gin[0] if unbatched else gin
    pads = _padded_extent(in_shape, out_shape, kernel, stride_t, pad, dil)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_shape, pads, strict=True))
    if not disjoint and _use_bincount(xp):
        gin = _scatter_bincount(g, idx, full_in[:2] + padded, kernel, stride_t, dil)
    else:
        planes = full_in[0] * full_in[1]
        gin = xp.zeros((planes,) + padded, dtype=cdt)
        gf = g.reshape((planes,) + out_shape)
        af = idx.reshape((planes,) + out_shape)
        for blk in _plane_blocks(xp, planes, math.prod(out_shape) * cdt.itemsize):
            gb, ab = gf[blk], af[blk]
            hit = xp.empty(gb.shape, dtype=bool)
            scratch = None if disjoint else xp.empty(gb.shape, dtype=cdt)
            for t, v in _tap_views(gin[blk], out_shape, kernel, stride_t, dil):
                xp.equal(ab, t, out=hit)
                if disjoint:  # no other tap or window writes these positions
                    # 0 + dy at the winners (PyTorch's scatter-add into zeros), the
                    # zeros elsewhere kept: not dy * 0, which would leave NaN or -0.0
                    # where dy is not finite or negative
                    xp.add(v, gb, out=v, where=hit)
                else:
                    scratch[...] = 0
                    xp.add(scratch, gb, out=scratch, where=hit)
                    v += scratch
        gin = gin.reshape(full_in[:2] + padded)
    gin = _crop(gin, pads, in_shape).astype(grad_output.dtype, copy=False)
    return gin[0] if unbatched else gin


def _check_taps(argmax: Any, taps: int) -> None:
    """ValueError unless every winning-tap index lies in [0, taps)."""
    if argmax.size == 0:
        return
    signed = argmax.dtype.kind == "i"
    if int(argmax.max()) >= taps or (signed and int(argmax.min()) < 0):
        bad = int((argmax >= taps).sum()) + (int((argmax < 0).sum()) if signed else 0)
        raise ValueError(
            f"indices: expected winning-tap indices in [0, {taps}) (as max_pool(..., "
            f"return_indices='argmax') returns), got {bad} outside"
        )


def _use_bincount(xp: Any) -> bool:
    """NumPy's bincount beats the tap loop ~2x for overlapping windows (AlexNet's pool1:
    8 ms against 14 ms); CuPy's bincount adds with atomics, in no fixed order."""
    return xp is np


def _scatter_bincount(g, argmax, padded_full, kernel, stride, dilation):
    """dx_pad for overlapping windows: bin dy by the flat padded position of its argmax."""
    n, c = padded_full[:2]
    padded = padded_full[2:]
    nd = len(kernel)
    plane = math.prod(padded)
    strides = [math.prod(padded[d + 1 :]) for d in range(nd)]
    # offset of tap t inside a window, and of window o's first tap, in the padded plane
    lut = np.zeros(math.prod(kernel), dtype=np.int64)
    for t, tap in enumerate(np.ndindex(*kernel)):
        lut[t] = sum(i * d * st for i, d, st in zip(tap, dilation, strides, strict=True))
    base = np.zeros(g.shape[2:], dtype=np.int64)
    for dim in range(nd):
        o = g.shape[2 + dim]
        shape = (1,) * dim + (o,) + (1,) * (nd - dim - 1)
        base = base + (np.arange(o, dtype=np.int64) * stride[dim] * strides[dim]).reshape(shape)
    planes = n * c
    per_group = max(1, _BINCOUNT_BYTES // (8 * plane))
    gflat = g.reshape((planes,) + g.shape[2:])
    aflat = argmax.reshape((planes,) + g.shape[2:])
    out = np.empty((planes, plane), dtype=g.dtype)
    for lo in range(0, planes, per_group):
        hi = min(lo + per_group, planes)
        pos = np.take(lut, aflat[lo:hi])
        pos += base
        pos += (np.arange(hi - lo, dtype=np.int64) * plane).reshape((-1,) + (1,) * nd)
        bins = np.bincount(pos.ravel(), weights=gflat[lo:hi].ravel(), minlength=(hi - lo) * plane)
        out[lo:hi] = bins.reshape(hi - lo, plane)
    return out.reshape(padded_full)


# -- average pooling ---------------------------------------------------------------------------
def _avg_divisor(
    xp: Any,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    count_include_pad: bool,
    divisor_override: int | None,
    dtype: np.dtype,
) -> Any:
    """The divisor of each window, shape (*O) (a scalar with divisor_override).

    PyTorch's rule per dimension: start = o*s - p, end = min(start + k, n + p); with
    count_include_pad the window counts end - start cells (padding included, cells
    past the padding that ceil_mode windows reach excluded), otherwise only the cells
    inside x: min(end, n) - max(start, 0). The 2-d divisor is the product.
    """
    if divisor_override is not None:
        return dtype.type(divisor_override)
    nd = len(kernel)
    div = np.ones(out_shape, dtype=np.int64)
    for dim, (n, o, k, s, p) in enumerate(
        zip(in_shape, out_shape, kernel, stride, padding, strict=True)
    ):
        start = np.arange(o, dtype=np.int64) * s - p
        end = np.minimum(start + k, n + p)
        if count_include_pad:
            count = end - start
        else:
            count = np.minimum(end, n) - np.maximum(start, 0)
        div = div * count.reshape((1,) * dim + (o,) + (1,) * (nd - dim - 1))
    return xp.asarray(div.astype(dtype))


def _avg_setup(x_shape, dims, kernel_size, stride, padding, ceil_mode, divisor_override, name):
    kernel, stride_t, pad, _ = _pool_args(dims, kernel_size, stride, padding, 1)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(
            divisor_override, (int, np.integer)
        ):
            raise TypeError(
                f"divisor_override: expected a non-zero int or None, "
                f"got {type(divisor_override).__name__} {divisor_override!r}"
            )
        if divisor_override == 0:
            raise ValueError("divisor_override: expected a non-zero int or None, got 0")
    in_shape = tuple(x_shape[-dims:])
    if dims == 3 and any(n < k for n, k in zip(in_shape, kernel, strict=True)):
        # PyTorch's avg_pool3d (only it) wants the kernel to fit the unpadded input
        raise ValueError(
            f"{name}: expected a spatial size of at least kernel_size={kernel} for 3-d "
            f"average pooling (as PyTorch), got {in_shape}"
        )
    ones = (1,) * dims
    out_shape = _out_shape(in_shape, kernel, stride_t, pad, ones, bool(ceil_mode), name)
    pads = _padded_extent(in_shape, out_shape, kernel, stride_t, pad, ones)
    return kernel, stride_t, pad, in_shape, out_shape, pads


def _avg_pool(
    x: Any,
    dims: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Any:
    """N-d average pooling; see :func:`avg_pool2d`."""
    x = as_float_array(x, "x")
    xb, unbatched = _split_batch(x, dims)
    kernel, stride_t, pad, in_shape, out_shape, pads = _avg_setup(
        xb.shape, dims, kernel_size, stride, padding, ceil_mode, divisor_override, "x"
    )
    xp = get_array_module(xb)
    cdt = compute_dtype(xb.dtype)
    if gpu_path(xp):  # one kernel launch: a thread per output sums its window
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        div = _avg_divisor(
            np, in_shape, out_shape, kernel, stride_t, pad, count_include_pad, divisor_override, cdt
        )
        y = gpu.avg_pool(xb.astype(cdt, copy=False), out_shape, kernel, stride_t, pad, div)
        y = y.astype(xb.dtype, copy=False)
        return y[0] if unbatched else y
    xpad = _pad(xb.astype(cdt, copy=False), pads, 0.0)
    planes = xpad.shape[0] * xpad.shape[1]
    xf = xpad.reshape((planes,) + tuple(xpad.shape[2:]))
    y = xp.empty((planes,) + out_shape, dtype=cdt)
    for blk in _plane_blocks(xp, planes, math.prod(out_shape) * cdt.itemsize):
        yb = y[blk]
        views = _tap_views(xf[blk], out_shape, kernel, stride_t, (1,) * dims)
        _, first = next(views)
        yb[...] = first
        for _, v in views:
            yb += v
    y = y.reshape(xb.shape[:2] + out_shape)
    y /= _avg_divisor(
        xp, in_shape, out_shape, kernel, stride_t, pad, count_include_pad, divisor_override, cdt
    )
    y = y.astype(xb.dtype, copy=False)
    return y[0] if unbatched else y


def _avg_pool_backward(
    grad_output: Any,
    input_shape: Sequence[int],
    dims: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Any:
    """N-d average pooling's input gradient; see :func:`avg_pool2d_backward`."""
    grad_output = as_float_array(grad_output, "grad_output")
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) not in (dims + 1, dims + 2):
        raise ValueError(
            f"input_shape: expected {dims + 2} (N, C, *spatial) or {dims + 1} (C, *spatial) "
            f"entries for {dims}-d pooling, got {input_shape}"
        )
    unbatched = len(input_shape) == dims + 1
    _check_sizes(input_shape, unbatched, "input_shape", adaptive=False, zero_channels=False)
    kernel, stride_t, pad, in_shape, out_shape, pads = _avg_setup(
        input_shape, dims, kernel_size, stride, padding, ceil_mode, divisor_override, "input_shape"
    )
    expected = input_shape[:-dims] + out_shape
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} (the output's shape), "
            f"got {tuple(grad_output.shape)}"
        )
    g = grad_output[None] if unbatched else grad_output
    xp = get_array_module(g)
    cdt = compute_dtype(g.dtype)
    if gpu_path(xp):  # one kernel launch: a thread per input element gathers its windows
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        div = _avg_divisor(
            np, in_shape, out_shape, kernel, stride_t, pad, count_include_pad, divisor_override, cdt
        )
        full_in = g.shape[:2] + in_shape
        gin = gpu.avg_pool_backward(g.astype(cdt, copy=False), full_in, kernel, stride_t, pad, div)
        gin = gin.astype(grad_output.dtype, copy=False)
        return gin[0] if unbatched else gin
    gs = g.astype(cdt) / _avg_divisor(
        xp, in_shape, out_shape, kernel, stride_t, pad, count_include_pad, divisor_override, cdt
    )
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_shape, pads, strict=True))
    planes = g.shape[0] * g.shape[1]
    gin = xp.zeros((planes,) + padded, dtype=cdt)
    gf = gs.reshape((planes,) + out_shape)
    for blk in _plane_blocks(xp, planes, math.prod(out_shape) * cdt.itemsize):
        gb = gf[blk]
        for _, v in _tap_views(gin[blk], out_shape, kernel, stride_t, (1,) * dims):
            v += gb
    gin = gin.reshape(g.shape[:2] + padded)
    gin = _crop(gin, pads, in_shape).astype(grad_output.dtype, copy=False)
    return gin[0] if unbatched else gin


_AVG_DOC = """{dims}-d average pooling, PyTorch's ``avg_pool{dims}d``.

    ``y[n, c, o] = (sum_t x_pad[n, c, o*s + t]) / divisor(o)``, ``x_pad`` being ``x``
    zero-padded; the divisor follows PyTorch (see :func:`_avg_divisor`): the window's
    cell count with or without padding, or ``divisor_override``.

    Parameters
    ----------
    x : ndarray, shape {shape} or without the batch axis N
        float16/32/64; only N may be 0.
    kernel_size, stride, padding : int or tuple of ints
        A 1-tuple stands for every dimension; ``stride`` None or () means
        ``kernel_size``; ``padding <= kernel_size // 2``.
    ceil_mode : bool
        Round the output size up (the last window must start inside x or its left padding).
    count_include_pad : bool
        Count zero-padding cells in the divisor.{divisor}

    Returns
    -------
    ndarray, shape (N, C, *O) or (C, *O)
        Same dtype as ``x``.
    """

_AVG_BACKWARD_DOC = """Gradient of :func:`avg_pool{dims}d` with respect to its input.

    ``dx[n, c, i] = sum over windows o containing i of dy[n, c, o] / divisor(o)``
    (``dx_pad[o*s + t] += dy[o] / divisor(o)`` for every tap ``t``, then the padding is
    cropped away).

    Parameters
    ----------
    grad_output : ndarray, the forward's output shape
    input_shape : tuple of ints
        The shape of the forward's ``x``.
    kernel_size, stride, padding, ceil_mode, count_include_pad{names}
        As given to the forward.

    Returns
    -------
    ndarray, shape input_shape
    """

_DIVISOR_DOC = """
    divisor_override : int, optional
        A fixed non-zero divisor."""


def avg_pool1d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Any:
    return _avg_pool(x, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool1d_backward(
    grad_output: Any,
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Any:
    return _avg_pool_backward(
        grad_output, input_shape, 1, kernel_size, stride, padding, ceil_mode,
        count_include_pad, None,
    )  # fmt: skip


def avg_pool2d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Any:
    return _avg_pool(
        x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def avg_pool2d_backward(
    grad_output: Any,
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Any:
    return _avg_pool_backward(
        grad_output, input_shape, 2, kernel_size, stride, padding, ceil_mode,
        count_include_pad, divisor_override,
    )  # fmt: skip


def avg_pool3d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Any:
    return _avg_pool(
        x, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def avg_pool3d_backward(
    grad_output: Any,
    input_shape: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Any:
    return _avg_pool_backward(
        grad_output, input_shape, 3, kernel_size, stride, padding, ceil_mode,
        count_include_pad, divisor_override,
    )  # fmt: skip


for _dims, _shape, _fwd, _bwd in (
    (1, "(N, C, L)", avg_pool1d, avg_pool1d_backward),
    (2, "(N, C, H, W)", avg_pool2d, avg_pool2d_backward),
    (3, "(N, C, D, H, W)", avg_pool3d, avg_pool3d_backward),
):
    _fwd.__doc__ = _AVG_DOC.format(
        dims=_dims, shape=_shape, divisor=_DIVISOR_DOC if _dims > 1 else ""
    )
    _bwd.__doc__ = _AVG_BACKWARD_DOC.format(
        dims=_dims, names=", divisor_override" if _dims > 1 else ""
    )


# -- max pooling, named per rank -------------------------------------------------------------
def max_pool1d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """PyTorch's ``max_pool1d``: :func:`max_pool` with ``dims=1`` (x (N, C, L) or (C, L))."""
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1)


def max_pool2d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """PyTorch's ``max_pool2d``: :func:`max_pool` with ``dims=2`` (x (N, C, H, W) or (C, H, W))."""
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2)


def max_pool3d(
    x: Any,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """PyTorch's ``max_pool3d``: :func:`max_pool` with ``dims=3`` (x (N, C, D, H, W) or
    (C, D, H, W))."""
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 3)


# -- adaptive pooling ----------------------------------------------------------------------------
def _adaptive_size(output_size: Any, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch's output_size: an int, or a tuple of one size per dimension; None (rank 2
    and 3 only) keeps that input size; 0 gives an empty output."""
    dims = len(in_shape)
    if _is_seq(output_size):
        sizes = tuple(output_size)
        if len(sizes) != dims:
            raise ValueError(f"output_size: expected an int or {dims} sizes, got {sizes!r}")
    else:
        if output_size is None:
            raise TypeError(f"output_size: expected an int or a tuple of {dims} sizes, got None")
        sizes = (output_size,) * dims
    what = "non-negative ints" + (" or None" if dims > 1 else "")
    out = []
    for s, n in zip(sizes, in_shape, strict=True):
        if s is None and dims > 1:
            out.append(n)
            continue
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"output_size: expected {what}, got {type(s).__name__} {s!r}")
        if s < 0:
            raise ValueError(f"output_size: expected {what}, got {output_size!r}")
        out.append(int(s))
    return tuple(out)


def _adaptive_bounds(n: int, o: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin i covers [floor(i n / o), ceil((i+1) n / o)) (PyTorch's rule); (starts, ends)."""
    i = np.arange(o, dtype=np.int64)
    return (i * n) // o, -((-(i + 1) * n) // o)


def _adaptive_bins(n: int, o: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrix B (o, n) with B[i, j] = 1 for j in bin i, and the bin lengths (o,)."""
    start, end = _adaptive_bounds(n, o)
    j = np.arange(n, dtype=np.int64)
    member = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return member, end - start


def _separable_product(xp: Any, a: Any, mats: list[Any]) -> Any:
    """``a`` (..., n_1, ..., n_d) times ``mats[k]`` (o_k, n_k) along each spatial axis k
    (None: that axis is kept as it is), as one BLAS product per axis.

    Each step contracts the last axis, ``(L, n) @ M^T``, and rotates the result's last
    axis to the front of the spatial block, so after d steps the axes are back in order
    (a broadcast ``matmul`` or ``tensordot`` on strided views runs many small products).
    """
    dims = len(mats)
    if all(m is None for m in mats):
        return xp.array(a, copy=True)
    front = a.ndim - dims
    for m in reversed(mats):
        if m is not None:
            n = a.shape[-1]
            rows = math.prod(a.shape[:-1])  # explicit: -1 is ambiguous for empty arrays
            a = (a.reshape(rows, n) @ m.T).reshape(a.shape[:-1] + (m.shape[0],))
        if dims > 1:
            a = xp.moveaxis(a, -1, front)
    return xp.ascontiguousarray(a)


def _bin_product(xp: Any, a: Any, bh: Any, bw: Any) -> Any:
    """bh a bw^T over the last two axes of a (..., H, W), as two single BLAS products.

    (The 2-d case of :func:`_separable_product` with one copy fewer: ~1.5x faster.)
    """
    lead = a.shape[:-2]
    h, w = a.shape[-2:]
    lead_size = math.prod(lead)  # explicit sizes: -1 is ambiguous for empty arrays
    t = a.reshape(lead_size * h, w) @ bw.T  # (L*H, W') : one GEMM
    t = t.reshape((lead_size, h, bw.shape[0]))
    t = xp.tensordot(bh, t, axes=([1], [1]))  # (H', L, W')
    return xp.moveaxis(t, 0, -2).reshape(lead + (bh.shape[0], bw.shape[0]))


def _adaptive_input(x_shape, dims, output_size, name, zero_channels):
    rank = len(x_shape)
    if rank not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name}: expected a {dims + 2}-d (N, C, *spatial) or {dims + 1}-d (C, *spatial) "
            f"array for {dims}-d adaptive pooling, got shape {tuple(x_shape)}"
        )
    _check_sizes(tuple(x_shape), rank == dims + 1, name, adaptive=True, zero_channels=zero_channels)
    in_shape = tuple(x_shape[-dims:])
    return in_shape, _adaptive_size(output_size, in_shape)


def _bin_matrices(xp, in_shape, out, dtype, transpose=False):
    """Per dimension the averaging matrix B_d / c_d (o, n), or None where o == n."""
    mats = []
    for n, o in zip(in_shape, out, strict=True):
        if n == o:  # every bin is one cell
            mats.append(None)
            continue
        member, lengths = _adaptive_bins(n, o)
        m = member / np.maximum(lengths, 1)[:, None]
        mats.append(xp.asarray((m.T if transpose else m).astype(dtype)))
    return mats


def _adaptive_avg_pool(x: Any, dims: int, output_size: Any) -> Any:
    """N-d adaptive average pooling; see :func:`adaptive_avg_pool2d`."""
    x = as_float_array(x, "x")
    in_shape, out = _adaptive_input(tuple(x.shape), dims, output_size, "x", dims < 3)
    xp = get_array_module(x)
    cdt = compute_dtype(x.dtype)
    if gpu_path(xp):  # one kernel launch: a thread per output averages its bin
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        return gpu.adaptive_avg_pool(x.astype(cdt, copy=False), dims, out).astype(
            x.dtype, copy=False
        )
    mats = _bin_matrices(xp, in_shape, out, cdt)
    if dims == 2 and all(m is not None for m in mats):
        y = _bin_product(xp, x.astype(cdt, copy=False), *mats)
    else:
        y = _separable_product(xp, x.astype(cdt, copy=False), mats)
    return y.astype(x.dtype, copy=False)


def _adaptive_avg_pool_backward(
    grad_output: Any, input_shape: Sequence[int], dims: int, output_size: Any
) -> Any:
    """N-d adaptive average pooling's input gradient; see :func:`adaptive_avg_pool2d_backward`."""
    grad_output = as_float_array(grad_output, "grad_output")
    input_shape = tuple(int(n) for n in input_shape)
    if output_size is None:
        output_size = tuple(grad_output.shape[-dims:])
    in_shape, out = _adaptive_input(input_shape, dims, output_size, "input_shape", dims < 3)
    expected = input_shape[:-dims] + out
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output: expected shape {expected} (the output's shape), "
            f"got {tuple(grad_output.shape)}"
        )
    xp = get_array_module(grad_output)
    cdt = compute_dtype(grad_output.dtype)
    if gpu_path(xp):  # one kernel launch: a thread per input element gathers its bins
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        gx = gpu.adaptive_avg_pool_backward(grad_output.astype(cdt, copy=False), input_shape, dims)
        return gx.astype(grad_output.dtype, copy=False)
    mats = _bin_matrices(xp, in_shape, out, cdt, transpose=True)
    if dims == 2 and all(m is not None for m in mats):
        gx = xp.ascontiguousarray(_bin_product(xp, grad_output.astype(cdt, copy=False), *mats))
    else:
        gx = _separable_product(xp, grad_output.astype(cdt, copy=False), mats)
    return gx.astype(grad_output.dtype, copy=False)


_ADAPTIVE_AVG_DOC = """{dims}-d adaptive average pooling, PyTorch's ``adaptive_avg_pool{dims}d``.

    Output cell ``i`` averages, in each spatial dimension of size ``n`` pooled to ``o``,
    the input cells ``[floor(i n / o), ceil((i+1) n / o))``. With the averaging matrix
    ``A_d = B_d / c_d`` (``B_d`` the 0/1 bin membership (o, n), ``c_d`` the bin
    lengths) of each dimension, the pooling is separable::

        y = x  x_1 A_1  x_2 A_2 ...      (a product with A_d along spatial axis d)

    computed as one matrix product (BLAS) per dimension rather than a loop over bins.

    Parameters
    ----------
    x : ndarray, shape {shape} or without the batch axis N
        float16/32/64. N may be 0, and so may the channels{channels}.
    output_size : {size_type}
        0 gives an empty output.{none_note}

    Returns
    -------
    ndarray, shape (N, C, *output_size) or (C, *output_size)
    """

_ADAPTIVE_AVG_BACKWARD_DOC = """Gradient of :func:`adaptive_avg_pool{dims}d` with respect to x.

    The forward ``y = x x_1 A_1 x_2 A_2 ...`` is linear in x, so
    ``dx = dy x_1 A_1^T x_2 A_2^T ...``.

    Parameters
    ----------
    grad_output : ndarray, the forward's output shape
    input_shape : tuple of ints
        The shape of the forward's ``x``.
    output_size : optional
        As given to the forward; defaults to grad_output's spatial shape.

    Returns
    -------
    ndarray, shape input_shape
    """


def adaptive_avg_pool1d(x: Any, output_size: int | Sequence[int]) -> Any:
    return _adaptive_avg_pool(x, 1, output_size)


def adaptive_avg_pool1d_backward(
    grad_output: Any, input_shape: Sequence[int], output_size: Any = None
) -> Any:
    return _adaptive_avg_pool_backward(grad_output, input_shape, 1, output_size)


def adaptive_avg_pool2d(x: Any, output_size: int | Sequence[int | None]) -> Any:
    return _adaptive_avg_pool(x, 2, output_size)


def adaptive_avg_pool2d_backward(
    grad_output: Any, input_shape: Sequence[int], output_size: Any = None
) -> Any:
    return _adaptive_avg_pool_backward(grad_output, input_shape, 2, output_size)


def adaptive_avg_pool3d(x: Any, output_size: int | Sequence[int | None]) -> Any:
    return _adaptive_avg_pool(x, 3, output_size)


def adaptive_avg_pool3d_backward(
    grad_output: Any, input_shape: Sequence[int], output_size: Any = None
) -> Any:
    return _adaptive_avg_pool_backward(grad_output, input_shape, 3, output_size)


for _dims, _shape, _fwd, _bwd in (
    (1, "(N, C, L)", adaptive_avg_pool1d, adaptive_avg_pool1d_backward),
    (2, "(N, C, H, W)", adaptive_avg_pool2d, adaptive_avg_pool2d_backward),
    (3, "(N, C, D, H, W)", adaptive_avg_pool3d, adaptive_avg_pool3d_backward),
):
    _fwd.__doc__ = _ADAPTIVE_AVG_DOC.format(
        dims=_dims,
        shape=_shape,
        channels=" (as in PyTorch)" if _dims < 3 else " of an unbatched x (as in PyTorch)",
        size_type="int or (int,)" if _dims == 1 else f"int or {_dims} ints or Nones",
        none_note="" if _dims == 1 else " None keeps that input size.",
    )
    _bwd.__doc__ = _ADAPTIVE_AVG_BACKWARD_DOC.format(dims=_dims)


def _adaptive_max_pool(x: Any, dims: int, output_size: Any, return_indices: bool) -> Any:
    """N-d adaptive max pooling; see :func:`adaptive_max_pool2d`."""
    x = as_float_array(x, "x")
    in_shape, out = _adaptive_input(tuple(x.shape), dims, output_size, "x", False)
    xp = get_array_module(x)
    unbatched = x.ndim == dims + 1
    xb = x[None] if unbatched else x
    lead = xb.shape[:2]
    if math.prod(out) == 0 or math.prod(lead) == 0:
        y = xp.empty(lead + out, dtype=x.dtype)
        idx = xp.zeros(lead + out, dtype=np.int64)
    elif gpu_path(xp):  # one kernel launch: a thread per output scans its bin
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        cdt = compute_dtype(x.dtype)
        y, idx = gpu.adaptive_max_pool(xb.astype(cdt, copy=False), dims, out)
        y = y.astype(x.dtype, copy=False)
    else:
        y, idx = _adaptive_max_taps(xb, in_shape, out)
    if unbatched:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def _adaptive_max_taps(xb: Any, in_shape: tuple[int, ...], out: tuple[int, ...]):
    """The scan of PyTorch's CPU kernel, vectorised over output cells.

    Dimension d's bin i is read at ``pos_d[i, t] = min(start_i + t, end_i - 1)`` for
    ``t < K_d = max bin length``: shorter bins repeat their last cell, which cannot change
    the maximum or its index. Taps come in row-major window order and a tap wins when
    ``v > max or isnan(v)``, so ties go to the first maximum and NaN propagates.
    """
    xp = get_array_module(xb)
    dims = len(in_shape)
    pos, taps = [], []
    for n, o in zip(in_shape, out, strict=True):
        start, end = _adaptive_bounds(n, o)
        k = int((end - start).max())
        pos.append(np.minimum(start[:, None] + np.arange(k)[None, :], end[:, None] - 1))
        taps.append(k)
    plane_strides = [math.prod(in_shape[d + 1 :]) for d in range(dims)]
    y = idx = None
    for tap in np.ndindex(*taps):
        index: tuple[Any, ...] = (slice(None), slice(None))
        flat = np.zeros(out, dtype=np.int64)
        for d, t in enumerate(tap):
            shape = (1,) * d + (out[d],) + (1,) * (dims - d - 1)
            p = pos[d][:, t].reshape(shape)
            index += (xp.asarray(p),)
            flat = flat + p * plane_strides[d]
        v = xb[index]
        flat_x = xp.asarray(flat)
        if y is None:
            y = v.copy()
            idx = xp.broadcast_to(flat_x, v.shape).copy()
            continue
        take = (v > y) | xp.isnan(v)
        y = xp.where(take, v, y)
        idx = xp.where(take, flat_x, idx)
    return y, idx


def _adaptive_max_pool_backward(
    grad_output: Any, indices: Any, input_shape: Sequence[int], dims: int
) -> Any:
    """N-d adaptive max pooling's input gradient; see :func:`adaptive_max_pool2d_backward`."""
    grad_output = as_float_array(grad_output, "grad_output")
    input_shape = tuple(int(n) for n in input_shape)
    rank = len(input_shape)
    if rank not in (dims + 1, dims + 2):
        raise ValueError(
            f"input_shape: expected {dims + 2} (N, C, *spatial) or {dims + 1} (C, *spatial) "
            f"entries for {dims}-d adaptive pooling, got {input_shape}"
        )
    _check_sizes(input_shape, rank == dims + 1, "input_shape", adaptive=True, zero_channels=False)
    lead = input_shape[:-dims]
    if tuple(grad_output.shape[:-dims]) != lead or grad_output.ndim != rank:
        raise ValueError(
            f"grad_output: expected shape {lead} + output_size (the output's shape), "
            f"got {tuple(grad_output.shape)}"
        )
    if not hasattr(indices, "shape") or tuple(indices.shape) != tuple(grad_output.shape):
        got = tuple(indices.shape) if hasattr(indices, "shape") else type(indices).__name__
        raise ValueError(f"indices: expected shape {tuple(grad_output.shape)}, got {got}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices: expected an integer array, got dtype {indices.dtype}")
    plane = math.prod(input_shape[-dims:])
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        raise ValueError(
            f"indices: expected flat positions in [0, {plane}) of each input plane "
            f"(as adaptive_max_pool{dims}d(..., return_indices=True) returns), got some outside"
        )
    xp = get_array_module(grad_output, indices)
    planes = math.prod(lead)
    cdt = compute_dtype(grad_output.dtype)
    if gpu_path(xp):  # one kernel launch: a thread per input element gathers its bins
        from foldconv.cuda import pooling as gpu  # noqa: PLC0415

        gx = gpu.adaptive_max_pool_backward(
            grad_output.astype(cdt, copy=False), indices, input_shape, dims
        )
        return gx.astype(grad_output.dtype, copy=False)
    outs = math.prod(grad_output.shape[-dims:])
    g = grad_output.reshape(planes, outs)
    offsets = (xp.arange(planes, dtype=np.int64) * plane)[:, None]
    pos = indices.reshape(planes, outs).astype(np.int64) + offsets
    # Bins may overlap (and with o > n several outputs share a cell): the gradients add.
    gx = xp.bincount(pos.ravel(), weights=g.ravel().astype(np.float64), minlength=planes * plane)
    return gx.astype(cdt).reshape(input_shape).astype(grad_output.dtype, copy=False)


_ADAPTIVE_MAX_DOC = """{dims}-d adaptive max pooling, PyTorch's ``adaptive_max_pool{dims}d``.

    Output cell ``i`` is the maximum of the input cells ``[floor(i n / o),
    ceil((i+1) n / o))`` in each spatial dimension (size ``n`` pooled to ``o``). Ties go to
    the first maximum in row-major window order and a NaN wins, as in PyTorch's CPU kernel.

    Parameters
    ----------
    x : ndarray, shape {shape} or without the batch axis N
        float16/32/64. N may be 0, and so may the channels of an unbatched x.
    output_size : {size_type}
        0 gives an empty output.{none_note}
    return_indices : bool
        Also return PyTorch's indices: int64, the flat position of each maximum in its
        (n, c) input plane.

    Returns
    -------
    y : ndarray, shape (N, C, *output_size) or (C, *output_size), dtype of x
    indices : ndarray of int64, shape of y
        Only with ``return_indices``.
    """

_ADAPTIVE_MAX_BACKWARD_DOC = """Gradient of :func:`adaptive_max_pool{dims}d` with respect to x.

    ``dx[n, c, i] = sum of dy[n, c, o] over the outputs o whose maximum is at i``
    (``indices[n, c, o] == i``); overlapping bins add up. On NumPy the scatter is one
    float64 ``bincount``; on the GPU a kernel gathers, per input cell, the bins holding
    it (float64 sums in bin order): deterministic on both.

    Parameters
    ----------
    grad_output : ndarray, the forward's output shape
    indices : integer ndarray, shape of grad_output
        From ``adaptive_max_pool{dims}d(..., return_indices=True)``.
    input_shape : tuple of ints
        The shape of the forward's ``x``.

    Returns
    -------
    ndarray, shape input_shape, dtype of grad_output
    """


def adaptive_max_pool1d(
    x: Any, output_size: int | Sequence[int], return_indices: bool = False
) -> Any:
    return _adaptive_max_pool(x, 1, output_size, return_indices)


def adaptive_max_pool1d_backward(grad_output: Any, indices: Any, input_shape: Sequence[int]) -> Any:
    return _adaptive_max_pool_backward(grad_output, indices, input_shape, 1)


def adaptive_max_pool2d(
    x: Any, output_size: int | Sequence[int | None], return_indices: bool = False
) -> Any:
    return _adaptive_max_pool(x, 2, output_size, return_indices)


def adaptive_max_pool2d_backward(grad_output: Any, indices: Any, input_shape: Sequence[int]) -> Any:
    return _adaptive_max_pool_backward(grad_output, indices, input_shape, 2)


def adaptive_max_pool3d(
    x: Any, output_size: int | Sequence[int | None], return_indices: bool = False
) -> Any:
    return _adaptive_max_pool(x, 3, output_size, return_indices)


def adaptive_max_pool3d_backward(grad_output: Any, indices: Any, input_shape: Sequence[int]) -> Any:
    return _adaptive_max_pool_backward(grad_output, indices, input_shape, 3)


for _dims, _shape, _fwd, _bwd in (
    (1, "(N, C, L)", adaptive_max_pool1d, adaptive_max_pool1d_backward),
    (2, "(N, C, H, W)", adaptive_max_pool2d, adaptive_max_pool2d_backward),
    (3, "(N, C, D, H, W)", adaptive_max_pool3d, adaptive_max_pool3d_backward),
):
    _fwd.__doc__ = _ADAPTIVE_MAX_DOC.format(
        dims=_dims,
        shape=_shape,
        size_type="int or (int,)" if _dims == 1 else f"int or {_dims} ints or Nones",
        none_note="" if _dims == 1 else " None keeps that input size.",
    )
    _bwd.__doc__ = _ADAPTIVE_MAX_BACKWARD_DOC.format(dims=_dims)
del _dims, _shape, _fwd, _bwd
