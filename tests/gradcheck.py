"""Shared test oracles: relative error and float64 central finite differences."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| (0 when both are all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference shape {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def numerical_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6):
    """d f / d x by central differences, element by element (float64; small x only)."""
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def directional_check(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    analytic_grad: np.ndarray,
    rng: np.random.Generator,
    eps: float = 1e-6,
    directions: int = 3,
) -> float:
    """Worst relative mismatch of <grad, v> against (f(x+eps v) - f(x-eps v)) / 2eps.

    Checks the gradient along a few random directions, as Chainer's check does, so that
    large inputs stay cheap.
    """
    worst = 0.0
    for _ in range(directions):
        v = rng.standard_normal(x.shape)
        numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        analytic = float(np.sum(analytic_grad * v))
        scale = max(abs(numeric), abs(analytic), 1e-12)
        worst = max(worst, abs(numeric - analytic) / scale)
    return worst
