"""Winograd minimal filtering F(m x m, r x r) for r x r stride-1 2-d convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each
m x m output tile of one channel pair is A^T [(G g G^T) ⊙ (B^T d B)] A, where d is the
a x a input tile (a = m + r - 1) and g the r x r kernel. Summed over input channels, the
elementwise product becomes, for each of the a² transform positions ξ, one GEMM

    M[ξ] = U[ξ] · V[ξ],  U[ξ] = (G W G^T)[ξ] of shape (C_out, C_in),
                         V[ξ] = (B^T D B)[ξ] of shape (C_in, tiles),

so the multiplications fall from r² m² to a² per output tile and channel pair: 2.25x
fewer for F(2x2, 3x3), 4x for F(4x4, 3x3), 2.8x for F(2x2, 5x5). The transforms are
built exactly from their interpolation points (:func:`transforms`) and applied as GEMMs
with the Kronecker products kron(B^T, B^T), kron(G, G) and kron(A^T, A^T).

A dilated layer is d_h·d_w undilated ones: output rows i·d + p read only input rows
(i + t)·d + p, so each phase (p, q) of the input convolves separately. The input
gradient of a stride-1 layer is itself a stride-1 convolution of δ with the flipped
kernel (eq. BX'), so it runs here too; the weight gradient runs in the Winograd domain.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache
from typing import Any

import numpy as np

from foldconv._config import get_workspace_limit
from foldconv.backend import get_array_module
from foldconv.functional._args import ConvGeometry
from foldconv.functional.workspace import scratch_split

# Interpolation points, in the order they are taken: F(m, r) uses the first m + r - 2 of
# them and ∞. Chosen by the float32 error they give (F(4x4, 3x3), three passes, 256
# channels, max |err| / max |ref|: the usual {0, ±1, ±2} up to 1.7e-5, over the promised
# 1e-5; {0, ±1, 2, -1/2} up to 5.5e-6; BENCHMARKS.md).
POINTS = (
    Fraction(0),
    Fraction(1),
    Fraction(-1),
    Fraction(2),
    Fraction(-1, 2),
    Fraction(1, 2),
    Fraction(-2),
)


def _inverse(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact inverse of a small nonsingular matrix (Gauss-Jordan over the rationals)."""
    n = len(rows)
    aug = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if aug[i][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        inv = 1 / aug[col][col]
        aug[col] = [v * inv for v in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[col], strict=True)]
    return [r[n:] for r in aug]


