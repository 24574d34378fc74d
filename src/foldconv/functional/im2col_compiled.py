"""im2col with a compiled unfold and fold (Numba), a block of samples per thread.

The seed's vectorised form (eqs. F, BW, BX) with the columns of one block of samples
built by a compiled loop, held in cache, and multiplied by OpenBLAS one sample at a time:

    eq. F:  Y_n = W_g · X̃_n                       (C_out/G x P per sample and group)
    eq. BW: dW_g = Σ_blocks δ_blk · X̃_blkᵀ        (one GEMM per block: K = n_blk · P)
    eq. BX: dX_n = fold(W_gᵀ · δ_n)

with X̃_n the exact columns: X̃_n[(c, t), p] = X_pad[n, c, base(p) + off(t)], where
off(t) = Σ_d t_d·dilation_d·S_d and base(p) = Σ_d p_d·stride_d·S_d on the flat padded
plane (S_d its row strides). Only real output positions are columns, so no δ is set
to zero anywhere and 0 · inf never arises (unlike functional/flat.py's range).

Why: in a layer like LeNet-5's conv2 (6 -> 16 channels, 5x5, 10x10 outputs), one
sample's product (16 x 150 x 100) runs at the BLAS rate when its columns sit in cache,
but NumPy's strided unfold copies rows of ten elements one call at a time, and the
compiled direct sums (functional/direct_compiled.py) also compute the flat range's
positions that are not outputs (136 for 100 here).
Batch 64, two threads, ms, each pass alone: input gradient 0.47 against 0.57-0.62
for direct_compiled, forward 0.41-0.52 against 0.36-0.39, weight gradient a tie; so
'auto' gives it the input gradient (dispatch.cost_model). In large layers (AlexNet's at
batch 16) independent blocks on foldconv's threads, each with its own single-threaded
GEMMs, beat one GEMM over the whole batch on OpenBLAS's threads in all three passes
(conv1's forward 24-25 against 31 ms, conv2's 44 against 56; BENCHMARKS.md, "The fourth
pass"), and 'auto' takes them where the batch gives each core a block.

Samples are split in blocks (at most ``_BLOCK`` samples and ``_BLOCK_BYTES`` of columns,
as even as they go) over foldconv's thread pool, each thread unfolding into its own
scratch and calling single-threaded BLAS; the GEMMs and the compiled loops release the
GIL. The blocks are fixed by the geometry and dtype alone, the weight gradient's summed
in order, and every GEMM has the same shape whichever thread runs it, so results do not
depend on the thread count.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np

from foldconv._config import get_workspace_limit
from foldconv.functional import compiled
from foldconv.functional._args import ConvGeometry
from foldconv.functional.threads import parallel_map
from foldconv.functional.workspace import scratch

# Samples per block at most: one thread's unit of work, and the weight gradient's GEMM
# unit. Small layers take 8, so that per-call costs are spread over 8 samples' columns
# (LeNet-5's conv2: 60 KB a sample); a block's columns stop at _BLOCK_BYTES, so that a
# large layer's batch of 16 gives every thread blocks (AlexNet's conv2: 3.5 MB a sample,
# one per block). Measured on AlexNet's layers at batch 16, two threads, 1 to 8 samples a
# block ran each pass in the same time, within the noise (BENCHMARKS.md); what mattered
# was VGG's batch of 8 at 29 MB a sample, which as one block left a thread idle: 2x.
_BLOCK = 8
_BLOCK_BYTES = 4 * 2**20


class _Plan:
    """The tap offsets and output rows of a geometry on the flat padded plane."""

    def __init__(self, g: ConvGeometry) -> None:
        padded = g.padded_shape
        strides = [math.prod(padded[d + 1 :]) for d in range(g.ndim)]
        self.plane = math.prod(padded)
        self.offsets = np.array(
            [
                sum(t * dl * s for t, dl, s in zip(tap, g.dilation, strides, strict=True))
                for tap in itertools.product(*(range(k) for k in g.kernel))
            ],
            dtype=np.int64,
        )
        # One output row per multi-index of the leading output dimensions.
        bases = [0]
        for d in range(g.ndim - 1):
            step = g.stride[d] * strides[d]
            bases = [b + o * step for b in bases for o in range(g.out_shape[d])]
        self.row_starts = np.array(bases, dtype=np.int64)
        self.row_len = g.out_shape[-1]
        self.step = g.stride[-1]  # along a row, on the flat plane
        self.positions = math.prod(g.out_shape)  # P
        self.rows = g.in_channels * self.offsets.size  # C_in · prod(K)


@functools.lru_cache(maxsize=256)
def _plan(g: ConvGeometry) -> _Plan:
    return _Plan(g)


def _block(g: ConvGeometry, itemsize: int) -> int:
    """Samples per block: a function of the geometry and dtype alone, never of the thread
    count, so that the weight gradient's sum over blocks is the same for any."""
    plan = _plan(g)
    per_sample = max(1, plan.rows * plan.positions * itemsize)
    most = max(1, min(_BLOCK, g.batch, _BLOCK_BYTES // per_sample))
    count = max(1, -(-g.batch // most))
    return max(1, -(-g.batch // count))  # as many blocks, as even as they can be


def scratch_bytes(g: ConvGeometry, itemsize: int) -> int:
    """One thread's scratch: a block's columns, and δ's copy for the weight gradient."""
    plan = _plan(g)
    return _block(g, itemsize) * plan.positions * (plan.rows + g.out_channels) * itemsize


def blocks(g: ConvGeometry, itemsize: int) -> int:
    """How many blocks a batch is split into (the most threads a pass can use)."""
    return len(_blocks(g, itemsize))


def supports(g: ConvGeometry, itemsize: int = 4) -> bool:
    """Every geometry whose scratch for one block fits the workspace limit."""
    return scratch_bytes(g, itemsize) <= get_workspace_limit()


@functools.cache
def _kernels() -> dict[str, Any]:
    jit = compiled.njit(nogil=True, boundscheck=False)

    # Inner loops index views that start at their offset, from 0 (see direct_compiled.py:
    # an index Numba cannot prove non-negative stops the loop from vectorising).

    @jit
    def unfold(x, starts, offs, row_len, step, cols, n0, n1, sample_major):  # pragma: no cover
        # cols[n - n0, c·T + t, r·row_len + j] = x[n, c, starts[r] + offs[t] + j·step]
        # (sample_major), else cols[c·T + t, n - n0, ...]: the columns of samples n0..n1.
        taps = offs.size
        for n in range(n0, n1):
            for c in range(x.shape[1]):
                xc = x[n, c]
                for t in range(taps):
                    dst = cols[n - n0, c * taps + t] if sample_major else cols[c * taps + t, n - n0]
                    for r in range(starts.size):
                        src = xc[starts[r] + offs[t] :]
                        d = dst[r * row_len :]
                        if step == 1:
                            for j in range(row_len):
                                d[j] = src[j]
                        else:
                            for j in range(row_len):
                                d[j] = src[j * step]

    @jit
    def fold(cols, starts, offs, row_len, step, dx, n0, n1):  # pragma: no cover
        # dx[n, c, :] = Σ_t (taps in order) of cols[n - n0, c·T + t] placed at each
        # position's base + off(t): the adjoint of unfold, written without atomics.
        taps = offs.size
        for n in range(n0, n1):
            for c in range(dx.shape[1]):
                xc = dx[n, c]
                for i in range(xc.size):
                    xc[i] = 0
                for t in range(taps):
                    src = cols[n - n0, c * taps + t]
                    for r in range(starts.size):
                        d = xc[starts[r] + offs[t] :]
                        s = src[r * row_len :]
                        if step == 1:
                            for j in range(row_len):
                                d[j] += s[j]
                        else:
                            for j in range(row_len):
                                d[j * step] += s[j]

    return {"unfold": unfold, "fold": fold}


def warm(dtype: Any) -> None:
    """Compile the kernels for ``dtype`` now (the autotuner times calls, not Numba)."""
    g = ConvGeometry(1, 1, 1, 1, (1,), (1,), (1,), (1,), ((0, 0),), (1,))
    one = np.ones((1, 1, 1), dtype=dtype)
    forward(one, one, g)
    input_grad(one, one, g)
    weight_grad(one, one, g)


def _blocks(g: ConvGeometry, itemsize: int) -> list[tuple[int, int]]:
    b = _block(g, itemsize)
    return [(n0, min(g.batch, n0 + b)) for n0 in range(0, g.batch, b)]


def _flat(a: Any, channels: int, batch: int) -> Any:
    return np.ascontiguousarray(a).reshape(batch, channels, -1)


def forward(x_pad: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. F without bias. x_pad (N, C_in, *S_pad), w (C_out, C_in/G, *K) -> y (N, C_out, *out)."""
    plan = _plan(g)
    G, cog = g.groups, g.out_channels // g.groups
    rg = plan.rows // G
    x = _flat(x_pad, g.in_channels, g.batch)
    wg = np.ascontiguousarray(w).reshape(G, cog, rg)
    y = np.empty((g.batch, g.out_channels, plan.positions), dtype=x.dtype)
    unfold = _kernels()["unfold"]

    def block(span: tuple[int, int]) -> None:
        n0, n1 = span
        n = n1 - n0
        cols = scratch(n * plan.rows * plan.positions, x.dtype, np)
        cols = cols.reshape(n, plan.rows, plan.positions)
        unfold(x, plan.row_starts, plan.offsets, plan.row_len, plan.step, cols, n0, n1, True)
        for j in range(G):
            np.matmul(wg[j], cols[:, j * rg : (j + 1) * rg], out=y[n0:n1, j * cog : (j + 1) * cog])

    parallel_map(block, _blocks(g, x.dtype.itemsize))
    return y.reshape((g.batch, g.out_channels) + g.out_shape)


def input_grad(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. BX: fold(W_gᵀ · δ_n). dy (N, C_out, *out) -> dX_pad (N, C_in, *S_pad)."""
    plan = _plan(g)
    G, cog = g.groups, g.out_channels // g.groups
    rg = plan.rows // G
    d = _flat(dy, g.out_channels, g.batch)
    wt = np.ascontiguousarray(np.asarray(w).reshape(G, cog, rg).transpose(0, 2, 1))
    dx = np.empty((g.batch, g.in_channels, plan.plane), dtype=d.dtype)
    fold = _kernels()["fold"]

    def block(span: tuple[int, int]) -> None:
        n0, n1 = span
        n = n1 - n0
        cols = scratch(n * plan.rows * plan.positions, d.dtype, np)
        cols = cols.reshape(n, plan.rows, plan.positions)
        for j in range(G):
            np.matmul(wt[j], d[n0:n1, j * cog : (j + 1) * cog], out=cols[:, j * rg : (j + 1) * rg])
        fold(cols, plan.row_starts, plan.offsets, plan.row_len, plan.step, dx, n0, n1)

    parallel_map(block, _blocks(g, d.dtype.itemsize))
    return dx.reshape((g.batch, g.in_channels) + g.padded_shape)


def weight_grad(dy: Any, x_pad: Any, g: ConvGeometry) -> Any:
    """Eq. BW: Σ over blocks of δ_blk · X̃_blkᵀ, blocks in order.
    dy (N, C_out, *out), x_pad (N, C_in, *S_pad) -> dW (C_out, C_in/G, *K)."""
    plan = _plan(g)
    G, cog = g.groups, g.out_channels // g.groups
    rg = plan.rows // G
    x = _flat(x_pad, g.in_channels, g.batch)
    d = _flat(dy, g.out_channels, g.batch)
    spans = _blocks(g, x.dtype.itemsize)
    # Per block and group, X̃ · δᵀ (rows x C_out/G): both operands contiguous, and the
    # GEMM's long inner dimension (n · P) is the block's positions.
    partial = np.empty((len(spans), G, rg, cog), dtype=x.dtype)
    unfold = _kernels()["unfold"]
    size = plan.positions

    def block(i: int) -> None:
        n0, n1 = spans[i]
        n = n1 - n0
        buf = scratch(n * size * (plan.rows + g.out_channels), x.dtype, np)
        cols = buf[: plan.rows * n * size].reshape(plan.rows, n, size)
        unfold(x, plan.row_starts, plan.offsets, plan.row_len, plan.step, cols, n0, n1, False)
        d_t = buf[plan.rows * n * size :].reshape(G, n, size, cog)
        d_t[...] = d[n0:n1].reshape(n, G, cog, size).transpose(1, 0, 3, 2)
        for j in range(G):
            np.matmul(
                cols[j * rg : (j + 1) * rg].reshape(rg, n * size),
                d_t[j].reshape(n * size, cog),
                out=partial[i, j],
            )

    parallel_map(block, range(len(spans)))
    dw = partial[0]  # summed into in place, blocks in order
    for i in range(1, len(spans)):
        dw += partial[i]
    return np.ascontiguousarray(dw.transpose(0, 2, 1)).reshape(
        (g.out_channels, g.in_channels // G) + g.kernel
    )
