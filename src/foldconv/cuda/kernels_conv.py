"""numba-cuda kernels of the convolution: im2col, col2im as a gather, direct depthwise.

Every kernel works in 3-d: a 1-d or 2-d convolution is a 3-d one with leading spatial
sizes 1 (kernel 1, stride 1, dilation 1, no padding), so one kernel serves every rank.
Arrays are passed flat and C-contiguous; positions are in the *padded* input's
coordinates, and the source (or target) array's origin sits at ``lo`` in them, so a
kernel given the unpadded input reads zeros outside it (implicit zero padding, no
padded copy) and one given an already padded input takes ``lo = 0``.

The column buffer of a tile of ``nt`` samples and a box of output positions (origin
``a``, shape ``b``) holds column entry (c, t, n, o) at ``c·sc + t·st + n·sn + o``, with
o the flat position inside the box: the convolution's layout (C, K, n, P) has
sc = K·nt·P, st = nt·P, sn = P; unfold's (n, C, K, P) has sn = C·K·P, sc = K·P, st = P.

No kernel uses atomics: each thread writes its own output element(s), summing in a
fixed order, so results are bitwise reproducible.
"""

from __future__ import annotations

from foldconv.cuda import kernel
from foldconv.cuda.launch import numba_cuda

# numba.cuda, imported through the launcher: its settings (no stream sync per CuPy
# argument) apply, and a missing numba-cuda is a clear error.
cuda = numba_cuda()


@cuda.jit(device=True)
def _add_digit(digit, step, carry, radix):
    """One digit of a mixed-radix addition: (digit + step + carry) mod radix and the carry
    out. digit and step are below the radix, so it overflows at most once."""
    digit += step + carry
    if digit >= radix:
        return digit - radix, 1
    return digit, 0


@kernel
def im2col(
    n_items, x, cols, C, D, H, W, l0, l1, l2, K0, K1, K2, s0, s1, s2, d0, d1, d2,
    n0, nt, a0, a1, a2, b0, b1, b2, sc, st, sn,
):  # fmt: skip
    """cols[c, t, n, o] = x[n0 + n, c, (a + o)·s + t·d - lo], 0 outside x.

    One column entry per work item, n_items = C·prod(K)·nt·prod(b), item i being the
    entry (c, t0, t1, t2, n, o0, o1, o2) in row-major order: consecutive threads write
    consecutive entries. Integer division is slow on a GPU, so each thread splits its
    first item and the grid's stride into those eight digits once, then moves from item
    to item by a mixed-radix addition (one compare per digit, no division).
    """
    i = cuda.grid(1)
    if i >= n_items:
        return
    r = i
    o2 = r % b2
    r //= b2
    o1 = r % b1
    r //= b1
    o0 = r % b0
    r //= b0
    n = r % nt
    r //= nt
    t2 = r % K2
    r //= K2
    t1 = r % K1
    r //= K1
    t0 = r % K0
    c = r // K0
    step = cuda.gridsize(1)
    r = step
    g_o2 = r % b2
    r //= b2
    g_o1 = r % b1
    r //= b1
    g_o0 = r % b0
    r //= b0
    g_n = r % nt
    r //= nt
    g_t2 = r % K2
    r //= K2
    g_t1 = r % K1
    r //= K1
    g_t0 = r % K0
    g_c = r // K0
    while i < n_items:
        z = (a0 + o0) * s0 + t0 * d0 - l0
        y = (a1 + o1) * s1 + t1 * d1 - l1
        w = (a2 + o2) * s2 + t2 * d2 - l2
        dst = c * sc + ((t0 * K1 + t1) * K2 + t2) * st + n * sn + (o0 * b1 + o1) * b2 + o2
        if 0 <= z < D and 0 <= y < H and 0 <= w < W:
            cols[dst] = x[((((n0 + n) * C + c) * D + z) * H + y) * W + w]
        else:
            cols[dst] = 0
        i += step
        # (digits of i) += (digits of step): each digit and its step are below the
        # radix, so a digit overflows at most once and carries 1.
        o2, carry = _add_digit(o2, g_o2, 0, b2)
        o1, carry = _add_digit(o1, g_o1, carry, b1)
        o0, carry = _add_digit(o0, g_o0, carry, b0)
        n, carry = _add_digit(n, g_n, carry, nt)
        t2, carry = _add_digit(t2, g_t2, carry, K2)
        t1, carry = _add_digit(t1, g_t1, carry, K1)
        t0, carry = _add_digit(t0, g_t0, carry, K0)
        c += g_c + carry


