"""Softmax cross-entropy and NLL with class-index targets as numba-cuda kernels.

The input is read in its own layout, viewed as (N, C, S) (S = d1·d2·…, 1 for (N, C)
logits): row i = n·S + s holds the C logits z[n, :, s]. Three launches make a loss:

1. :func:`_class_rows`, one thread per row: the row's log-sum-exp (max, then the sum of
   exp(z - max) accumulated in float64, then max + log of it), its loss, its weight
   v_i = w[t_i] (0 where ignored) and whether its target is out of range;
2. :func:`_row_partials`, as often as needed: sums of fixed chunks of ``CHUNK`` rows, each
   in row order (a tree of fixed shape: deterministic, no atomics);
3. :func:`_row_finish`, one thread: the last chunk's sums, and the loss (total / W for
   'mean').

The gradient is one launch, :func:`_class_grad`, one thread per input element, in the
input's layout; it reads the row's log-sum-exp and W saved by the forward pass. All
arithmetic inside the kernels is float64, rounded once to the input's dtype on store.

One scalar comes back to the host per forward pass: whether a target was out of range,
which must raise a ValueError as on the CPU (PyTorch's CUDA kernels assert on the device
instead). The loss itself stays on the device (a 0-d array).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from foldconv.backend import get_array_module
from foldconv.cuda.launch import kernel

__all__ = ["class_loss_backward", "class_loss_forward"]

# Rows per partial sum: float64 sums of 256 float32-rounded terms lose nothing that
# matters, and a batch of up to 256 rows needs no partial pass at all.
CHUNK = 256


@cuda.jit(device=True)
def _ieee_div(a, b):
    """a / b with IEEE results for b = 0 (inf or nan, as NumPy gives), not an error."""
    if b == 0.0:
        if a == 0.0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


@kernel
def _class_rows(
    m, c, s, z, t, w, has_weight, ignore_index, eps, log_softmax, loss, v, lse, bad
):  # fmt: skip
    """Per row: lse[i] (0 for NLL), loss[i], v[i] and bad[i] (i if the target is out of
    range, else m).

    CE (log_softmax): loss_i = (1-e) v_i (lse_i - z_it) + (e/C) Σ_c w_c (lse_i - z_ic);
    NLL: loss_i = -v_i z_it; both 0 on ignored rows.
    """
    for i in range(cuda.grid(1), m, cuda.gridsize(1)):
        n = i // s
        base = n * c * s + (i - n * s)
        ti = t[i]
        li = 0.0
        vi = 0.0
        lse_i = 0.0
        bad_i = m
        if log_softmax:
            mx = float(z[base])
            for k in range(1, c):
                x = float(z[base + k * s])
                if x > mx:
                    mx = x
            acc = 0.0
            for k in range(c):
                acc += math.exp(float(z[base + k * s]) - mx)
            lse_i = mx + math.log(acc)
        if ti != ignore_index:
            if ti < 0 or ti >= c:
                bad_i = i
            else:
                vi = float(w[ti]) if has_weight else 1.0
                li = -vi * (float(z[base + ti * s]) - lse_i)
                if eps > 0.0:
                    smooth = 0.0
                    for k in range(c):
                        wk = float(w[k]) if has_weight else 1.0
                        smooth += wk * (lse_i - float(z[base + k * s]))
                    li = (1.0 - eps) * li + (eps / c) * smooth
        loss[i] = li
        v[i] = vi
        lse[i] = lse_i
        bad[i] = bad_i


@kernel
def _row_partials(p, n, chunk, loss, v, bad, out_loss, out_v, out_bad):
    """out[q] = the sums (and the least bad row) over rows [q·chunk, (q+1)·chunk)."""
    for q in range(cuda.grid(1), p, cuda.gridsize(1)):
        start = q * chunk
        stop = min(start + chunk, n)
        sl = 0.0
        sv = 0.0
        b = bad[start]
        for i in range(start, stop):
            sl += loss[i]
            sv += v[i]
            if bad[i] < b:
                b = bad[i]
        out_loss[q] = sl
        out_v[q] = sv
        out_bad[q] = b


@kernel
def _row_finish(one, n, loss, v, bad, none_bad, c, w, has_weight, mean, out, totals, first_bad):
    """One thread: totals = [Σ loss, W = Σ v, Σ_c w_c], out[0] = the reduced loss,
    first_bad[0] = the first row with an out-of-range target (``none_bad`` if none)."""
    for _ in range(cuda.grid(1), one, cuda.gridsize(1)):
        sl = 0.0
        sv = 0.0
        b = none_bad
        for i in range(n):
            sl += loss[i]
            sv += v[i]
            if bad[i] < b:
                b = bad[i]
        ws = 0.0
        if has_weight:
            for k in range(c):
                ws += float(w[k])
        else:
            ws = float(c)
        totals[0] = sl
        totals[1] = sv
        totals[2] = ws
        first_bad[0] = b
        out[0] = _ieee_div(sl, sv) if mean else sl


@kernel
def _class_grad(
    total, c, s, z, t, w, has_weight, ignore_index, eps, log_softmax, lse, totals,
    go, go_rows, go_mode, mean, out,
):  # fmt: skip
    """out = dL/dz, one thread per element j of the (N, C, S) input.

    CE: g_i [(1-e) v_i (p_ij - [j = t_i]) + (e/C)(p_ij Σ_c w_c - w_j)], p = exp(z - lse);
    NLL: -g_i v_i [j = t_i]; 0 on ignored rows. g_i: ``go`` (go_mode 0), go_rows[0]
    (1) or go_rows[i] (2), divided by W = totals[1] for 'mean'.
    """
    cs = c * s
    for j in range(cuda.grid(1), total, cuda.gridsize(1)):
        n = j // cs
        r = j - n * cs
        k = r // s
        i = n * s + (r - k * s)
        ti = t[i]
        g = 0.0
        if ti != ignore_index and ti >= 0 and ti < c:
            if go_mode == 0:
                gi = go
            elif go_mode == 1:
                gi = float(go_rows[0])
            else:
                gi = float(go_rows[i])
            if mean:
                gi = _ieee_div(gi, totals[1])
            vi = float(w[ti]) if has_weight else 1.0
            if log_softmax:
                p = math.exp(float(z[j]) - lse[i])
                d = vi * p - vi if k == ti else vi * p
                if eps > 0.0:
                    wk = float(w[k]) if has_weight else 1.0
                    d = (1.0 - eps) * d + (eps / c) * (p * totals[2] - wk)
                g = gi * d
            elif k == ti:
                # Only the target's entry: elsewhere 0, even where g_i is inf (W = 0).
                g = gi * -vi
        out[j] = g


class Saved:
    """What the gradient needs from the forward pass: each row's log-sum-exp (M,) and
    the totals [Σ loss, W, Σ_c w_c], float64 device arrays."""

    __slots__ = ("lse", "totals")

    def __init__(self, lse: Any, totals: Any) -> None:
        self.lse = lse
        self.totals = totals


def _dims(z: Any) -> tuple[int, int, int]:
    n, c = z.shape[0], z.shape[1]
    s = int(np.prod(z.shape[2:], dtype=np.int64)) if z.ndim > 2 else 1
    return n, c, s


def class_loss_forward(
    z: Any,
    t: Any,
    w: Any,
    *,
    ignore_index: int,
    eps: float,
    log_softmax: bool,
    reduction: str,
) -> tuple[Any, Saved]:
    """The loss of logits (CE) or log-probabilities (NLL) ``z`` at class indices ``t``.

    Parameters
    ----------
    z : ndarray, shape (N, C, d1, ...), float32 or float64, C-contiguous
    t : ndarray, shape (N·d1·...,), int64
        Class indices, or ``ignore_index``.
    w : ndarray, shape (C,), of z's dtype, or None
    eps : float
        Label smoothing (0 for NLL).

    Returns
    -------
    loss : ndarray
        Shape (1,) of z's dtype for 'mean' and 'sum'; the (M,) float64 row losses for
        'none'.
    saved : Saved

    Raises
    ------
    ValueError
        If a target is neither in [0, C) nor ``ignore_index``.
    """
    xp = get_array_module(z, t)
    n, c, s = _dims(z)
    m = n * s
    # Written row by row by _class_rows; never zero-size (a kernel argument), and not read
    # when there are no rows.
    rows = max(m, 1)
    loss = xp.empty(rows, dtype=np.float64)
    v = xp.empty(rows, dtype=np.float64)
    lse = xp.empty(rows, dtype=np.float64)
    bad = xp.empty(rows, dtype=np.int64)
    has_weight = w is not None
    w_arg = w if has_weight else xp.zeros(1, dtype=z.dtype)
    _class_rows(
        m, m, c, s, z.reshape(-1), t, w_arg, has_weight, int(ignore_index), float(eps),
        bool(log_softmax), loss, v, lse, bad,
    )  # fmt: skip
    pl, pv, pb, k = loss, v, bad, m
    while k > CHUNK:
        p = -(-k // CHUNK)
        ql = xp.empty(p, dtype=np.float64)
        qv = xp.empty(p, dtype=np.float64)
        qb = xp.empty(p, dtype=np.int64)
        _row_partials(p, p, k, CHUNK, pl, pv, pb, ql, qv, qb)
        pl, pv, pb, k = ql, qv, qb, p
    out = xp.empty(1, dtype=z.dtype)
    totals = xp.empty(3, dtype=np.float64)
    first_bad = xp.empty(1, dtype=np.int64)
    _row_finish(
        1, 1, k, pl, pv, pb, m, c, w_arg, has_weight, reduction == "mean", out, totals,
        first_bad,
    )  # fmt: skip
    # The one value read back: a bad target must raise here, as on the CPU.
    first = int(first_bad[0])
    if first < m:
        raise ValueError(
            f"target: expected class indices in [0, {c - 1}] (or ignore_index="
            f"{ignore_index}), got {int(t[first])}"
        )
    return (loss[:m] if reduction == "none" else out), Saved(lse, totals)


def class_loss_backward(
    z: Any,
    t: Any,
    w: Any,
    saved: Saved,
    *,
    ignore_index: int,
    eps: float,
    log_softmax: bool,
    reduction: str,
    grad_output: Any,
) -> Any:
    """dL/dz for :func:`class_loss_forward`'s loss, shape and dtype of ``z``.

    Parameters
    ----------
    grad_output : float or ndarray
        A Python or NumPy scalar (passed to the kernel as a value: nothing is copied to
        the device), a one-element array, or (reduction 'none') an array of one value
        per row (M,) or of the per-row loss shape.
    """
    xp = get_array_module(z, t)
    n, c, s = _dims(z)
    m = n * s
    if isinstance(grad_output, (int, float, np.integer, np.floating)) and not isinstance(
        grad_output, bool
    ):
        go, go_rows, go_mode = float(grad_output), saved.lse, 0
    else:
        go_rows = xp.ascontiguousarray(xp.asarray(grad_output)).reshape(-1)
        go, go_mode = 0.0, (1 if go_rows.size == 1 and reduction != "none" else 2)
        if go_mode == 2 and go_rows.size != m:
            raise ValueError(f"grad_output: expected {m} values (one per row), got {go_rows.size}")
    has_weight = w is not None
    w_arg = w if has_weight else xp.zeros(1, dtype=z.dtype)
    out = xp.empty(z.shape, dtype=z.dtype)
    total = out.size
    _class_grad(
        total, total, c, s, z.reshape(-1), t, w_arg, has_weight, int(ignore_index), float(eps),
        bool(log_softmax), saved.lse, saved.totals, go, go_rows, go_mode,
        reduction == "mean", out.reshape(-1),
    )  # fmt: skip
    return out
