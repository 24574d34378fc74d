"""Training steps on a busy machine: foldconv vs PyTorch, alone and beside busy processes.

Two networks: LeNet-5 (batch 128, 1x28x28) and the 2012 paper AlexNet (batch 16,
3x227x227), one training step = forward, cross-entropy, backward and an SGD update with
momentum 0.9, float32, CPU. For each load (0, 1 and 2 busy-looping Python processes that
this script starts and kills; not pinned unless ``--pin``, where busy process i is pinned
to core i of this process's affinity set) and each round, foldconv and PyTorch each run a
fresh process, in alternating order, that builds the network, takes warm-up steps and
then times ``--steps`` steps (or as many as fit in ``--limit`` seconds: a framework that
collapses shows how few it finished). The table gives, per network, load and framework,
the median and 90th percentile of the step times pooled over the rounds, the range of the
per-round medians, and the ratios: ours / ours with no load, and ours / PyTorch under the
same load.

    python bench/under_load.py [--rounds 3] [--loads 0 1 2] [--nets lenet alexnet]
        [--pin] [--env KEY=VALUE ...]

``--who ours_full`` adds foldconv computing the first layer's input gradient too (what
its step did before the trainer's ``skip_input_grad``; PyTorch never computes it: the
images do not require grad).

``--env`` sets variables for foldconv's processes only (e.g. ``FOLDCONV_NUM_THREADS=1``),
to compare settings. PyTorch runs with ``torch.set_num_threads`` of the number of cores
this process may use, its default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np

STEPS = {"lenet": 30, "alexnet": 5}
WARMUP = {"lenet": 3, "alexnet": 1}
BATCH = {"lenet": 128, "alexnet": 16}


def _data(net: str):
    rng = np.random.default_rng(0)
    if net == "lenet":
        x = rng.standard_normal((BATCH[net], 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, size=BATCH[net])
    else:
        x = rng.standard_normal((BATCH[net], 3, 227, 227)).astype(np.float32)
        y = rng.integers(0, 1000, size=BATCH[net])
    return x, y


def _timed(step, net: str, steps: int, limit: float) -> list[float]:
    for _ in range(WARMUP[net]):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < steps and time.perf_counter() - start < limit:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def worker_ours(net: str, steps: int, limit: float, full: bool = False) -> dict:
    import contextlib

    import foldconv
    from foldconv import nn, optim
    from foldconv.allocator import keep_freed_memory_from_env
    from foldconv.models import alexnet_paper, lenet5
    from foldconv.trainer.loop import skip_input_grad

    keep_freed_memory_from_env()  # as the trainer does (FOLDCONV_KEEP_FREED_MEMORY=0: off)

    model = lenet5(10, rng=0) if net == "lenet" else alexnet_paper(1000, rng=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x, y = _data(net)

    def step() -> None:
        crit(model(x), y)
        opt.zero_grad()
        # As the trainer does: no gradient for the images (PyTorch computes none either).
        with contextlib.nullcontext() if full else skip_input_grad(model):
            model.backward(crit.backward())
        opt.step()

    times = _timed(step, net, steps, limit)
    return {"times": times, "threads": foldconv.get_num_threads()}


def worker_torch(net: str, steps: int, limit: float) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if net == "lenet":
        model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )
    else:
        from alexnet_step import torch_alexnet_paper  # bench/ is this script's path

        model = torch_alexnet_paper(nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x, y = (torch.from_numpy(a) for a in _data(net))

    def step() -> None:
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = _timed(step, net, steps, limit)
    return {"times": times, "threads": torch.get_num_threads()}


LAYER_CODE = """
import json, os, sys, time
import numpy as np
what = sys.argv[1]
if what == "gemm":
    # A LeNet-sized GEMM (its second convolution's weight gradient) and an AlexNet-sized
    # one, each timed call by call, with BLAS at two threads.
    import threadpoolctl
    threadpoolctl.threadpool_limits(int(os.environ.get("GEMM_THREADS", "2")), "blas")
    rng = np.random.default_rng(0)
    out = {}
    from concurrent.futures import ThreadPoolExecutor
    helper = ThreadPoolExecutor(1)
    for m, k, n, reps in ((16, 12800, 150, 300), (384, 3456, 2704, 20)):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
            x = np.tanh(a[:, :1000])  # a non-BLAS pass between GEMMs, as in a network
        out[f"{m}x{k}x{n}"] = ts
        # The GEMM and then a non-BLAS pass on two threads, timed together: what a
        # network does when foldconv's pool runs the pass (a fold, pooling, LRN).
        c = rng.standard_normal((2, 1 << 21)).astype(np.float32)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            half = helper.submit(np.tanh, c[0])
            np.tanh(c[1])
            half.result()
            ts.append(time.perf_counter() - t0)
        out[f"{m}x{k}x{n} + 2-thread pass"] = ts
else:
    import numba
    from numba import njit, prange
    @njit(parallel=True)
    def scale(x, y):
        for i in prange(x.shape[0]):
            y[i] = np.sqrt(x[i]) * 2.0
    x = np.random.default_rng(0).random((1 << 20,))
    y = np.empty_like(x)
    numba.set_num_threads(2)
    scale(x, y)
    ts = []
    for _ in range(300):
        t0 = time.perf_counter(); scale(x, y); ts.append(time.perf_counter() - t0)
        np.tanh(x[:100000])
    out = {"prange 1M": ts, "layer": numba.threading_layer()}
