"""Winograd minimal filtering F(m x m, 3 x 3) for 3x3 stride-1 2-d convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each
m x m output tile of one channel pair is A^T [(G g G^T) ⊙ (B^T d B)] A, where d is the
(m+2) x (m+2) input tile and g the 3x3 kernel. Summed over input channels, the
elementwise product becomes, for each of the (m+2)^2 transform positions ξ, one GEMM

    M[ξ] = U[ξ] · V[ξ],  U[ξ] = (G W G^T)[ξ] of shape (C_out, C_in),
                         V[ξ] = (B^T D B)[ξ] of shape (C_in, tiles),

so the multiplications fall from 9 m^2 to (m+2)^2 per output tile and channel pair:
2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3). The transforms themselves are
GEMMs with the Kronecker products kron(B^T, B^T), kron(G, G) and kron(A^T, A^T).

A dilated 3x3 layer is d_h·d_w undilated ones: output rows i·d + p read only input rows
(i + t)·d + p, so each phase (p, q) of the input convolves separately. The input
gradient of a 3x3 stride-1 layer is itself a 3x3 stride-1 convolution of δ with the
flipped kernel (eq. BX'), so it runs here too; the weight gradient uses im2col.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np

from foldconv._config import get_workspace_limit
from foldconv.backend import get_array_module
from foldconv.functional._args import ConvGeometry
from foldconv.functional.workspace import scratch_split


@cache
def transforms(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m, 3) in float64, interpolation points 0, ±1, ±2 (and ∞)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"m: expected 2 or 4, got {m}")
    return np.array(bt, float), np.array(g, float), np.array(at, float)


@cache
def _kron(m: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bt, g, at = transforms(m)
    return (
        np.kron(bt, bt).astype(dtype),
        np.kron(g, g).astype(dtype),
        np.kron(at, at).astype(dtype),
    )


def supports(g: ConvGeometry) -> bool:
    return g.ndim == 2 and g.kernel == (3, 3) and g.stride == (1, 1)


def _bytes_per_sample(g: ConvGeometry, m: int, itemsize: int, out_shape) -> int:
    a2 = (m + 2) ** 2
    tiles = math.prod(-(-o // m) for o in out_shape)
    # D, V (C_in columns each) and M (C_out columns) per transform position, and the
    # m x m output tiles.
    return tiles * (a2 * (2 * g.in_channels + g.out_channels) + m * m * g.out_channels) * itemsize


def fits(g: ConvGeometry, m: int, itemsize: int) -> bool:
    phase_out = tuple(-(-o // d) for o, d in zip(g.out_shape, g.dilation, strict=True))
    return _bytes_per_sample(g, m, itemsize, phase_out) <= get_workspace_limit()


def _input_transform(x: Any, out_hw: tuple[int, int], m: int, d_buf: Any, v_buf: Any):
    """V = B^T d B for every (m+2) x (m+2) input tile of x (N, C, H, W).

    Returns V as (a², C, T) in ``v_buf`` (a = m + 2, T = N · tiles_h · tiles_w) and the
    tile counts (tiles_h, tiles_w).
    """
    xp = get_array_module(x)
    n, c, h, wd = x.shape
    a = m + 2
    nh, nw = -(-out_hw[0] // m), -(-out_hw[1] // m)
    he, we = nh * m + 2, nw * m + 2
    if (he, we) != (h, wd) or not x.flags.c_contiguous:
        ext = xp.zeros((n, c, he, we), dtype=x.dtype)
        hh, ww = min(h, he), min(wd, we)
        ext[:, :, :hh, :ww] = x[:, :, :hh, :ww]
        x = ext
    t = n * nh * nw
    # Gather the tiles, overlapping by 2, as D[(a, b), c, (n, i, j)] = x[n, c, i·m+a, j·m+b].
    # Read directly, the innermost index j steps by m columns; splitting the columns into
    # their m phases first (x[..., q::m], one pass) makes every run of j contiguous, which
    # is what makes this copy run at memory speed.
    phases = [xp.ascontiguousarray(x[..., q::m]) for q in range(m)]
    d = d_buf[: a * a * c * t].reshape(a, a, c, n, nh, nw)
    for b in range(a):
        ph = phases[b % m]
        sn, sc, sh, sw = ph.strides
        view = xp.lib.stride_tricks.as_strided(
            ph[..., b // m :], shape=(a, c, n, nh, nw), strides=(sh, sc, sn, m * sh, sw)
        )
        d[:, b] = view
    del phases
    bb = xp.asarray(_kron(m, x.dtype.str)[0])
    v = v_buf[: a * a * c * t].reshape(a * a, c, t)
    xp.matmul(bb, d.reshape(a * a, c * t), out=v.reshape(a * a, c * t))
    return v, (nh, nw)


def _buffers(x: Any, k: int, out_hw: tuple[int, int], m: int) -> list[Any]:
    """D, V, M and the m x m output tiles, carved from the reused scratch buffer: fresh
    pages for arrays of this size cost more to fault in than the transforms that fill them."""
    n, c = x.shape[:2]
    a2, t = (m + 2) ** 2, n * (-(-out_hw[0] // m)) * (-(-out_hw[1] // m))
    return scratch_split(
        [a2 * c * t, a2 * c * t, a2 * k * t, m * m * k * t], x.dtype, get_array_module(x)
    )


def _forward_phase(x: Any, w: Any, groups: int, out_hw: tuple[int, int], m: int) -> Any:
    """Undilated 3x3 stride-1 convolution of x (N, C, H, W).

    Returns the output tiles as a (N, K, tiles_h, m, tiles_w, m) view (not a copy): the
    caller writes it into its output, cropping the last tiles to ``out_hw``.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    k, a = w.shape[0], m + 2
    d_buf, v_buf, m_buf, y_buf = _buffers(x, k, out_hw, m)
    v, (nh, nw) = _input_transform(x, out_hw, m, d_buf, v_buf)
    t = v.shape[2]
    _, gg, aa = (xp.asarray(mat) for mat in _kron(m, x.dtype.str))
    kg, cg = k // groups, c // groups
    v = v.reshape(a * a, groups, cg, t)
    u = xp.matmul(gg, w.reshape(k * cg, 9).T).reshape(a * a, groups, kg, cg)  # G g G^T
    mm = m_buf.reshape(a * a, groups, kg, t)
    for xi in range(a * a):
        for j in range(groups):
            xp.matmul(u[xi, j], v[xi, j], out=mm[xi, j])
    y = y_buf.reshape(m * m, k * t)
    xp.matmul(aa, mm.reshape(a * a, k * t), out=y)  # A^T M A
    return y.reshape(m, m, k, n, nh, nw).transpose(3, 2, 4, 0, 5, 1)


