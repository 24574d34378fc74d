"""The seed's summation formulas, executed as written: the reference algorithm.

Vectorised over batch and channels only; the loops run over output positions and
kernel taps. O(prod(out)·prod(K)) Python iterations: a definition to test against,
not a fast path.
"""

from __future__ import annotations

import itertools
from typing import Any

from foldconv.backend import get_array_module
from foldconv.functional._args import ConvGeometry


def _grouped_weight(w: Any, g: ConvGeometry) -> Any:
    """(C_out, C_in/G, *K) -> (G, C_out/G, C_in/G, *K)."""
    return w.reshape((g.groups, g.out_channels // g.groups) + w.shape[1:])


def _positions(g: ConvGeometry):
    return itertools.product(*(range(o) for o in g.out_shape))


def _taps(g: ConvGeometry):
    return itertools.product(*(range(k) for k in g.kernel))


def _input_index(pos, tap, g: ConvGeometry) -> tuple[int, ...]:
    return tuple(o * s + t * d for o, t, s, d in zip(pos, tap, g.stride, g.dilation, strict=True))


def conv_forward_direct(x_pad: Any, w: Any, g: ConvGeometry) -> Any:
    """Y[n, c, o] = sum_{k, t} W[c, k, t] · X_pad[n, k, o·stride + t·dilation] (no bias).

    Parameters
    ----------
    x_pad : ndarray, shape (N, C_in, *S_pad)
    w : ndarray, shape (C_out, C_in/G, *K)

    Returns
    -------
    ndarray, shape (N, C_out, *out)
    """
    xp = get_array_module(x_pad)
    n, G = g.batch, g.groups
    wg = _grouped_weight(w, g)
    xg = x_pad.reshape((n, G, g.in_channels // G) + x_pad.shape[2:])
    y = xp.zeros((n, G, g.out_channels // G) + g.out_shape, dtype=x_pad.dtype)
    for pos in _positions(g):
        acc = y[(slice(None),) * 3 + pos]
        for tap in _taps(g):
            xs = xg[(slice(None),) * 3 + _input_index(pos, tap, g)]  # (N, G, Cig)
            acc += xp.einsum("ngi,goi->ngo", xs, wg[(slice(None),) * 3 + tap])
    return y.reshape((n, g.out_channels) + g.out_shape)


def conv_weight_grad_direct(dy: Any, x_pad: Any, g: ConvGeometry) -> Any:
    """dL/dW[c, k, t] = sum_{n, o} δ[n, c, o] · X_pad[n, k, o·stride + t·dilation].

    Returns
    -------
    ndarray, shape (C_out, C_in/G, *K)
    """
    xp = get_array_module(x_pad)
    n, G = g.batch, g.groups
    xg = x_pad.reshape((n, G, g.in_channels // G) + x_pad.shape[2:])
    dyg = dy.reshape((n, G, g.out_channels // G) + g.out_shape)
    dwg = xp.zeros((G, g.out_channels // G, g.in_channels // G) + g.kernel, dtype=dy.dtype)
    for pos in _positions(g):
        d = dyg[(slice(None),) * 3 + pos]  # (N, G, Cog)
        for tap in _taps(g):
            idx = (slice(None),) * 3 + _input_index(pos, tap, g)
            dwg[(slice(None),) * 3 + tap] += xp.einsum("ngo,ngi->goi", d, xg[idx])
    return dwg.reshape((g.out_channels, g.in_channels // G) + g.kernel)


def conv_input_grad_direct(dy: Any, w: Any, g: ConvGeometry) -> Any:
    """dL/dX_pad[n, k, p] = sum_{c, o, t : o·stride + t·dilation = p} δ[n, c, o] · W[c, k, t].

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    n, G = g.batch, g.groups
    wg = _grouped_weight(w, g)
    dyg = dy.reshape((n, G, g.out_channels // G) + g.out_shape)
    dxg = xp.zeros((n, G, g.in_channels // G) + g.padded_shape, dtype=dy.dtype)
    for pos in _positions(g):
        d = dyg[(slice(None),) * 3 + pos]  # (N, G, Cog)
        for tap in _taps(g):
            idx = (slice(None),) * 3 + _input_index(pos, tap, g)
            dxg[idx] += xp.einsum("ngo,goi->ngi", d, wg[(slice(None),) * 3 + tap])
    return dxg.reshape((n, g.in_channels) + g.padded_shape)
