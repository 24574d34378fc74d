"""foldconv's own worker threads: the pool behind :func:`threads.parallel_map`.

A parallel region hands one task to each worker and runs a share itself. What it costs
here is waking the workers and being woken by them: a thread that waits in the kernel lets
its virtual CPU halt, and waking a halted vCPU takes tens of microseconds. Two halves of a
ReLU over 300 k elements took 36 us on one thread and 67-81 us on two with
``concurrent.futures`` (BENCHMARKS.md, "The pool's hand-over"). So a worker that has just
finished a task, and the caller waiting for the workers, first poll a flag for a short
while (``SPIN_SECONDS``, 1 ms by default) in a compiled loop that yields the core at every
turn (``sched_yield``: another runnable thread, e.g. an OpenBLAS worker, gets it) and does
not hold the GIL; only then do they block on a condition variable. A training step's
regions come a fraction of a millisecond apart, so the workers are found awake; an idle
process stops polling within the window (no long busy-waiting).

Workers poll only while BLAS runs on one thread (``threads.parallel_map`` says so): beside
a multithreaded GEMM, whose OpenBLAS threads need both cores, a polling worker slowed
AlexNet's step from 623-657 to 766-917 ms, so there they block at once, and
:func:`hush` stops those already polling when such a GEMM is about to start.

The polling needs Numba with the compiled kernels on, and ``sched_yield`` (Linux, macOS);
without them, or with ``FOLDCONV_POOL_SPIN_US=0`` in the environment, waits block at once.

Only one region runs at a time: a ``parallel_map`` called inside another (from a task, or
from another thread of the user's while one runs) runs its items on its own thread.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_sched_yield: Any = None  # numba's handle on the C function, set by _spinner()
# _hushed[0] != 0: pollers stop polling and block (set before a multithreaded GEMM, whose
# OpenBLAS threads need both cores; cleared when a region starts).
_hushed = np.zeros(1, dtype=np.int64)


def hush() -> None:
    """Idle workers block now instead of polling (a multithreaded GEMM comes next: a
    polling worker beside OpenBLAS's two threads slowed AlexNet's step 623-657 ->
    766-917 ms)."""
    _hushed[0] = 1


def _spin_seconds_from_env() -> float:
    value = os.environ.get("FOLDCONV_POOL_SPIN_US", "1000").strip()
    try:
        us = float(value)
    except ValueError:
        raise ValueError(
            f"FOLDCONV_POOL_SPIN_US: expected microseconds (a number >= 0), got {value!r}"
        ) from None
    if not us >= 0:
        raise ValueError(f"FOLDCONV_POOL_SPIN_US: expected microseconds >= 0, got {value!r}")
    return us * 1e-6


SPIN_SECONDS = _spin_seconds_from_env()


@functools.cache
def _spinner() -> tuple[Any, int] | None:
    """(compiled poll, polls per SPIN_SECONDS), or None where polling is not available."""
    if SPIN_SECONDS <= 0:
        return None
    from foldconv.functional import compiled  # noqa: PLC0415

    if not compiled.get_compiled() or not hasattr(os, "sched_yield"):
        return None
    from numba import types  # noqa: PLC0415

    globals()["_sched_yield"] = types.ExternalFunction("sched_yield", types.int32())

    @compiled.njit(nogil=True)
    def poll(flags, index, want, turns, hushed):  # pragma: no cover - compiled
        # flags[index] >= want within ``turns`` yields, unless hushed[0] asks to stop?
        # The call is opaque to the compiler, so the flags are read again at every turn.
        for _ in range(turns):
            if flags[index] >= want:
                return True
            if hushed[0] != 0:
                break
            _sched_yield()
        return flags[index] >= want

    import time  # noqa: PLC0415

    probe = np.zeros(1, dtype=np.int64)
    try:
        poll(probe, 0, 1, 10, probe)  # compile (or load from the disk cache)
    except Exception:  # noqa: BLE001 - no sched_yield to link: block instead
        return None
    t0 = time.perf_counter()
    poll(probe, 0, 1, 2000, probe)
    per_turn = max((time.perf_counter() - t0) / 2000, 1e-7)
    return poll, max(1, int(SPIN_SECONDS / per_turn))


def _wait(flags: np.ndarray, index: int, want: int, cond: threading.Condition) -> None:
    """Until flags[index] >= want: poll for a while, then block on ``cond`` (whose
    notifier sets the flag before notifying, holding the condition's lock)."""
    spin = _spinner()
    if spin is not None and spin[0](flags, index, want, spin[1], _hushed):
        return
    with cond:
        while flags[index] < want:
            cond.wait()


def _STOP() -> None:  # the task that ends a worker's thread
    """Never called: posted to a worker, it ends the thread."""


class _Worker:
    """One thread that runs the tasks posted to it, one at a time."""

    def __init__(self, name: str) -> None:
        # flags[0]: tasks posted, flags[1]: tasks done; each written by one side only
        self.flags = np.zeros(2, dtype=np.int64)
        self.cond = threading.Condition()
        self.task: Callable[[], None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        done = 0
        while True:
            _wait(self.flags, 0, done + 1, self.cond)
            # Taken, not kept: a finished task's closure would hold its arrays (a padded
            # input, say) until the next region.
            task, self.task = self.task, None
            if task is _STOP:
                return
            try:
                task()
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                self.error = err
            del task
            done += 1
            with self.cond:
                self.flags[1] = done
                self.cond.notify_all()

    def post(self, task: Callable[[], None]) -> int:
        """Hand over ``task`` (``_STOP``: end the thread); returns the count to wait for."""
        self.task, self.error = task, None
        with self.cond:
            self.flags[0] += 1
            self.cond.notify_all()
        return int(self.flags[0])

    def join(self, ticket: int) -> None:
        _wait(self.flags, 1, ticket, self.cond)


class Pool:
    """``size`` workers and a lock that lets one region at a time use them."""

    def __init__(self, size: int, prefix: str = "foldconv") -> None:
        _spinner()  # compiled (or loaded) here, not in the first region's waits
        self.workers = [_Worker(f"{prefix}_{i}") for i in range(size)]
        self.region = threading.Lock()

    def run(self, drain: Callable[[], None], helpers: int, poll: bool = True) -> bool:
        """``drain`` on ``helpers`` workers and on the calling thread, all at once;
        returns False (running nothing) when another region holds the pool. Raises the
        first error of the caller's share, else of the workers'. ``poll``: the workers
        may poll for their next task once done (else they block at once)."""
        if not self.region.acquire(blocking=False):
            return False
        _hushed[0] = 0 if poll else 1
        try:
            posted = [(w, w.post(drain)) for w in self.workers[:helpers]]
            try:
                drain()
            finally:
                for w, ticket in posted:
                    w.join(ticket)
            for w, _ in posted:
                if w.error is not None:
                    err, w.error = w.error, None  # (its traceback holds the task's frames)
                    raise err
            return True
        finally:
            self.region.release()

    def shutdown(self) -> None:
        with self.region:
            for w in self.workers:
                w.post(_STOP)
            for w in self.workers:
                w.thread.join()
