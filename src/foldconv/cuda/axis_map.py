"""Sparse linear maps along one axis, as one gather kernel: the GPU path of padding's
adjoint and of interpolation (forward and backward).

Every such map is ``y[a, o, b] = sum_k w[k] * x[a, src[k], b]`` over the entries ``k`` of
row ``o`` of a compressed-row table (``ptr``, ``src``, ``w``): ``a`` runs over the axes
before the mapped one, ``b`` over those after it. A forward gather (a padding's index
map, an interpolation's taps) is such a table with one row per output position; its
adjoint, a scatter on the CPU, is the transposed table (one row per input position,
listing the outputs that read it), so the GPU computes it as a gather too: one thread per
output element, a fixed summation order, no atomics, the same result on every run.

The tables are small (one row per position of one axis); they are built on the host,
copied to the device once and cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from foldconv.cuda.launch import kernel, numba_cuda

cuda = numba_cuda()

Table = tuple[Any, Any, Any]  # ptr (rows + 1,), src (nnz,), w (nnz,) on the device


@kernel
def _axis_map(n, x, ptr, src, w, out, m_in, n_out, inner, zero):
    """out[a, o, b] = sum over k in [ptr[o], ptr[o+1]) of w[k] * x[a, src[k], b] (flat)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = i % inner
        t = i // inner
        o = t % n_out
        base = (t // n_out) * m_in * inner + b
        acc = zero
        for k in range(ptr[o], ptr[o + 1]):
            acc += w[k] * x[base + src[k] * inner]
        out[i] = acc


def forward_table(
    n_in: int, n_out: int, taps: Sequence[tuple[np.ndarray, np.ndarray | None]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host table of ``y[o] = sum over taps of w[o] * x[idx[o]]`` (``idx[o] = -1``: no entry).

    Parameters
    ----------
    n_in, n_out : int
        Sizes of the axis before and after the map.
    taps : sequence of (idx, w)
        ``idx`` (n_out,) int source positions in [0, n_in) or -1; ``w`` (n_out,) float
        weights, None for 1.

    Returns
    -------
    ptr (n_out + 1,) int64, src (nnz,) int64, w (nnz,) float64
        Row ``o`` lists its taps in the order given.
    """
    o, src, w = _entries(n_out, taps)
    order = np.argsort(o, kind="stable")
    return _rows(o[order], src[order], w[order], n_out)


def adjoint_table(
    n_in: int, n_out: int, taps: Sequence[tuple[np.ndarray, np.ndarray | None]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host table of the adjoint ``dx[i] = sum over taps, o with idx[o] = i of w[o] dy[o]``.

    Row ``i`` lists the first tap's outputs in increasing ``o``, then the second tap's:
    the order in which the CPU path's scatter adds them.
    """
    o, src, w = _entries(n_out, taps)
    order = np.argsort(src, kind="stable")
    return _rows(src[order], o[order], w[order], n_in)


def _entries(
    n_out: int, taps: Sequence[tuple[np.ndarray, np.ndarray | None]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output position, source position, weight) of every tap, taps one after the other."""
    os_, srcs, ws = [], [], []
    for idx, w in taps:
        idx = np.asarray(idx, dtype=np.int64).reshape(n_out)
        keep = idx >= 0
        os_.append(np.nonzero(keep)[0])
        srcs.append(idx[keep])
        ws.append(np.ones(int(keep.sum())) if w is None else np.asarray(w, np.float64)[keep])
    return np.concatenate(os_), np.concatenate(srcs), np.concatenate(ws)


def _rows(
    row: np.ndarray, col: np.ndarray, w: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n_rows), out=ptr[1:])
    return ptr, col.astype(np.int64), w


# Device copies of the tables, by (key, device, dtype); a model uses a handful of them.
_CACHE_SIZE = 256
_cache: OrderedDict[tuple, Table] = OrderedDict()


def _device_key(xp: Any) -> Any:
    if xp is np:
        return "host"
    return xp.cuda.Device().id


def device_table(xp: Any, key: tuple, dtype: Any, build: Any) -> Table:
    """The table ``build()`` returns, on the device of ``xp`` with weights in ``dtype``;
    cached under ``key`` (which must determine the table)."""
    full = (key, _device_key(xp), np.dtype(dtype).str)
    t = _cache.get(full)
    if t is None:
        ptr, src, w = build()
        t = (xp.asarray(ptr), xp.asarray(src), xp.asarray(w.astype(dtype)))
        _cache[full] = t
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(full)
    return t


def apply(xp: Any, x: Any, axis: int, n_out: int, table: Table) -> Any:
    """The map of ``table`` along ``axis`` of ``x``: a new contiguous array whose ``axis``
    has ``n_out`` positions (one kernel launch; ``x``'s dtype, float32 or float64)."""
    x = xp.ascontiguousarray(x)
    ptr, src, w = table
    if w.dtype != x.dtype:
        raise TypeError(f"table: expected {x.dtype} weights, got {w.dtype}")  # a caller's bug
    shape = x.shape[:axis] + (n_out,) + x.shape[axis + 1 :]
    out = xp.empty(shape, dtype=x.dtype)
    inner = 1
    for s in x.shape[axis + 1 :]:
        inner *= s
    n = out.size
    if x.size == 0:  # then every row is empty (or out is empty too): a sum of nothing
        out[...] = 0
    elif n:
        _axis_map(
            n,
            n,
            x.reshape(-1),
            ptr,
            src,
            w,
            out.reshape(-1),
            x.shape[axis],
            n_out,
            inner,
            x.dtype.type(0),
        )
    return out
