"""One thread budget per process, shared by BLAS, Numba and foldconv's own pool.

foldconv runs work on three thread pools: OpenBLAS's (every GEMM), Numba's (only if some
code runs a ``parallel=True`` kernel: foldconv's own compiled kernels are serial and
release the GIL instead) and the small pool below, which spreads the non-GEMM passes
(im2col copies, col2im adds, depthwise taps) over the cores. Each of those libraries
assumes by default that it owns every core of the machine.

The budget is one number, ``n``: the cores this process may run on
(``os.sched_getaffinity(0)``, else ``os.cpu_count()``), or what
:func:`set_num_threads` or the ``FOLDCONV_NUM_THREADS`` environment variable (read when
foldconv is imported) asked for. Each of the three pools is capped at ``n``; they do not
split it, because in foldconv they never run at the same time: a step is a sequence of
GEMMs, then elementwise passes, each of which waits for the previous one to finish; the
pool's workers never call BLAS (their work is copies, adds and einsum loops) and the
compiled kernels they call are serial. So at any moment at most ``n`` threads of this
process have work, and giving BLAS ``n`` threads while the pool sleeps oversubscribes
nothing; splitting would only leave cores idle.

The caller of :func:`parallel_map` takes a share of the work itself, so the pool holds
``n - 1`` workers and a parallel region runs exactly ``n`` threads. Idle workers block in
``queue.SimpleQueue.get`` (a lock wait in the kernel): they do not spin and cost no CPU.

BLAS is always capped: a BLAS with more threads than the budget is the oversubscription
the budget exists to prevent. A user who wants more threads raises the budget itself
(``set_num_threads`` accepts more threads than cores). The limits reach the libraries
lazily, at the first convolution or linear layer (:func:`ready`), so that
``import foldconv`` neither loads threadpoolctl nor starts Numba's threads; a later
:func:`set_num_threads` applies at once.

Work items write disjoint outputs and results come back in order, so the outcome never
depends on the number of threads or on scheduling.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ENV_VAR = "FOLDCONV_NUM_THREADS"


def available_cores() -> int:
    """The number of cores this process may run on (its CPU affinity set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _check(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name}: expected a positive int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"{name}: expected a positive int, got {n}")
    return n


def _from_env() -> int | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(
            f"{ENV_VAR}: expected a positive integer number of threads, got {value!r}"
        ) from None
    if n < 1:
        raise ValueError(f"{ENV_VAR}: expected a positive integer number of threads, got {n}")
    return n


_requested: int | None = _from_env()  # None: the cores of the affinity set
_num_threads: int = _requested or available_cores()
_applied = False  # the budget has reached BLAS
_numba_applied = 0  # the budget Numba was last given (0: none yet)
_pool: ThreadPoolExecutor | None = None


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: start a new one. Its
    # affinity may differ too, so an automatic budget is worked out again.
    global _pool, _num_threads, _applied
    _pool = None
    if _requested is None:
        _num_threads = available_cores()
        _applied = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def set_num_threads(n: int | None) -> int:
    """Set the thread budget of this process: BLAS, Numba and foldconv's pool each get
    at most ``n`` threads.

    Parameters
    ----------
    n : int or None
        Threads (>= 1; more than the cores is allowed but oversubscribes them). ``None``
        returns to the default: ``FOLDCONV_NUM_THREADS`` if set, else the number of cores
        in this process's affinity set.

    Returns
    -------
    int
        The previous budget.
    """
    global _requested
    previous = _num_threads
    _requested = _from_env() if n is None else _check(n, "n")
    _set(_requested or available_cores())
    apply()
    return previous


def get_num_threads() -> int:
    """The thread budget (see :func:`set_num_threads`)."""
    return _num_threads


def _set(n: int) -> None:
    global _num_threads, _pool, _applied
    if n != _num_threads and _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = n
    _applied = False


def apply() -> None:
    """Cap OpenBLAS (through threadpoolctl) and, if it is imported, Numba at the budget."""
    global _applied
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=_num_threads, user_api="blas")
    _applied = True
    if "numba" in sys.modules:
        set_numba_threads(_num_threads)


def set_numba_threads(n: int) -> None:
    """Numba's parallel regions get at most ``n`` threads (capped at the pool Numba
    started with, NUMBA_NUM_THREADS). numba.set_num_threads is per calling thread: this
    sets it for the caller, normally the main thread, which is where foldconv runs."""
    global _numba_applied
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    _numba_applied = n


def ready() -> None:
    """Make sure the budget has reached BLAS and Numba (cheap once it has): called before
    foldconv's GEMMs. Numba is set once it has been imported, by foldconv or the user."""
    if not _applied:
        apply()
    elif _numba_applied != _num_threads and "numba" in sys.modules:
        set_numba_threads(_num_threads)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_num_threads - 1, thread_name_prefix="foldconv")
    return _pool


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """[fn(item) for item in items], spread over at most ``get_num_threads()`` threads
    (the caller's included); results in input order."""
    items = list(items)
    threads = min(_num_threads, len(items))
    if threads <= 1:
        return [fn(item) for item in items]
    results: list[Any] = [None] * len(items)
    # Each thread takes the next item until none is left; next() on a count is atomic.
    counter = itertools.count()

    def drain() -> None:
        while (i := next(counter)) < len(items):
            results[i] = fn(items[i])

    helpers = [_get_pool().submit(drain) for _ in range(threads - 1)]
    try:
        drain()
    finally:
        for h in helpers:
            # A helper that never started has nothing left to do (and must not be waited
            # for: its workers may be the callers of a nested parallel_map).
            if not h.cancel():
                h.result()
    return results
