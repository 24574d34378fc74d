"""A small thread pool for the elementwise kernels that NumPy runs without the GIL.

BLAS already threads the GEMMs; this pool spreads the non-GEMM passes (depthwise taps,
Winograd transforms) over the cores. Work items write disjoint outputs and results
come back in order, so the outcome never depends on scheduling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_num_threads = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: start a new one.
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def set_num_threads(n: int) -> int:
    """Set how many threads foldconv's own kernels use (BLAS keeps its own setting).

    Returns the previous value.
    """
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected a positive int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n: expected a positive int, got {n}")
    previous = _num_threads
    if n != _num_threads and _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = n
    return previous


def get_num_threads() -> int:
    return _num_threads


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """[fn(item) for item in items], spread over the pool; results in input order."""
    global _pool
    items = list(items)
    if _num_threads == 1 or len(items) < 2:
        return [fn(item) for item in items]
    if _pool is None:
        _pool = ThreadPoolExecutor(_num_threads, thread_name_prefix="foldconv")
    return list(_pool.map(fn, items))