@kernel
def col2im_gather(
    n_items, zero, cols, out, C, D, H, W, l0, l1, l2, K0, K1, K2, s0, s1, s2, d0, d1, d2,
    g0, g1, g2, e0, e1, e2, v0, v1, v2, h0, h1, h2, n0, nt, a0, a1, a2, b0, b1, b2,
    sc, st, sn, r0, r1, r2, R0, R1, R2, accumulate,
):  # fmt: skip
    """out[n0 + n, c, p] (+)= Σ_t cols[c, t, n, o] over the taps t and box positions o
    with (a + o)·s + t·d = p + lo: the adjoint of :func:`im2col`, as a gather.

    One thread per element of the region (origin r, shape R, in out's coordinates) of
    samples n0 .. n0 + nt; n_items = nt·C·prod(R). ``accumulate`` adds to out (tiles
    after the first) instead of overwriting it.

    Only the taps that land on the position are visited, without a test or a division
    per tap: per dimension, o·s + t·d = q needs q divisible by g = gcd(s, d), and then
    t ≡ (q/g)·v (mod e), with e = s/g and v the inverse of d/g modulo e. So the taps are
    f, f + e, f + 2e... from f = ((q/g)·v) mod e, and each step moves o back by h = d/g
    (an 11x11 stride-4 kernel visits 9 of its 121 taps). Taps in row-major order: a
    fixed sum.
    """
    for i in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        r = i
        w = r % R2 + r2
        r //= R2
        y = r % R1 + r1
        r //= R1
        z = r % R0 + r0
        r //= R0
        c = r % C
        n = r // C
        # q = o·s + t·d: the position relative to the box's first input row, per dim;
        # (f, o): the first tap landing on it and the output position it comes from.
        q = z + l0 - a0 * s0
        f0 = 0 if s0 == 1 else ((q // g0 * v0) % e0 if q % g0 == 0 else K0)
        p0 = q - f0 * d0 if s0 == 1 else (q - f0 * d0) // s0
        q = y + l1 - a1 * s1
        f1 = 0 if s1 == 1 else ((q // g1 * v1) % e1 if q % g1 == 0 else K1)
        p1 = q - f1 * d1 if s1 == 1 else (q - f1 * d1) // s1
        q = w + l2 - a2 * s2
        f2 = 0 if s2 == 1 else ((q // g2 * v2) % e2 if q % g2 == 0 else K2)
        p2 = q - f2 * d2 if s2 == 1 else (q - f2 * d2) // s2
        base = c * sc + n * sn
        acc = zero  # of the arrays' dtype: float32 sums stay float32
        t0, o0 = f0, p0
        while t0 < K0 and o0 >= 0:  # o < 0: this tap and the later ones start before q
            if o0 < b0:
                t1, o1 = f1, p1
                while t1 < K1 and o1 >= 0:
                    if o1 < b1:
                        row = base + (o0 * b1 + o1) * b2
                        tap = (t0 * K1 + t1) * K2
                        t2, o2 = f2, p2
                        while t2 < K2 and o2 >= 0:
                            if o2 < b2:
                                acc += cols[row + (tap + t2) * st + o2]
                            t2 += e2
                            o2 -= h2
                    t1 += e1
                    o1 -= h1
            t0 += e0
            o0 -= h0
        j = ((((n0 + n) * C + c) * D + z) * H + y) * W + w
        if accumulate:
            out[j] += acc
        else:
            out[j] = acc


@kernel
def depthwise_forward(
    n_items, zero, x, w, y, C, m, D, H, W, l0, l1, l2, K0, K1, K2, s0, s1, s2, d0, d1, d2,
    O0, O1, O2,
):  # fmt: skip
    """y[n, c·m + j, o] = Σ_t w[c·m + j, 0, t] · x[n, c, o·s + t·d - lo] (eq. F, groups = C).

    One thread per output element; n_items = N·C·m·prod(O)."""
    for i in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        r = i
        o2 = r % O2
        r //= O2
        o1 = r % O1
        r //= O1
        o0 = r % O0
        r //= O0
        co = r % (C * m)
        n = r // (C * m)
        c = co // m
        base = (n * C + c) * D
        acc = zero
        for t0 in range(K0):
            z = o0 * s0 + t0 * d0 - l0
            if z < 0 or z >= D:
                continue
            for t1 in range(K1):
                yy = o1 * s1 + t1 * d1 - l1
                if yy < 0 or yy >= H:
                    continue
                for t2 in range(K2):
                    ww = o2 * s2 + t2 * d2 - l2
                    if ww < 0 or ww >= W:
                        continue
                    acc += (
                        w[((co * K0 + t0) * K1 + t1) * K2 + t2] * x[((base + z) * H + yy) * W + ww]
                    )
        y[i] = acc


@kernel
def depthwise_input_grad(
    n_items, zero, dy, w, dx, C, m, D, H, W, l0, l1, l2, K0, K1, K2, s0, s1, s2, d0, d1, d2,
    O0, O1, O2, g0, g1, g2, e0, e1, e2, v0, v1, v2, h0, h1, h2,
):  # fmt: skip
    """dx[n, c, p] = Σ_{j, t} w[c·m + j, 0, t] · δ[n, c·m + j, o] over o·s + t·d = p + lo
    (eq. BX, groups = C), a gather: one thread per element of dx (N, C, D, H, W); only
    the taps that land on the position are visited, as in :func:`col2im_gather`."""
    for i in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        r = i
        x2 = r % W
        r //= W
        x1 = r % H
        r //= H
        x0 = r % D
        r //= D
        c = r % C
        n = r // C
        q = x0 + l0
        f0 = 0 if s0 == 1 else ((q // g0 * v0) % e0 if q % g0 == 0 else K0)
        p0 = q - f0 * d0 if s0 == 1 else (q - f0 * d0) // s0
        q = x1 + l1
        f1 = 0 if s1 == 1 else ((q // g1 * v1) % e1 if q % g1 == 0 else K1)
        p1 = q - f1 * d1 if s1 == 1 else (q - f1 * d1) // s1
        q = x2 + l2
        f2 = 0 if s2 == 1 else ((q // g2 * v2) % e2 if q % g2 == 0 else K2)
        p2 = q - f2 * d2 if s2 == 1 else (q - f2 * d2) // s2
        acc = zero
        for j in range(m):
            co = c * m + j
            base = (n * C * m + co) * O0
            t0, o0 = f0, p0
            while t0 < K0 and o0 >= 0:
                if o0 < O0:
                    t1, o1 = f1, p1
                    while t1 < K1 and o1 >= 0:
                        if o1 < O1:
                            row = ((base + o0) * O1 + o1) * O2
                            tap = ((co * K0 + t0) * K1 + t1) * K2
                            t2, o2 = f2, p2
                            while t2 < K2 and o2 >= 0:
                                if o2 < O2:
                                    acc += w[tap + t2] * dy[row + o2]
                                t2 += e2
                                o2 -= h2
                        t1 += e1
                        o1 -= h1
                t0 += e0
                o0 -= h0
        dx[i] = acc


@kernel
def depthwise_weight_grad(
    n_items, zero, dy, x, part, C, m, D, H, W, l0, l1, l2, K0, K1, K2, s0, s1, s2, d0, d1, d2,
    O0, O1, O2, S,
):  # fmt: skip
    """part[n, r, c·m + j, t] = Σ_o δ[n, c·m + j, o] · x[n, c, o·s + t·d - lo] over the
    output rows (o0, o1) of share r of S (eq. BW for one sample and a share of its rows;
    the caller sums over n and r). One thread per (n, r, output channel, tap), positions
    summed in row-major order: deterministic; n_items = N·S·C·m·prod(K)."""
    rows = O0 * O1
    for i in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        r = i
        t2 = r % K2
        r //= K2
        t1 = r % K1
        r //= K1
        t0 = r % K0
        r //= K0
        co = r % (C * m)
        r //= C * m
        share = r % S
        n = r // S
        c = co // m
        xbase = (n * C + c) * D
        dbase = (n * C * m + co) * O0
        acc = zero
        for row in range(share * rows // S, (share + 1) * rows // S):
            o0 = row // O1
            o1 = row - o0 * O1
            z = o0 * s0 + t0 * d0 - l0
            yy = o1 * s1 + t1 * d1 - l1
            if z < 0 or z >= D or yy < 0 or yy >= H:
                continue
            dline = ((dbase + o0) * O1 + o1) * O2
            xline = ((xbase + z) * H + yy) * W
            for o2 in range(O2):
                ww = o2 * s2 + t2 * d2 - l2
                if 0 <= ww < W:
                    acc += dy[dline + o2] * x[xline + ww]
        part[i] = acc
