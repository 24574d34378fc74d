"""Parameter initialisation with seedable generators (PyTorch's default schemes)."""

from __future__ import annotations

import math

import numpy as np

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that layers use when they are given no ``rng``."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def get_generator(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """A Generator from ``rng``: a Generator as is, an int as a seed, None for the global one."""
    if rng is None:
        return _global_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}"
    )


def uniform(shape, bound: float, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Samples of U(-bound, bound), drawn in float64 then cast (same values for any dtype)."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, std: float, rng: np.random.Generator, dtype=np.float32, mean: float = 0.0):
    """Samples of N(mean, std^2)."""
    return rng.normal(mean, std, size=shape).astype(dtype)


def default_bound(fan_in: int) -> float:
    """PyTorch's default bound for Linear/Conv: kaiming_uniform(a=sqrt(5)) gives 1/sqrt(fan_in).

    The bias uses the same bound, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