print(json.dumps(out))
"""


def layers(args: argparse.Namespace) -> None:
    """OpenBLAS's thread timeout and Numba's threading layers, alone and beside busy
    processes: per-call times of GEMMs and of a parallel Numba loop at two threads."""
    variants = [
        ("gemm", {}),
        ("gemm", {"GEMM_THREADS": "1"}),
        ("gemm", {"OPENBLAS_THREAD_TIMEOUT": "4"}),
        ("gemm", {"OPENBLAS_THREAD_TIMEOUT": "30"}),
        ("numba", {"NUMBA_THREADING_LAYER": "workqueue"}),
        ("numba", {"NUMBA_THREADING_LAYER": "omp"}),
        ("numba", {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "passive"}),
        ("numba", {"NUMBA_THREADING_LAYER": "tbb"}),
    ]
    print("| busy | variant | case | median ms | p90 ms |")
    print("| --- | --- | --- | --- | --- |")
    for load in args.loads:
        busy = _busy(load, args.pin)
        try:
            for _ in range(args.rounds):
                for what, extra in variants:
                    # OpenBLAS's own default unless the variant sets it (foldconv, imported
                    # by this script, sets OPENBLAS_THREAD_TIMEOUT for the processes it starts).
                    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
                    env.update(extra)
                    proc = subprocess.run(
                        [sys.executable, "-c", LAYER_CODE, what],
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    label = " ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
                    if proc.returncode != 0:
                        why = proc.stderr.strip().splitlines()[-1]
                        print(f"| {load} | {label} | failed: {why} | | |")
                        continue
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    for case, ts in res.items():
                        if case == "layer":
                            continue
                        print(
                            f"| {load} | {label} ({res.get('layer', 'openblas')}) | {case} | "
                            f"{1e3 * statistics.median(ts):.2f} | {1e3 * _p90(ts):.2f} |",
                            flush=True,
                        )
        finally:
            for b in busy:
                b.kill()
                b.wait()


def _busy(n: int, pin: bool) -> list[subprocess.Popen]:
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(n):
        code = "while True: pass"
        if pin:
            code = f"import os; os.sched_setaffinity(0, {{{cores[i % len(cores)]}}})\n" + code
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    time.sleep(0.5)  # let them start and take their cores
    return procs


def _run(who: str, net: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if who.startswith("ours"):
        env.update(kv.split("=", 1) for kv in args.env)
    cmd = [sys.executable, __file__, "--worker", who, "--nets", net]
    cmd += ["--steps", str(args.steps or STEPS[net]), "--limit", str(args.limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{who} {net} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _p90(xs: list[float]) -> float:
    return float(np.percentile(xs, 90)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nets", nargs="+", choices=["lenet", "alexnet"], default=["lenet", "alexnet"])
    p.add_argument(
        "--who", nargs="+", choices=["ours", "ours_full", "torch"], default=["ours", "torch"]
    )
    p.add_argument("--pin", action="store_true", help="pin busy process i to core i")
    p.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for foldconv's processes")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 30 / 5)")
    p.add_argument("--limit", type=float, default=60.0, help="seconds of timed steps at most")
    p.add_argument("--json", help="write the raw step times here")
    p.add_argument(
        "--layers",
        action="store_true",
        help="time OpenBLAS's thread timeout and Numba's threading layers instead",
    )
    p.add_argument("--worker", choices=["ours", "ours_full", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layers:
        layers(args)
        return 0
    if args.worker:
        net = args.nets[0]
        steps = args.steps or STEPS[net]
        if args.worker == "torch":
            res = worker_torch(net, steps, args.limit)
        else:
            res = worker_ours(net, steps, args.limit, full=args.worker == "ours_full")
        print(json.dumps(res))
        return 0

    # times[(net, load, who)] = one list of step times per round
    times: dict[tuple[str, int, str], list[list[float]]] = {}
    threads: dict[str, int] = {}
    for load in args.loads:
        busy = _busy(load, args.pin)
        try:
            for r in range(args.rounds):
                order = args.who if r % 2 == 0 else args.who[::-1]
                for net in args.nets:
                    for who in order:
                        res = _run(who, net, args)
                        times.setdefault((net, load, who), []).append(res["times"])
                        threads[who] = res["threads"]
                        print(
                            f"# load {load} round {r} {net} {who}: "
                            f"median {1e3 * statistics.median(res['times']):.1f} ms "
                            f"over {len(res['times'])} steps",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for b in busy:
                b.kill()
                b.wait()

    print(
        f"Training steps under load: {os.cpu_count()} CPUs, affinity "
        f"{len(os.sched_getaffinity(0))}; busy processes {'pinned' if args.pin else 'not pinned'}; "
        f"{args.rounds} rounds; threads: {threads}; foldconv env: {' '.join(args.env) or '-'}"
    )
    print(
        "| net | busy | who | median ms | p90 ms | round medians ms | steps "
        "| / own idle | ours / PyTorch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for net in args.nets:
        for load in args.loads:
            for who in args.who:
                rounds = times.get((net, load, who), [])
                pooled = [t for r in rounds for t in r]
                if not pooled:
                    continue
                med = statistics.median(pooled)
                per_round = [statistics.median(r) for r in rounds if r]
                idle = times.get((net, args.loads[0], who))
                vs_idle = med / statistics.median([t for r in idle for t in r]) if idle else None
                other = times.get((net, load, "torch"))
                vs_torch = (
                    med / statistics.median([t for r in other for t in r])
                    if who.startswith("ours") and other
                    else None
                )
                print(
                    f"| {net} | {load} | {who} | {1e3 * med:.1f} | {1e3 * _p90(pooled):.1f} | "
                    f"{1e3 * min(per_round):.0f}-{1e3 * max(per_round):.0f} | {len(pooled)} | "
                    f"{'' if vs_idle is None else f'{vs_idle:.2f}'} | "
                    f"{'' if vs_torch is None else f'{vs_torch:.2f}'} |"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({" ".join(map(str, k)): v for k, v in times.items()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
