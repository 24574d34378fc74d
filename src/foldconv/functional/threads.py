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
nothing; splitting would only leave cores idle. One exception: OpenBLAS's workers spin
for a while after each multithreaded call, holding cores the pool then wants; GEMMs too
small to gain from threads therefore run on one BLAS thread (:func:`gemm_ready`).

The caller of :func:`parallel_map` takes a share of the work itself, so the pool holds
``n - 1`` workers and a parallel region runs exactly ``n`` threads. A worker that finished
a task polls for the next one for up to a millisecond, yielding its core at every turn,
then blocks in a condition wait (functional/pool.py): an idle process costs no CPU.

BLAS is always capped: a BLAS with more threads than the budget is the oversubscription
the budget exists to prevent. A user who wants more threads raises the budget itself
(``set_num_threads`` accepts more threads than cores). The limits reach the libraries
lazily, before the first convolution or linear layer runs (:func:`ready`), so that
``import foldconv`` neither loads threadpoolctl nor starts Numba's threads; a later
:func:`set_num_threads` applies at once.

The budget is a ceiling: while other processes keep some of the cores busy, all three
use fewer threads (:func:`set_adaptive`, on by default), because a parallel region on a
core that another process also wants waits for its slowest thread.

Work items write disjoint outputs and results come back in order, so the outcome never
depends on the number of threads or on scheduling.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from foldconv.functional import pool as worker_pool

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
_num_threads: int = _requested or available_cores()  # the budget
_active: int = _num_threads  # threads in use now: the budget, or fewer on a busy machine
_adaptive = os.environ.get("FOLDCONV_ADAPTIVE_THREADS", "1").strip() not in ("0", "false", "no")
_next_check = 0.0  # time.monotonic() of the next look at the machine (0: at once)
_numba_applied = 0  # the thread count Numba was last given (0: none yet)
_controller: Any = None  # threadpoolctl's view of the loaded BLAS libraries
_pool: Any = None  # foldconv.functional.pool.Pool, started at the first parallel region
_pool_lock = threading.Lock()  # one pool, even when several threads start regions at once


