"""im2col (unfold) and col2im (fold), N-d, and the tiling that bounds their memory.

The seed's vectorised form unfolds the padded input into X̃ of shape
(C_in·prod(K)) x (prod(out)): column ``o`` holds the receptive field of output
position ``o``, i.e. X̃[(c, t), o] = X_pad[c, o·stride + t·dilation]. Both directions
are written as one strided copy (im2col) or one strided add (col2im) per kernel tap
t, never as a scatter with repeated indices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from foldconv._config import CACHE_TILE_BYTES, get_workspace_limit
from foldconv.backend import get_array_module, gpu_path
from foldconv.functional._args import (
    as_float_array,
    compute_dtype,
    int_tuple,
    parse_padding,
)
from foldconv.functional.padding import apply_pad
from foldconv.functional.threads import get_num_threads, parallel_map


def tap_slices(tap, out_shape, stride, dilation) -> tuple[slice, ...]:
    """The strided window of the padded input that kernel tap ``tap`` reads."""
    return tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, o, s, d in zip(tap, out_shape, stride, dilation, strict=True)
    )


def _chunks(x: Any) -> list[tuple[slice, slice]]:
    """Disjoint (batch, channel) blocks of an (N, C, ...) array, one per thread.

    Channels are split when there are enough of them (so each thread writes its own
    channels of the result), else samples.
    """
    n, c = x.shape[:2]
    parts = get_num_threads()
    if parts == 1 or n * c < 2 or x.size < (1 << 20):
        return [(slice(None), slice(None))]
    if c >= parts:
        bounds = [c * i // parts for i in range(parts + 1)]
        return [(slice(None), slice(a, b)) for a, b in itertools.pairwise(bounds) if b > a]
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(slice(a, b), slice(None)) for a, b in itertools.pairwise(bounds) if b > a]


def im2col_into(x_pad: Any, cols: Any, kernel, stride, dilation) -> None:
    """Write the columns of ``x_pad`` into ``cols``: one strided copy (per thread).

    A view of ``x_pad`` with shape (N, C, *K, *out) and strides
    (s_N, s_C, *(s_d·dilation_d), *(s_d·stride_d)) holds every receptive field without
    copying; a single copy then moves it into the buffer in the buffer's order.

    Parameters
    ----------
    x_pad : ndarray, shape (N, C, *S_pad)
    cols : ndarray, shape (N, C, *K, *out)
        Any strides: callers pass a transposed view of the buffer they want filled.
    """
    xp = get_array_module(x_pad)
    ndim = len(kernel)
    out_shape = cols.shape[2 + ndim :]
    sp = x_pad.strides[2:]
    window = xp.lib.stride_tricks.as_strided(
        x_pad,
        shape=x_pad.shape[:2] + tuple(kernel) + tuple(out_shape),
        strides=x_pad.strides[:2]
        + tuple(s * d for s, d in zip(sp, dilation, strict=True))
        + tuple(s * t for s, t in zip(sp, stride, strict=True)),
    )
    if xp.__name__ != "numpy":
        cols[...] = window
        return

    def copy(block):
        cols[block] = window[block]

    parallel_map(copy, _chunks(cols))


def col2im_add(cols: Any, dx_pad: Any, kernel, stride, dilation) -> None:
    """dx_pad += fold(cols): the adjoint of :func:`im2col_into`.

    One strided add per kernel tap; threads take disjoint channel (or sample) blocks, so
    no two ever add into the same element and the sums are deterministic.
    """
    ndim = len(kernel)
    out_shape = cols.shape[2 + ndim :]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    windows = [tap_slices(tap, out_shape, stride, dilation) for tap in taps]

    def add(block):
        src, dst = cols[block], dx_pad[block]
        for tap, win in zip(taps, windows, strict=True):
            dst[(slice(None), slice(None)) + win] += src[(slice(None), slice(None)) + tap]

    if get_array_module(dx_pad).__name__ != "numpy":
        add((slice(None), slice(None)))
        return
    parallel_map(add, _chunks(dx_pad))


class Tile:
    """A block of the output: samples [n0, n1) and a box of output positions.

    ``in_box`` is the block of the padded input that the output box reads.
    """

    __slots__ = ("n0", "n1", "out_box", "in_box", "box_shape")

    def __init__(self, n0, n1, out_box, kernel, stride, dilation):
        self.n0, self.n1 = n0, n1
        self.out_box = tuple(slice(a, b) for a, b in out_box)
        self.in_box = tuple(
            slice(a * s, (b - 1) * s + d * (k - 1) + 1)
            for (a, b), k, s, d in zip(out_box, kernel, stride, dilation, strict=True)
        )
        self.box_shape = tuple(b - a for a, b in out_box)

    @property
    def n(self) -> int:
        return self.n1 - self.n0

    @property
    def positions(self) -> int:
        return self.n * math.prod(self.box_shape)


def plan_tiles(
    batch: int,
    out_shape,
    kernel,
    stride,
    dilation,
    bytes_per_position: int,
    *,
    group_bytes: int = CACHE_TILE_BYTES,
) -> Iterator[Tile]:
    """Split (batch x output positions) into tiles whose buffers fit the workspace limit.

    ``bytes_per_position`` is what one output position of one sample costs in all the
    buffers a pass keeps (C_in·prod(K) elements per buffer). Whole samples are grouped
    when they fit; otherwise one sample's output is cut along its leading spatial
    dimensions, so the limit holds however large a single image is. Whole samples are
    grouped up to CACHE_TILE_BYTES (see foldconv._config), so that the buffers are still
    in cache when the GEMM reads them; the GPU path passes ``group_bytes`` = the limit
    (its GEMMs want the widest operand, and there is no cache to stay in).
    """
    limit = get_workspace_limit()
    max_positions = limit // max(bytes_per_position, 1)
    if max_positions < 1:
        raise ValueError(
            f"workspace limit: {limit} bytes is too small for this convolution, whose "
            f"buffers need {bytes_per_position} bytes per output position; raise it with "
            "foldconv.set_workspace_limit()"
        )
    per_sample = math.prod(out_shape)
    if per_sample == 0 or batch == 0:
        return
    if per_sample <= max_positions:
        cached = min(limit, group_bytes) // max(bytes_per_position, 1)
        step = max(1, min(batch, cached // per_sample))
        full = tuple((0, o) for o in out_shape)
        for n0 in range(0, batch, step):
            yield Tile(n0, min(batch, n0 + step), full, kernel, stride, dilation)
        return
    # One sample at a time; find the first dim whose trailing block still fits.
    ndim = len(out_shape)
    split = 0
    while math.prod(out_shape[split + 1 :]) > max_positions:
        split += 1
    inner = math.prod(out_shape[split + 1 :])
    step = max(1, max_positions // inner)
    ranges = [[(i, i + 1) for i in range(out_shape[d])] for d in range(split)]
    ranges.append([(a, min(out_shape[split], a + step)) for a in range(0, out_shape[split], step)])
    tail = [(0, out_shape[d]) for d in range(split + 1, ndim)]
    for n0 in range(batch):
        for head in itertools.product(*ranges):
            yield Tile(n0, n0 + 1, tuple(head) + tuple(tail), kernel, stride, dilation)


def _unfold_args(x, kernel_size, dilation, padding, stride, name):
    if isinstance(kernel_size, (tuple, list)):
        ndim = len(kernel_size)
        if ndim not in (1, 2, 3):
            raise ValueError(f"kernel_size: expected 1, 2 or 3 sizes, got {kernel_size!r}")
    else:
        ndim = x.ndim - 2
        if ndim not in (1, 2, 3):
            raise ValueError(
                f"{name}: expected a 3-d, 4-d or 5-d batched array when kernel_size is an int "
                f"(give a tuple kernel_size for unbatched input), got shape {tuple(x.shape)}"
            )
    kernel = int_tuple(kernel_size, ndim, "kernel_size", minimum=1)
    dilation = int_tuple(dilation, ndim, "dilation", minimum=1)
    stride = int_tuple(stride, ndim, "stride", minimum=1)
    pads = parse_padding(padding, ndim, allow_strings=False)
    return ndim, kernel, dilation, stride, pads


def _blocks(spatial, kernel, dilation, stride, pads, name) -> tuple[int, ...]:
    out = []
    for d, (n, k, dl, s, (lo, hi)) in enumerate(
        zip(spatial, kernel, dilation, stride, pads, strict=True)
    ):
        extent = dl * (k - 1) + 1
        if extent > n + lo + hi:
            raise ValueError(
                f"kernel_size: the kernel's extent {extent} exceeds the padded {name} size "
                f"{n + lo + hi} in spatial dim {d}"
            )
        out.append((n + lo + hi - extent) // s + 1)
    return tuple(out)


def unfold(x: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1):
    """im2col: extract sliding blocks (PyTorch's ``F.unfold`` layout, for 1-d, 2-d and 3-d).

    Parameters
    ----------
    x : ndarray, shape (N, C, *S) or (C, *S)
        Unbatched input needs a tuple ``kernel_size`` (its length gives the rank).
    kernel_size, dilation, stride : int or tuple
    padding : int, tuple or (low, high) pairs (zeros)

    Returns
    -------
    ndarray, shape (N, C·prod(K), L) or (C·prod(K), L)
        Row (c, t) (channel-major, taps in row-major order), column l = output position
        in row-major order: cols[n, (c, t), l] = x_pad[n, c, l·stride + t·dilation].
    """
    x = as_float_array(x, "x")
    ndim, kernel, dilation, stride, pads = _unfold_args(
        x, kernel_size, dilation, padding, stride, "x"
    )
    if x.ndim not in (ndim + 1, ndim + 2):
        raise ValueError(
            f"x: expected a {ndim + 2}-d (N, C, *S) or {ndim + 1}-d (C, *S) array for a "
            f"{ndim}-d kernel_size, got shape {tuple(x.shape)}"
        )
    unbatched = x.ndim == ndim + 1
    xb = x[None] if unbatched else x
    if any(s == 0 for s in xb.shape[1:]):
        # PyTorch's unfold allows only the batch to be empty, whatever the padding.
        raise ValueError(
            f"x: expected non-zero channel and spatial sizes (only the batch may be 0), got "
            f"shape {tuple(x.shape)}"
        )
    out_shape = _blocks(xb.shape[2:], kernel, dilation, stride, pads, "input")
    xp = get_array_module(xb)
    dtype = x.dtype
    if gpu_path(xp):  # one im2col kernel, reading the zero padding itself
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        xc = xb.astype(compute_dtype(dtype), copy=False)
        cols = gpu_conv.unfold(xc, kernel, dilation, stride, pads, out_shape)
        cols = cols.astype(dtype, copy=False)
        return cols[0] if unbatched else cols
    x_pad = apply_pad(xb.astype(compute_dtype(dtype), copy=False), pads, "zeros")
    n, c = xb.shape[:2]
    cols = xp.empty((n, c) + kernel + out_shape, dtype=x_pad.dtype)
    im2col_into(x_pad, cols, kernel, stride, dilation)
    cols = cols.reshape(n, c * math.prod(kernel), math.prod(out_shape)).astype(dtype, copy=False)
    return cols[0] if unbatched else cols


def fold(
    cols: Any,
    output_size: Any,
    kernel_size: Any,
    dilation: Any = 1,
    padding: Any = 0,
    stride: Any = 1,
):
    """col2im: sum sliding blocks back into an array (PyTorch's ``F.fold``, N-d).

    The adjoint of :func:`unfold`: overlapping entries are summed.

    Parameters
    ----------
    cols : ndarray, shape (N, C·prod(K), L) or (C·prod(K), L)
    output_size : int or tuple
        The spatial size S of the result (its length gives the rank when a tuple).

    Returns
    -------
    ndarray, shape (N, C, *S) or (C, *S)
    """
    cols = as_float_array(cols, "cols")
    if isinstance(output_size, (tuple, list)):
        ndim = len(output_size)
    elif isinstance(kernel_size, (tuple, list)):
        ndim = len(kernel_size)
    else:
        ndim = 2
    if ndim not in (1, 2, 3):
        raise ValueError(f"output_size: expected 1, 2 or 3 sizes, got {output_size!r}")
    size = int_tuple(output_size, ndim, "output_size", minimum=1)
    kernel = int_tuple(kernel_size, ndim, "kernel_size", minimum=1)
    dilation = int_tuple(dilation, ndim, "dilation", minimum=1)
    stride = int_tuple(stride, ndim, "stride", minimum=1)
    pads = parse_padding(padding, ndim, allow_strings=False)
    if cols.ndim not in (2, 3):
        raise ValueError(
            f"cols: expected a 3-d (N, C·prod(K), L) or 2-d array, got shape {tuple(cols.shape)}"
        )
    unbatched = cols.ndim == 2
    cb = cols[None] if unbatched else cols
    n, rows, length = cb.shape
    if rows == 0 or length == 0:
        raise ValueError(
            f"cols: expected non-zero C·prod(K) and L (only the batch may be 0), got shape "
            f"{tuple(cols.shape)}"
        )
    taps = math.prod(kernel)
    if rows % taps:
        raise ValueError(
            f"cols: expected a second dimension divisible by prod(kernel_size) = {taps}, "
            f"got shape {tuple(cols.shape)}"
        )
    out_shape = _blocks(size, kernel, dilation, stride, pads, "output_size")
    if math.prod(out_shape) != length:
        raise ValueError(
            f"output_size: {size} with kernel {kernel}, dilation {dilation}, padding {pads} "
            f"and stride {stride} gives {math.prod(out_shape)} blocks {out_shape}, but cols "
            f"has L = {length} columns"
        )
    c = rows // taps
    xp = get_array_module(cb)
    dtype = cols.dtype
    if gpu_path(xp):  # col2im as a gather: one thread per element of the result
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        cc = cb.astype(compute_dtype(dtype), copy=False)
        out = gpu_conv.fold(cc, size, kernel, dilation, stride, pads, out_shape)
        out = out.astype(dtype, copy=False)
        return out[0] if unbatched else out
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, pads, strict=True))
    dx_pad = xp.zeros((n, c) + padded, dtype=compute_dtype(dtype))
    view = cb.astype(dx_pad.dtype, copy=False).reshape((n, c) + kernel + out_shape)
    col2im_add(view, dx_pad, kernel, stride, dilation)
    inner = tuple(slice(lo, lo + s) for s, (lo, _) in zip(size, pads, strict=True))
    out = xp.ascontiguousarray(dx_pad[(slice(None), slice(None)) + inner]).astype(dtype, copy=False)
    return out[0] if unbatched else out
