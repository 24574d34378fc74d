"""im2col and col2im on the flattened padded grid.

With stride 1, output position o reads X_pad[o + t·dilation]; numbered by its *flat*
index in the padded input, o_flat = Σ_d o_d·s_d (s_d the padded input's row strides),
it reads X_flat[o_flat + off(t)] with off(t) = Σ_d t_d·dilation_d·s_d. So, computed on the
whole range l in [0, L) with L = Σ_d (out_d - 1)·s_d + 1, the columns of tap t are ONE
contiguous slice X_flat[:, :, off(t) : off(t) + L], and col2im is one contiguous add per
tap, instead of prod(out[:-1]) short rows of out[-1] elements each: NumPy's per-row cost
is what dominates small layers (LeNet's conv2: col2im 1.9 ms in rows of 10).

The range also holds positions that are not outputs (the columns past out_d in each row).
Their forward results are computed and dropped; in the gradients their δ is set to zero,
so they add nothing. The cost is L / prod(out) more GEMM columns (1.4x for a 10x10 output
of a 14x14 input, ~1.0x for large images).

A strided layer is first split into the stride's phases: input position p = i·s + φ goes
to phase φ at index i. Tap t then reads phase (t·dilation) mod s at the stride-1 offset
(t·dilation) div s, so each phase is a stride-1 problem on the phase grid
ceil(S_pad / s), and the same contiguous slices apply (one split of the input, one merge
of its gradient, instead of prod(out[:-1])·prod(K) rows stepping by s).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

from foldconv._config import CACHE_TILE_BYTES, get_workspace_limit
from foldconv.backend import get_array_module
from foldconv.functional import compiled, flat_compiled
from foldconv.functional._args import ConvGeometry
from foldconv.functional.workspace import scratch_split


class _Plan:
    """The phase grid, the flat range and, per tap, its phase and offset."""

    def __init__(self, g: ConvGeometry) -> None:
        self.grid = tuple(-(-p // s) for p, s in zip(g.padded_shape, g.stride, strict=True))
        self.strides = tuple(math.prod(self.grid[d + 1 :]) for d in range(g.ndim))
        self.length = sum((o - 1) * s for o, s in zip(g.out_shape, self.strides, strict=True)) + 1
        self.n_phases = math.prod(g.stride)
        self.taps = list(itertools.product(*(range(k) for k in g.kernel)))
        self.phase = []
        self.offset = []
        for tap in self.taps:
            reach = [t * d for t, d in zip(tap, g.dilation, strict=True)]
            phase = 0
            for r, s in zip(reach, g.stride, strict=True):
                phase = phase * s + r % s
            self.phase.append(phase)
            self.offset.append(
                sum((r // s) * q for r, s, q in zip(reach, g.stride, self.strides, strict=True))
            )
        self.unit_stride = all(s == 1 for s in g.stride)


@functools.lru_cache(maxsize=512)
def _plan(g: ConvGeometry) -> _Plan:
    # Building a plan walks every tap in Python: 0.1 ms for a 5x5 kernel, a fifth of
    # LeNet's conv2 forward, and each pass asks for it (measured).
    return _Plan(g)


def _per_sample_bytes(g: ConvGeometry, plan: _Plan, itemsize: int) -> int:
    # A chunk's scratch holds its columns and the GEMM's other operand (C_out rows).
    return (g.in_channels * g.kernel_size + g.out_channels) * plan.length * itemsize


def supports(g: ConvGeometry, itemsize: int) -> bool:
    """One sample's scratch on the flat range fits the workspace limit."""
    return _per_sample_bytes(g, _plan(g), itemsize) <= get_workspace_limit()