@cache
def transforms(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m, r), exact, as float64; shapes (a, a), (a, r), (m, a), a = m+r-1.

    Toom-Cook: the linear convolution c = g * d of a length-r kernel and a length-m
    signal is c = V⁻¹[(E_r g) ⊙ (E_m d)], with E_k evaluating a polynomial of k
    coefficients at the a points (the last, ∞, takes its leading coefficient) and V = E_a.
    Correlation, y_i = Σ_k g_k d_{i+k}, is its transpose in d: y = E_mᵀ[(E_r g) ⊙ (V⁻ᵀ d)],
    so A^T = E_mᵀ, G = E_r and B^T = V⁻ᵀ; the scale f_j = Π_{k≠j}(p_j - p_k) is moved
    from B^T to G, which leaves B^T with small integer entries.
    """
    if m < 1 or r < 2 or m + r - 2 > len(POINTS):
        raise ValueError(f"F(m, r): need m >= 1, r >= 2 and m + r <= {len(POINTS) + 2}")
    a = m + r - 1
    pts = POINTS[: a - 1]

    def evaluation(k: int) -> list[list[Fraction]]:
        rows = [[p**i for i in range(k)] for p in pts]
        return rows + [[Fraction(0)] * (k - 1) + [Fraction(1)]]

    v_inv = _inverse(evaluation(a))
    scale = [math.prod((p - q for q in pts if q != p), start=Fraction(1)) for p in pts]
    scale.append(Fraction(1))
    bt = [[scale[i] * v_inv[j][i] for j in range(a)] for i in range(a)]
    g = [[v / scale[i] for v in row] for i, row in enumerate(evaluation(r))]
    at = [list(col) for col in zip(*evaluation(m), strict=True)]
    return (np.array(bt, dtype=float), np.array(g, dtype=float), np.array(at, dtype=float))


@cache
def _kron(m: int, r: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bt, g, at = transforms(m, r)
    return (
        np.kron(bt, bt).astype(dtype),
        np.kron(g, g).astype(dtype),
        np.kron(at, at).astype(dtype),
    )


# Square kernels this module runs (F(m, r) for r x r).
KERNEL_SIZES = (3, 5)


def supports(g: ConvGeometry) -> bool:
    return (
        g.ndim == 2
        and g.kernel[0] == g.kernel[1]
        and g.kernel[0] in KERNEL_SIZES
        and g.stride == (1, 1)
    )


def _bytes_per_sample(g: ConvGeometry, m: int, itemsize: int, out_shape) -> int:
    a2 = (m + g.kernel[0] - 1) ** 2
    tiles = math.prod(-(-o // m) for o in out_shape)
    # D, V (C_in columns each) and M (C_out columns) per transform position, and the
    # m x m output tiles.
    return tiles * (a2 * (2 * g.in_channels + g.out_channels) + m * m * g.out_channels) * itemsize


def fits(g: ConvGeometry, m: int, itemsize: int) -> bool:
    phase_out = tuple(-(-o // d) for o, d in zip(g.out_shape, g.dilation, strict=True))
    return _bytes_per_sample(g, m, itemsize, phase_out) <= get_workspace_limit()


def _input_transform(x: Any, out_hw: tuple[int, int], m: int, r: int, d_buf: Any, v_buf: Any):
    """V = B^T d B for every a x a input tile of x (N, C, H, W), a = m + r - 1.

    Returns V as (a², C, T) in ``v_buf`` (T = N · tiles_h · tiles_w) and the tile counts
    (tiles_h, tiles_w).
    """
    xp = get_array_module(x)
    n, c, h, wd = x.shape
    a = m + r - 1
    nh, nw = -(-out_hw[0] // m), -(-out_hw[1] // m)
    he, we = nh * m + r - 1, nw * m + r - 1
    if (he, we) != (h, wd) or not x.flags.c_contiguous:
        ext = xp.zeros((n, c, he, we), dtype=x.dtype)
        hh, ww = min(h, he), min(wd, we)
        ext[:, :, :hh, :ww] = x[:, :, :hh, :ww]
        x = ext
    t = n * nh * nw
    # Gather the tiles, overlapping by r - 1, as D[(a, b), c, (n, i, j)] = x[n, c, i·m+a, j·m+b].
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
    bb = xp.asarray(_kron(m, r, x.dtype.str)[0])
    v = v_buf[: a * a * c * t].reshape(a * a, c, t)
    xp.matmul(bb, d.reshape(a * a, c * t), out=v.reshape(a * a, c * t))
    return v, (nh, nw)


def _buffers(x: Any, k: int, out_hw: tuple[int, int], m: int, r: int) -> list[Any]:
    """D, V, M and the m x m output tiles, carved from the reused scratch buffer: fresh
    pages for arrays of this size cost more to fault in than the transforms that fill them."""
    n, c = x.shape[:2]
    a2, t = (m + r - 1) ** 2, n * (-(-out_hw[0] // m)) * (-(-out_hw[1] // m))
    return scratch_split(
        [a2 * c * t, a2 * c * t, a2 * k * t, m * m * k * t], x.dtype, get_array_module(x)
    )


def _forward_phase(x: Any, w: Any, groups: int, out_hw: tuple[int, int], m: int) -> Any:
    """Undilated r x r stride-1 convolution of x (N, C, H, W) by w (K, C/G, r, r).

    Returns the output tiles as a (N, K, tiles_h, m, tiles_w, m) view (not a copy): the
    caller writes it into its output, cropping the last tiles to ``out_hw``.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    k, r = w.shape[0], w.shape[-1]
    a = m + r - 1
    d_buf, v_buf, m_buf, y_buf = _buffers(x, k, out_hw, m, r)
    v, (nh, nw) = _input_transform(x, out_hw, m, r, d_buf, v_buf)
    t = v.shape[2]
    _, gg, aa = (xp.asarray(mat) for mat in _kron(m, r, x.dtype.str))
    kg, cg = k // groups, c // groups
    v = v.reshape(a * a, groups, cg, t)
    u = xp.matmul(gg, w.reshape(k * cg, r * r).T).reshape(a * a, groups, kg, cg)  # G g G^T
    mm = m_buf.reshape(a * a, groups, kg, t)
    for xi in range(a * a):
        for j in range(groups):
            xp.matmul(u[xi, j], v[xi, j], out=mm[xi, j])
    y = y_buf.reshape(m * m, k * t)
    xp.matmul(aa, mm.reshape(a * a, k * t), out=y)  # A^T M A
    return y.reshape(m, m, k, n, nh, nw).transpose(3, 2, 4, 0, 5, 1)


def _weight_grad_phase(
    dy: Any, x: Any, groups: int, out_hw: tuple[int, int], m: int, r: int
) -> Any:
    """dW of an undilated r x r stride-1 convolution, in the Winograd domain.

    The forward is y = A^T [U ⊙ V] A with U = G g G^T; so dU[ξ] = Σ_tiles dM[ξ] · V[ξ]^T
    with dM = A dy A^T (per tile), and dW = G^T dU G: per transform position ξ, one GEMM
    (C_out x tiles) · (tiles x C_in), as in the forward.

    Parameters
    ----------
    dy : ndarray, shape (N, K, *out_hw)
    x : ndarray, shape (N, C, H, W)

    Returns
    -------
    ndarray, shape (K, C/G, r, r)
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    k, a = dy.shape[1], m + r - 1
    d_buf, v_buf, m_buf, y_buf = _buffers(x, k, out_hw, m, r)
    v, (nh, nw) = _input_transform(x, out_hw, m, r, d_buf, v_buf)
    t = v.shape[2]
    _, gg, aa = (xp.asarray(mat) for mat in _kron(m, r, x.dtype.str))
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
    dw = xp.matmul(gg.T, du.reshape(a * a, k * cg))  # G^T dU G: (r², K·C/G)
    return dw.reshape(r, r, k, cg).transpose(2, 3, 0, 1)


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
    """Eq. F without bias for an r x r stride-1 layer, by F(m x m, r x r).

    Parameters
    ----------
    x_pad : ndarray, shape (N, C_in, H_pad, W_pad)
    w : ndarray, shape (C_out, C_in/G, r, r)

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
    """Eq. BW for an r x r stride-1 layer, in the Winograd domain (see _weight_grad_phase).

    Returns
    -------
    ndarray, shape (C_out, C_in/G, r, r)
    """
    xp = get_array_module(x_pad)
    dw = xp.zeros((g.out_channels, g.in_channels // g.groups) + g.kernel, dtype=x_pad.dtype)
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
                g.kernel[0],
            )
    return dw