def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: start a new one. Its
    # affinity may differ too, so an automatic budget is worked out again.
    global _pool, _num_threads, _active, _next_check, _controller, _numba_applied, _last
    global _blas_threads, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()  # (a thread of the parent may have held it)
    _blas_threads = 0
    _last = None  # the child's CPU clock starts again at zero
    _controller = None
    _numba_applied = 0
    _next_check = 0.0
    if _requested is None:
        _num_threads = _active = available_cores()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def set_num_threads(n: int | None) -> int:
    """Set the thread budget of this process: BLAS, Numba and foldconv's pool each get
    at most ``n`` threads (fewer while other processes keep cores busy, see
    :func:`set_adaptive`).

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
    global _requested, _num_threads, _active, _pool, _controller
    previous = _num_threads
    _requested = _from_env() if n is None else _check(n, "n")
    _num_threads = _requested or available_cores()
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown()
            _pool = None
    _controller = None  # look again for BLAS libraries loaded since
    _active = _num_threads
    _refresh(wait=False)
    return previous


def get_num_threads() -> int:
    """The thread budget (see :func:`set_num_threads`)."""
    return _num_threads


def active_threads() -> int:
    """The threads in use now: the budget, or fewer while other processes take cores."""
    return _active


def set_adaptive(enabled: bool) -> bool:
    """Whether foldconv uses fewer threads than its budget while other processes keep
    cores busy (default: on). Returns the previous setting.

    Why: a parallel region is as slow as its slowest thread, and on a core shared with a
    busy process a thread gets half the core in slices of milliseconds, so two threads
    on two cores with one of them taken run slower than one thread alone, and worse
    still with OpenBLAS's workers spinning while they wait (BENCHMARKS.md, "Under
    load"). Every half second, at the next convolution or linear layer, foldconv reads
    how much CPU other processes used on its cores (``/proc/stat`` less its own time)
    and how long its own threads waited for a core (``/proc/self/task/*/schedstat``),
    and sets the threads in use to the cores left free, at least 1 and at most the
    budget. The first look, before the first GEMM, samples the machine for 50 ms.
    Off, the budget is used as it is. ``FOLDCONV_ADAPTIVE_THREADS=0`` in the environment
    turns it off from the start.

    OpenBLAS's sgemm may sum in another order with another thread count (measured:
    (32 x 21110) @ (21110 x 144) differs in the last bits between 1 and 2 threads), so
    with adapting on, two runs of the same seed can differ in the last bits when the
    machine's load differed; turn it off for bit-for-bit repeatable runs.
    """
    global _adaptive, _active, _next_check
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    previous, _adaptive = _adaptive, enabled
    if not enabled:
        _active = _num_threads
    _next_check = 0.0
    ready()
    return previous


def get_adaptive() -> bool:
    """Whether the thread count adapts to other processes (see :func:`set_adaptive`)."""
    return _adaptive


# --- looking at the machine -------------------------------------------------------------

CHECK_SECONDS = 0.5  # how often the machine is looked at (at the next GEMM)
_FIRST_SAMPLE_SECONDS = 0.05  # 5 clock ticks of /proc/stat per core
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_last: tuple[float, float, float, float] | None = None  # wall, busy, own cpu, own wait


def _sample() -> tuple[float, float, float, float] | None:
    """(wall s, busy s of the affinity set's cores, this process's CPU s, its threads'
    run-queue wait s), or None where /proc is not there to read."""
    try:
        cores = os.sched_getaffinity(0)
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                name, *fields = line.split()
                if name == "cpu" or int(name[3:]) not in cores:
                    continue
                ticks = [int(v) for v in fields[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        wait = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    wait += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that just ended
                continue
    except (OSError, AttributeError, ValueError):
        return None
    return time.monotonic(), busy / _HZ, time.process_time(), wait * 1e-9


def decide(
    active: int, budget: int, cores: int, others: float, waited: float, resumed: bool = False
) -> int:
    """The threads to use next.

    Parameters
    ----------
    active : int
        Threads in use during the last interval.
    budget, cores : int
        The budget, and the cores of the affinity set.
    others : float
        Cores' worth of CPU that other processes used on our cores (CPU s / wall s).
    waited : float
        Cores' worth of time our threads spent runnable but waiting for a core.
    resumed : bool
        This process computed nothing for a while during the interval (it waited: for
        input, for a lock, for another process's turn).

    Returns
    -------
    int
        ``cores`` less the cores other processes keep busy, rounded so that a process
        using 0.6 of a core counts as one (a busy loop that shares a core with us gets
        only part of it), between 1 and ``budget``; one fewer than ``active`` when our
        threads waited for a core a fifth of the time or more each. After a pause
        (``resumed``), fewer than ``active`` only if our threads also waited for a core
        (a tenth of one or more): what others ran while we paused may have been their
        turn, not a load that stays (two processes taking turns would each see the
        other's work and halve their threads: LeNet-5's epochs, taken in turn with
        PyTorch's, 0.73-0.78 s instead of 0.57-0.64 s).
    """
    target = cores - int(others + 0.4)
    if active > 1 and waited >= 0.2 * active:
        target = min(target, active - 1)
    if resumed and target < active and waited < _RESUMED_WAIT_EVIDENCE:
        target = active
    return max(1, min(budget, target))


# A pause: no ready() call for this long (a LeNet-5 step calls it ~10 times; one pass of
# AlexNet at batch 128 may take longer, and then its waits still count as evidence).
IDLE_SECONDS = 0.25
# Cores' worth of run-queue wait that shows others took cores from our threads.
_RESUMED_WAIT_EVIDENCE = 0.1
_last_ready = 0.0  # time.monotonic() of the last ready() call


def _look(resumed: bool = False) -> None:
    global _last, _active
    now = _sample()
    if now is None:
        return
    if _last is None:
        # The first look: sample a short quiet interval (meant to see the others alone:
        # no pause to tell apart).
        resumed = False
        time.sleep(_FIRST_SAMPLE_SECONDS)
        _last, now = now, _sample()
        if now is None:
            return
    wall = now[0] - _last[0]
    if wall > 0:
        others = max(0.0, (now[1] - _last[1]) - (now[2] - _last[2])) / wall
        waited = (now[3] - _last[3]) / wall
        _active = decide(_active, _num_threads, available_cores(), others, waited, resumed)
    _last = now


def _refresh(wait: bool = True, resumed: bool = False) -> None:
    """Look at the machine if adapting, then give BLAS and Numba the threads in use."""
    global _next_check, _controller
    if _adaptive and wait:
        _look(resumed)
    _next_check = time.monotonic() + CHECK_SECONDS if _adaptive else float("inf")
    if _controller is None:
        import threadpoolctl

        _controller = threadpoolctl.ThreadpoolController()
        _blas_libs[:] = [lib for lib in _controller.lib_controllers if lib.user_api == "blas"]
    _set_blas(_active, force=True)
    if "numba" in sys.modules:
        set_numba_threads(_active)


# --- small GEMMs on one BLAS thread ------------------------------------------------------

# A GEMM (or a pass of GEMMs) below this many multiply-adds runs on one BLAS thread.
# OpenBLAS's workers spin for a while after each multithreaded call; a small GEMM gains
# next to nothing from them, and then they hold the other core while foldconv's pool
# runs the next layer. LeNet-5's step (batch 128, two threads on an idle 2-core machine)
# took 12.2-12.7 ms with its Linear layers' GEMMs (0.1-6 M multiply-adds) on two BLAS
# threads and 9.0-10.4 ms on one (BENCHMARKS.md, "LeNet-5 at PyTorch's pace"). 16 M is
# ~0.3 ms at one core's sgemm rate; AlexNet's smallest GEMM (fc8, 65 M) stays threaded.
SMALL_GEMM_MACS = 16 * 2**20
_blas_libs: list[Any] = []  # threadpoolctl's controllers of the loaded BLAS libraries
_blas_threads = 0  # the thread count BLAS was last given (0: not yet)


def _set_blas(n: int, force: bool = False) -> None:
    global _blas_threads
    if n != _blas_threads or force:
        for lib in _blas_libs:
            lib.set_num_threads(n)
        _blas_threads = n


def gemm_ready(macs: int) -> None:
    """Called before a GEMM, or a pass of GEMMs, of ``macs`` multiply-adds: :func:`ready`,
    then BLAS gets one thread for a small product (below ``SMALL_GEMM_MACS``) and the
    threads in use otherwise. The choice depends on the size only, never on the load."""
    ready()
    threads = 1 if macs < SMALL_GEMM_MACS else _active
    if threads > 1 and _pool is not None:
        worker_pool.hush()  # the pool's idle workers leave the cores to OpenBLAS
    _set_blas(threads)


def set_numba_threads(n: int) -> None:
    """Numba's parallel regions get at most ``n`` threads (capped at the pool Numba
    started with, NUMBA_NUM_THREADS). numba.set_num_threads is per calling thread: this
    sets it for the caller, normally the main thread, which is where foldconv runs.

    Setting it starts Numba's threading layer. Unless NUMBA_THREADING_LAYER chose one,
    foldconv starts 'workqueue' (Numba's own pool, whose idle workers wait on a
    condition) rather than Numba's first choice here, 'omp': a 1M-element ``prange``
    loop at two threads took 0.6 ms on workqueue and 8-12 ms on GNU OpenMP with its
    default wait policy (BENCHMARKS.md, "Under load"). foldconv's own compiled kernels
    are serial, so this matters only to the user's parallel Numba code in the process;
    workqueue does not allow parallel regions from several threads at once, and a user
    who needs that sets NUMBA_THREADING_LAYER."""
    global _numba_applied
    import numba
    from numba.np.ufunc import parallel

    launched = getattr(parallel, "_is_initialized", True)
    if not launched and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    _numba_applied = n


def ready() -> None:
    """Called before foldconv's GEMMs: the first call gives BLAS and Numba their threads,
    later ones look at the machine every CHECK_SECONDS (a clock read otherwise)."""
    global _last_ready
    now = time.monotonic()
    if now >= _next_check:
        _refresh(resumed=now - _last_ready > IDLE_SECONDS)
    elif _numba_applied != _active and "numba" in sys.modules:
        set_numba_threads(_active)  # Numba imported since, by foldconv or the user
    _last_ready = now


def _get_pool() -> Any:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = worker_pool.Pool(_num_threads - 1)
            pool = _pool
    return pool


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """[fn(item) for item in items], spread over at most :func:`active_threads` threads
    (the caller's included); results in input order."""
    items = list(items)
    threads = min(_active, len(items))
    if threads <= 1:
        return [fn(item) for item in items]
    results: list[Any] = [None] * len(items)
    # Each thread takes the next item until none is left; next() on a count is atomic.
    counter = itertools.count()

    def drain() -> None:
        while (i := next(counter)) < len(items):
            results[i] = fn(items[i])

    # The workers poll for a while before they sleep, and so does this thread while it
    # waits for them (functional/pool.py): a hand-over to a sleeping thread cost ~50 us.
    # A region inside another (nested, or from another thread) runs on its caller alone.
    # The workers poll only while BLAS runs on one thread: beside OpenBLAS's threads a
    # polling worker takes a core a GEMM needs.
    if not _get_pool().run(drain, threads - 1, poll=_blas_threads <= 1):
        drain()
    return results