def _chunks(g: ConvGeometry, plan: _Plan, itemsize: int) -> list[tuple[int, int]]:
    # Whole samples up to CACHE_TILE_BYTES: buffers still in cache when the GEMM reads them.
    target = min(get_workspace_limit(), CACHE_TILE_BYTES)
    step = max(1, target // _per_sample_bytes(g, plan, itemsize))
    return [(n0, min(g.batch, n0 + step)) for n0 in range(0, g.batch, step)]


def _phase_slices(g: ConvGeometry):
    """(phase number, slices of the padded input that form it)."""
    for number, phi in enumerate(itertools.product(*(range(s) for s in g.stride))):
        yield number, tuple(slice(f, None, s) for f, s in zip(phi, g.stride, strict=True))


def _split(x_pad: Any, g: ConvGeometry, plan: _Plan) -> Any:
    """The input as (N, C, phases, prod(grid)); a view when the stride is 1."""
    xp = get_array_module(x_pad)
    n, c = x_pad.shape[:2]
    if plan.unit_stride:
        return xp.ascontiguousarray(x_pad).reshape(n, c, 1, -1)
    out = xp.zeros((n, c, plan.n_phases) + plan.grid, dtype=x_pad.dtype)
    for number, sl in _phase_slices(g):
        part = x_pad[(slice(None), slice(None)) + sl]
        out[(slice(None), slice(None), number) + tuple(slice(0, m) for m in part.shape[2:])] = part
    return out.reshape(n, c, plan.n_phases, -1)


def _merge(dph: Any, g: ConvGeometry, plan: _Plan) -> Any:
    """The adjoint of _split: (N, C, phases, prod(grid)) back to (N, C, *S_pad)."""
    xp = get_array_module(dph)
    n, c = dph.shape[:2]
    if plan.unit_stride:
        return dph.reshape((n, c) + g.padded_shape)
    dx = xp.empty((n, c) + g.padded_shape, dtype=dph.dtype)
    grid = dph.reshape((n, c, plan.n_phases) + plan.grid)
    for number, sl in _phase_slices(g):
        dest = dx[(slice(None), slice(None)) + sl]
        dest[...] = grid[
            (slice(None), slice(None), number) + tuple(slice(0, m) for m in dest.shape[2:])
        ]
    return dx


def _valid(ext: Any, g: ConvGeometry, plan: _Plan) -> Any:
    """The output positions of a (..., L) array, as a (..., *out) view."""
    xp = get_array_module(ext)
    item = ext.dtype.itemsize
    return xp.lib.stride_tricks.as_strided(
        ext,
        shape=ext.shape[:-1] + g.out_shape,
        strides=ext.strides[:-1] + tuple(s * item for s in plan.strides),
    )


def _buffers(g: ConvGeometry, plan: _Plan, n: int, dtype: Any, xp: Any) -> list[Any]:
    """Scratch for a chunk of n samples: the columns (C_in·prod(K)·n·L) and the C_out·n·L
    operand on the other side of the GEMM (its output, or δ on the flat range)."""
    sizes = [g.in_channels * g.kernel_size * n * plan.length, g.out_channels * n * plan.length]
    return scratch_split(sizes, dtype, xp)


def _columns(phases: Any, g: ConvGeometry, plan: _Plan, buf: Any) -> Any:
    """cols[(c, t), (n, l)] = phase_t[n, c, off(t) + l] as (G, C_in/G·prod(K), n·L)."""
    xp = get_array_module(phases)
    n, c = phases.shape[:2]
    length = plan.length
    arr = buf[: c * g.kernel_size * n * length].reshape(c, len(plan.taps), n, length)
    if plan.unit_stride:
        # All taps in one strided copy: tap t starts off(t) elements into the one phase.
        item = phases.dtype.itemsize
        steps = tuple(d * s for d, s in zip(g.dilation, plan.strides, strict=True))
        window = xp.lib.stride_tricks.as_strided(
            phases,
            shape=(n, c) + g.kernel + (length,),
            strides=phases.strides[:2] + tuple(s * item for s in steps) + (item,),
        )
        nd = g.ndim
        view = arr.reshape((c,) + g.kernel + (n, length))
        view.transpose((nd + 1, 0) + tuple(range(1, nd + 1)) + (nd + 2,))[...] = window
    else:
        for i, (ph, off) in enumerate(zip(plan.phase, plan.offset, strict=True)):
            arr[:, i] = phases[:, :, ph, off : off + length].transpose(1, 0, 2)
    return arr.reshape(g.groups, -1, n * length)


def _dy_ext(dy: Any, g: ConvGeometry, plan: _Plan, buf: Any) -> Any:
    """δ on the flat range, zero off the outputs, in ``buf``: (G, C_out/G, n·L)."""
    xp = get_array_module(dy)
    n = dy.shape[0]
    ext = buf.reshape(g.out_channels, n, plan.length)
    ext[...] = 0
    _valid(ext, g, plan)[...] = xp.moveaxis(dy, 1, 0)
    return ext.reshape(g.groups, g.out_channels // g.groups, n * plan.length)


# Skinny GEMMs. OpenBLAS 0.3.31 runs (C_out/G) x (C_in/G·prod(K)) x (n·L) products with
# few rows slowly: LeNet-5 at batch 128, one thread, ms: conv1's forward (6 x 25 x 114176)
# 1.5-2.3 as one GEMM, 0.9-1.25 as 128 per-sample GEMMs (6 x 25 x 892, each in cache);
# conv2's (16 x 150 x 17408) 2.0-2.2 against 1.7; conv1's weight gradient (6 x 114176 x
# 25, a long inner dimension) 2.6-2.85 against 0.9-0.95, conv2's (16 x 17408 x 150) 2.6-3.0
# against 3.0-3.8 (BENCHMARKS.md, "LeNet-5 against its floor"). Hence: per-sample
# products for a forward with a small weight matrix, and for a weight gradient whose
# per-sample inner dimension L is long next to its output's sides. A small weight
# gradient that stays one product is computed as (cols · δᵀ)ᵀ: conv2's 1.35-1.48 ms against
# 2.37-2.40 for δ · colsᵀ at one thread, 0.70 against 1.43 at two. None of these choices
# depends on the thread count, so results do not either.
_PER_SAMPLE_WEIGHT_ELEMENTS = 4096
_PER_SAMPLE_INNER_RATIO = 4


def _per_sample_forward(cog: int, rows: int) -> bool:
    return cog * rows <= _PER_SAMPLE_WEIGHT_ELEMENTS


def _per_sample_weight_grad(cog: int, rows: int, length: int) -> bool:
    return length >= _PER_SAMPLE_INNER_RATIO * max(cog, rows)


def forward(x_pad: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. F without bias on the flat range. Returns (N, C_out, *out)."""
    xp = get_array_module(x_pad)
    plan = _plan(g)
    phases = _split(x_pad, g, plan)
    G, cog = g.groups, g.out_channels // g.groups
    wg = w.reshape(G, cog, -1)
    per_sample = _per_sample_forward(cog, wg.shape[2])
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x_pad.dtype)
    for n0, n1 in _chunks(g, plan, x_pad.dtype.itemsize):
        # Both from reused scratch: fresh pages cost a page fault each (a third of LeNet's
        # conv2 forward, measured).
        buf, out = _buffers(g, plan, n1 - n0, x_pad.dtype, xp)
        cols = _columns(phases[n0:n1], g, plan, buf)
        out = out.reshape(G, cog, cols.shape[2])
        for j in range(G):
            if per_sample:  # the same products, one (C_out/G x L) block per sample
                a = cols[j].reshape(-1, n1 - n0, plan.length).transpose(1, 0, 2)
                o = out[j].reshape(cog, n1 - n0, plan.length).transpose(1, 0, 2)
                xp.matmul(wg[j], a, out=o)
            else:
                xp.matmul(wg[j], cols[j], out=out[j])
        valid = _valid(out.reshape(g.out_channels, n1 - n0, plan.length), g, plan)
        y[n0:n1] = xp.moveaxis(valid, 0, 1)
    return y


def weight_grad(dy: Any, x_pad: Any, g: ConvGeometry) -> Any:
    """Eq. BW on the flat range (δ is zero off the outputs). Returns (C_out, C_in/G, *K)."""
    xp = get_array_module(x_pad)
    plan = _plan(g)
    phases = _split(x_pad, g, plan)
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    rows = cig * g.kernel_size
    dw = xp.zeros((G, cog, rows), dtype=x_pad.dtype)
    per_sample = _per_sample_weight_grad(cog, rows, plan.length)
    transposed = cog * rows <= _PER_SAMPLE_WEIGHT_ELEMENTS
    for n0, n1 in _chunks(g, plan, x_pad.dtype.itemsize):
        n = n1 - n0
        buf, ext = _buffers(g, plan, n, x_pad.dtype, xp)
        cols = _columns(phases[n0:n1], g, plan, buf)
        d = _dy_ext(dy[n0:n1], g, plan, ext)
        for j in range(G):
            if per_sample:  # Σ over samples of δ_n · cols_nᵀ, each product in cache
                dn = d[j].reshape(cog, n, plan.length).transpose(1, 0, 2)
                cn = cols[j].reshape(rows, n, plan.length).transpose(1, 2, 0)
                dw[j] += xp.matmul(dn, cn).sum(axis=0)
            elif transposed:  # the same product as colsᵀ's transpose (see above)
                dw[j] += (cols[j] @ d[j].T).T
            else:
                dw[j] += d[j] @ cols[j].T
    return dw.reshape((g.out_channels, cig) + g.kernel)


def input_grad(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """Eq. BX on the flat range: W̃ᵀ·δ, then one contiguous add per tap (into its phase).

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    plan = _plan(g)
    G, cog, cig = g.groups, g.out_channels // g.groups, g.in_channels // g.groups
    rows = cig * g.kernel_size
    wg_t = w.reshape(G, cog, rows).transpose(0, 2, 1)
    dph = xp.zeros((g.batch, g.in_channels, plan.n_phases, math.prod(plan.grid)), dtype=dy.dtype)
    length = plan.length
    for n0, n1 in _chunks(g, plan, dy.dtype.itemsize):
        n = n1 - n0
        buf, ext = _buffers(g, plan, n, dy.dtype, xp)
        cols = buf.reshape(G, rows, n * length)
        d = _dy_ext(dy[n0:n1], g, plan, ext)
        for j in range(G):
            xp.matmul(wg_t[j], d[j], out=cols[j])
        arr = buf.reshape((g.in_channels, len(plan.taps), n, length))
        target = dph[n0:n1]
        if compiled.takes(arr, target):
            flat_compiled.add_taps(arr, target, plan.phase, plan.offset)
            continue
        for i, (ph, off) in enumerate(zip(plan.phase, plan.offset, strict=True)):
            target[:, :, ph, off : off + length] += arr[:, i].transpose(1, 0, 2)
    return _merge(dph, g, plan)
