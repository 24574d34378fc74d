"""The thread budget: one number that caps BLAS, Numba and foldconv's own pool."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

import foldconv
from foldconv.functional import conv, conv_backward, threads
from foldconv.functional.threads import parallel_map

threadpoolctl = pytest.importorskip("threadpoolctl")

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def _default_budget():
    # Counts are checked against the budget itself: no adapting to the other processes
    # that share this machine while the tests run.
    previous = threads.set_adaptive(False)
    yield
    foldconv.set_num_threads(None)
    threads.set_adaptive(previous)


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def _run(code: str, env: dict | None = None, affinity: set[int] | None = None):
    full_env = dict(os.environ, PYTHONPATH=SRC)
    full_env.pop(threads.ENV_VAR, None)
    full_env.update(env or {})

    def pin() -> None:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)

    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        preexec_fn=pin if affinity is not None else None,
    )


def _threads_running(fn_items: int, barrier_parties: int) -> tuple[set[int], int]:
    """Run parallel_map over ``fn_items`` items; return the ids of the threads that ran
    them and the most foldconv pool threads alive at any moment during the map."""
    seen: set[int] = set()
    most = 0
    lock = threading.Lock()
    barrier = threading.Barrier(barrier_parties, timeout=30) if barrier_parties > 1 else None

    def fn(i: int) -> int:
        nonlocal most
        if barrier is not None and i < barrier_parties:
            barrier.wait()  # the first items meet: proves they ran at the same time
        with lock:
            seen.add(threading.get_ident())
            alive = sum(t.name.startswith("foldconv") for t in threading.enumerate())
            most = max(most, alive)
        return i * i

    assert parallel_map(fn, range(fn_items)) == [i * i for i in range(fn_items)]
    return seen, most


def test_default_budget_is_the_affinity_set():
    foldconv.set_num_threads(None)
    assert foldconv.get_num_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_setting_reaches_blas_numba_and_the_pool(n):
    previous = foldconv.set_num_threads(n)
    assert isinstance(previous, int)
    assert foldconv.get_num_threads() == n
    blas = _blas_threads()
    assert blas and all(t == n for t in blas), threadpoolctl.threadpool_info()
    numba = pytest.importorskip("numba")
    threads.ready()
    assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
    # The caller takes a share: n threads run the items, n - 1 of them the pool's.
    seen, most = _threads_running(50, barrier_parties=n)
    assert len(seen) <= n
    assert most <= n - 1
    if n > 1:
        assert len(seen) >= n  # the barrier made n of them run at once


def test_budget_of_one_runs_on_the_caller_only():
    foldconv.set_num_threads(1)
    seen, most = _threads_running(20, barrier_parties=1)
    assert seen == {threading.get_ident()}
    assert most == 0


def test_parallel_map_passes_on_errors_and_nests():
    foldconv.set_num_threads(2)

    def boom(i: int) -> int:
        if i == 7:
            raise ZeroDivisionError("item 7")
        return i

    with pytest.raises(ZeroDivisionError, match="item 7"):
        parallel_map(boom, range(20))
    # A parallel_map inside a worker must not wait for workers that are all busy.
    out = parallel_map(lambda i: sum(parallel_map(lambda j: i * j, range(5))), range(6))
    assert out == [10 * i for i in range(6)]


def test_pool_workers_block_when_idle():
    # Idle workers wait in the kernel: their CPU time stops growing once the work is done.
    foldconv.set_num_threads(2)
    parallel_map(lambda i: sum(range(20000)), range(8))
    before = _process_cpu_seconds_of_pool()
    threading.Event().wait(0.3)
    after = _process_cpu_seconds_of_pool()
    assert after - before < 0.05


def _process_cpu_seconds_of_pool() -> float:
    # Sum of utime + stime (clock ticks) over this process's threads named foldconv*.
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().startswith("foldconv"):
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", True, None.__class__])
def test_bad_counts_are_refused(bad):
    with pytest.raises((TypeError, ValueError), match="n: expected a positive int"):
        foldconv.set_num_threads(bad)


CHECK = (
    "import foldconv, numpy as np, threadpoolctl\n"
    "from foldconv.functional import linear\n"
    "linear(np.ones((4, 3), np.float32), np.ones((2, 3), np.float32))\n"
    "print(foldconv.get_num_threads())\n"
    "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()"
    " if i['user_api'] == 'blas'}))\n"
)


def test_environment_variable_sets_the_budget():
    done = _run(CHECK, env={"FOLDCONV_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["1", "[1]"]


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_environment_variable_is_named(value):
    done = _run("import foldconv", env={"FOLDCONV_NUM_THREADS": value})
    assert done.returncode != 0
    assert "FOLDCONV_NUM_THREADS: expected a positive integer" in done.stderr
    assert repr(value) in done.stderr or value in done.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_affinity_of_one_core_gives_a_budget_of_one():
    core = min(os.sched_getaffinity(0))
    done = _run(CHECK, affinity={core})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["1", "[1]"]


def test_import_foldconv_leaves_blas_and_numba_alone():
    # The limits are applied at the first GEMM, not at import: import stays fast and a
    # process that never computes keeps its libraries as they were.
    done = _run(
        "import sys, foldconv\n"
        "print('threadpoolctl' in sys.modules, 'numba' in sys.modules)\n"
        "import numpy as np\n"
        "foldconv.functional.linear(np.ones((2, 2)), np.ones((2, 2)))\n"
        "print('threadpoolctl' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


def _conv_results(x, w, dy, **kw):
    return [conv(x, w, **kw), *conv_backward(dy, x, w, **kw)]


def _conv_case(c, o, groups, kernel, padding, stride):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, c, 64, 64)).astype(np.float32)
    w = rng.standard_normal((o, c // groups, kernel, kernel)).astype(np.float32)
    out_size = (64 + 2 * padding - kernel) // stride + 1
    dy = rng.standard_normal((8, o, out_size, out_size)).astype(np.float32)
    return x, w, dy


# OpenBLAS's sgemm does not promise the same sums for another thread count: measured with
# 0.3.31, (32 x 21110) @ (21110 x 144) differs in the last bits between 1 and 2 threads
# (the weight gradient of the first case below). So paths that run GEMMs are compared with
# BLAS held at one thread while foldconv's own pool changes; the paths without GEMMs are
# compared with the whole budget changing.
@pytest.mark.parametrize(
    "c,o,groups,kernel,padding,stride,algorithm,blas_free",
    [
        (16, 32, 1, 3, 1, 1, "im2col", False),  # pool-threaded im2col / col2im + GEMMs
        (16, 32, 1, 5, 2, 2, "im2col", False),
        (16, 32, 1, 3, 1, 1, "winograd", False),
        (32, 32, 32, 3, 1, 1, "auto", True),  # depthwise: pool-threaded taps, no GEMM
        (32, 64, 32, 5, 2, 1, "auto", True),
    ],
)
def test_results_are_identical_for_any_thread_count(
    c, o, groups, kernel, padding, stride, algorithm, blas_free
):
    x, w, dy = _conv_case(c, o, groups, kernel, padding, stride)
    kw = dict(padding=padding, stride=stride, groups=groups, algorithm=algorithm)
    results = []
    for n in (1, 2, 3):
        foldconv.set_num_threads(n)
        if blas_free:
            results.append(_conv_results(x, w, dy, **kw))
        else:
            with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
                results.append(_conv_results(x, w, dy, **kw))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_results_are_repeatable_at_one_thread_count():
    # With BLAS threaded too, the same budget gives the same bits run after run.
    x, w, dy = _conv_case(16, 32, 1, 3, 1, 1)
    foldconv.set_num_threads(2)
    first = _conv_results(x, w, dy, padding=1, algorithm="im2col")
    again = _conv_results(x, w, dy, padding=1, algorithm="im2col")
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "active,budget,cores,others,waited,expected",
    [
        (2, 2, 2, 0.0, 0.0, 2),  # an idle machine: the whole budget
        (2, 2, 2, 0.05, 0.1, 2),  # background noise is not a busy core
        (2, 2, 2, 0.66, 0.7, 1),  # a busy loop sharing our two cores with two threads
        (1, 2, 2, 1.0, 0.0, 1),  # ... and with one thread: it keeps its own core
        (1, 2, 2, 1.33, 0.3, 1),  # two busy loops: never below one thread
        (1, 2, 2, 0.1, 0.0, 2),  # the busy process is gone: back to the budget
        (4, 4, 8, 0.0, 0.0, 4),  # the budget caps
        (4, 4, 4, 0.0, 1.2, 3),  # waiting for cores (another process's burst): one fewer
        (3, 8, 8, 2.7, 0.0, 5),
    ],
)
def test_decide(active, budget, cores, others, waited, expected):
    assert threads.decide(active, budget, cores, others, waited) == expected


@pytest.mark.parametrize(
    "active,others,waited,expected",
    [
        (2, 1.2, 0.0, 2),  # another process ran while we paused (its turn): keep both
        (2, 1.9, 0.05, 2),  # ... a hint of waiting is not yet evidence
        (2, 1.0, 0.5, 1),  # our threads waited for a core too: a load that stays
        (1, 0.1, 0.0, 2),  # growing back needs no evidence
    ],
)
def test_decide_after_a_pause(active, others, waited, expected):
    assert threads.decide(active, 2, 2, others, waited, resumed=True) == expected


@pytest.mark.parametrize("paused,expected", [(True, 2), (False, 1)])
def test_another_process_running_while_we_pause_leaves_our_threads(monkeypatch, paused, expected):
    # Two processes taking turns (a benchmark's epochs in turn, a pipeline): what the
    # other ran during our pause is its turn, not a load on our cores. Before this was
    # told apart, the next look halved our threads for half a second after each pause.
    # The machine is simulated (threads._sample), so that the test does not depend on
    # what else runs here: an interval of 1 s in which other processes used both cores
    # and our threads never waited for one.
    clock = [1000.0]
    samples = iter(
        [
            (1000.0, 0.0, 0.0, 0.0),  # the first look: a quiet interval
            (1000.05, 0.0, 0.0, 0.0),
            (1001.05, 2.0, 0.0, 0.0),  # one second later: 2 cores' worth of others
        ]
    )
    monkeypatch.setattr(threads, "_sample", lambda: next(samples))
    # threads' own clock only (the time module itself stays as it is for everyone else)
    fake_time = types.SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda s: None, process_time=time.process_time
    )
    monkeypatch.setattr(threads, "time", fake_time)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "_last", None)
    monkeypatch.setattr(threads, "_num_threads", 2)
    monkeypatch.setattr(threads, "_active", 2)
    monkeypatch.setattr(threads, "_adaptive", True)
    monkeypatch.setattr(threads, "_next_check", 0.0)
    monkeypatch.setattr(threads, "_last_ready", 0.0)
    threads.ready()  # the first look
    assert threads.active_threads() == 2
    # Computing until the next look (paused=False: calls 0.15 s apart), or not since the
    # first look (paused=True); then the next look, half a second after the first.
    if not paused:
        for t in (1000.15, 1000.3, 1000.45):
            clock[0] = t
            threads.ready()
            assert threads.active_threads() == 2  # no look yet
    clock[0] = 1000.55
    threads.ready()
    assert threads.active_threads() == expected


def test_adaptive_switch_is_checked():
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        threads.set_adaptive(1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_busy_process_on_our_cores_takes_threads_away():
    cores = sorted(os.sched_getaffinity(0))[:2]
    code = (
        "import os, foldconv\n"
        "from foldconv.functional import threads\n"
        f"os.sched_setaffinity(0, {set(cores)!r})\n"
        "threads.set_num_threads(2)\n"
        "threads.set_adaptive(True)\n"  # the first look: samples the machine
        "print(threads.get_num_threads(), threads.active_threads())\n"
        "import threadpoolctl\n"
        "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()"
        " if i['user_api'] == 'blas'}))\n"
    )
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os; os.sched_setaffinity(0, {{{cores[1]}}})\nwhile True: pass",
        ]
    )
    try:
        threading.Event().wait(0.3)  # the busy loop is running
        done = _run(code)
    finally:
        busy.kill()
        busy.wait()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2 1", "[1]"]


def test_small_gemms_run_on_one_blas_thread():
    # The size alone decides: a Linear layer or convolution pass below SMALL_GEMM_MACS
    # gets one BLAS thread, a larger one the threads in use.
    from foldconv.functional import conv, linear

    foldconv.set_num_threads(3)
    x = np.ones((4, 8), dtype=np.float32)
    linear(x, np.ones((5, 8), dtype=np.float32))
    assert all(t == 1 for t in _blas_threads())
    n = 1024  # 1024 x 1024 x 1024 > SMALL_GEMM_MACS
    assert n**3 >= threads.SMALL_GEMM_MACS
    linear(np.ones((n, n), dtype=np.float32), np.ones((n, n), dtype=np.float32))
    assert all(t == 3 for t in _blas_threads())
    conv(np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3)), algorithm="im2col")
    assert all(t == 1 for t in _blas_threads())
    # A budget set afterwards reaches BLAS at once, whatever the last GEMM was.
    foldconv.set_num_threads(2)
    assert all(t == 2 for t in _blas_threads())


def test_workers_do_not_keep_a_finished_region_alive():
    # A worker that kept its last task would keep the task's arrays (a padded input,
    # say) alive until the next region.
    import gc
    import weakref

    foldconv.set_num_threads(2)

    class Big:
        pass

    big = Big()
    ref = weakref.ref(big)
    parallel_map(lambda i, big=big: i, range(8))
    del big
    gc.collect()
    assert ref() is None


def test_workers_poll_only_briefly_and_not_beside_multithreaded_blas():
    # After a region, idle workers poll for at most ~1 ms, then block: no CPU after that.
    foldconv.set_num_threads(2)
    from foldconv.functional import pool

    parallel_map(lambda i: i, range(4))
    threading.Event().wait(0.05)
    before = time.process_time()
    threading.Event().wait(0.3)
    assert time.process_time() - before < 0.02
    pool.hush()  # what a multithreaded GEMM does first
    assert pool._hushed[0] == 1
    parallel_map(lambda i: i, range(4))  # a region on one-thread BLAS clears it
    assert pool._hushed[0] == (0 if threads._blas_threads <= 1 else 1)


@pytest.mark.parametrize("value", ["abc", "-5", "nan"])
def test_a_bad_spin_setting_is_a_clear_error(value):
    code = "from foldconv.functional import pool"
    env = dict(os.environ, FOLDCONV_POOL_SPIN_US=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "ValueError: FOLDCONV_POOL_SPIN_US: expected microseconds" in out.stderr


def test_threads_starting_regions_together_start_one_pool():
    # Found in a fresh-user trial: _get_pool had no lock, and threads arriving together
    # each built a pool (three 'foldconv_0' threads), leaving the extra ones behind.
    code = """
import threading
import foldconv
from foldconv.functional.threads import parallel_map
foldconv.set_num_threads(2)
barrier = threading.Barrier(8)
def go():
    barrier.wait()
    parallel_map(lambda i: i, range(4))
ts = [threading.Thread(target=go) for _ in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("foldconv")))
"""
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "['foldconv_0']"