def _weight_grad_phase(dy: Any, x: Any, groups: int, out_hw: tuple[int, int], m: int) -> Any:
    """dW of an undilated 3x3 stride-1 convolution, in the Winograd domain.

    The forward is y = A^T [U ⊙ V] A with U = G g G^T; so dU[ξ] = Σ_tiles dM[ξ] · V[ξ]^T
    with dM = A dy A^T (per tile), and dW = G^T dU G: per transform position ξ, one GEMM
    (C_out x tiles) · (tiles x C_in), as in the forward.

    Parameters
    ----------
    dy : ndarray, shape (N, K, *out_hw)
    x : ndarray, shape (N, C, H, W)

    Returns
    -------
    ndarray, shape (K, C/G, 3, 3)
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    k, a = dy.shape[1], m + 2
    d_buf, v_buf, m_buf, y_buf = _buffers(x, k, out_hw, m)
    v, (nh, nw) = _input_transform(x, out_hw, m, d_buf, v_buf)
    t = v.shape[2]
    _, gg, aa = (xp.asarray(mat) for mat in _kron(m, x.dtype.str))
    # δ cut into m x m tiles (zero beyond the output), as (m·m, K, T).
    tiles = y_buf.reshape(m, m, k, n, nh, nw)
    tiles_view = tiles.transpose(3, 2, 4, 0, 5, 1)  # (n, k, nh, m, nw, m)
    if out_hw != (nh * m, nw * m):
        tiles[...] = 0
        for u in range(m):
            for w_ in range(m):
                rows = -(-(out_hw[0] - u) // m)
                cols = -(-(out_hw[1] - w_) // m)
                tiles[u, w_, :, :, :rows, :cols] = dy[:, :, u::m, w_::m].transpose(1, 0, 2, 3)
    else:
        tiles_view[...] = dy.reshape(n, k, nh, m, nw, m)
    dm = m_buf.reshape(a * a, k, t)
    xp.matmul(aa.T, y_buf.reshape(m * m, k * t), out=dm.reshape(a * a, k * t))  # A δ A^T
    kg, cg = k // groups, c // groups
    dmg = dm.reshape(a * a, groups, kg, t)
    vg = v.reshape(a * a, groups, cg, t)
    du = xp.empty((a * a, groups, kg, cg), dtype=x.dtype)
    for xi in range(a * a):
        for j in range(groups):
            xp.matmul(dmg[xi, j], vg[xi, j].T, out=du[xi, j])
    dw = xp.matmul(gg.T, du.reshape(a * a, k * cg))  # G^T dU G: (9, K·C/G)
    return dw.reshape(3, 3, k, cg).transpose(2, 3, 0, 1)


def _phases(g: ConvGeometry, m: int, itemsize: int):
    """(p, q, rows, cols, sample step) of each dilation phase that has outputs."""
    dh, dw = g.dilation
    limit = get_workspace_limit()
    for p in range(dh):
        for q in range(dw):
            rows = -(-(g.out_shape[0] - p) // dh)
            cols = -(-(g.out_shape[1] - q) // dw)
            if rows <= 0 or cols <= 0:
                continue
            per_sample = _bytes_per_sample(g, m, itemsize, (rows, cols))
            yield p, q, rows, cols, max(1, limit // max(per_sample, 1))


def forward(x_pad: Any, w: Any, g: ConvGeometry, m: int = 4) -> Any:
    """Eq. F without bias for a 3x3 stride-1 layer, by F(m x m, 3 x 3).

    Parameters
    ----------
    x_pad : ndarray, shape (N, C_in, H_pad, W_pad)
    w : ndarray, shape (C_out, C_in/G, 3, 3)

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)
    """
    xp = get_array_module(x_pad)
    y = xp.empty((g.batch, g.out_channels) + g.out_shape, dtype=x_pad.dtype)
    dh, dw = g.dilation
    for p, q, rows, cols, step in _phases(g, m, x_pad.dtype.itemsize):
        phase = x_pad[:, :, p::dh, q::dw]
        for n0 in range(0, g.batch, step):
            n1 = min(g.batch, n0 + step)
            tiles = _forward_phase(phase[n0:n1], w, g.groups, (rows, cols), m)
            _, _, nh, _, nw, _ = tiles.shape
            dest = y[n0:n1, :, p::dh, q::dw]
            if (dh, dw) == (1, 1) and (rows, cols) == (nh * m, nw * m):
                # Whole tiles: one copy straight into the output.
                dest.reshape(tiles.shape)[...] = tiles
            else:
                full = tiles.reshape(n1 - n0, g.out_channels, nh * m, nw * m)
                dest[...] = full[:, :, :rows, :cols]
    return y


def weight_grad(dy: Any, x_pad: Any, g: ConvGeometry, m: int = 4) -> Any:
    """Eq. BW for a 3x3 stride-1 layer, in the Winograd domain (see _weight_grad_phase).

    Returns
    -------
    ndarray, shape (C_out, C_in/G, 3, 3)
    """
    xp = get_array_module(x_pad)
    dw = xp.zeros((g.out_channels, g.in_channels // g.groups, 3, 3), dtype=x_pad.dtype)
    dh, dwl = g.dilation
    for p, q, rows, cols, step in _phases(g, m, x_pad.dtype.itemsize):
        for n0 in range(0, g.batch, step):
            n1 = min(g.batch, n0 + step)
            dw += _weight_grad_phase(
                dy[n0:n1, :, p::dh, q::dwl],
                x_pad[n0:n1, :, p::dh, q::dwl],
                g.groups,
                (rows, cols),
                m,
            )
    return dw
