"""Data-parallel training steps over MPI: images/s for 1 and 2 processes, the time spent in
the gradient allreduce, and the loopback bandwidth it runs at.

    python bench/distributed.py [--steps 5] [--models lenet5,alexnet_paper] [--json]

For each model and each process count (``mpiexec -n 1`` and ``-n 2``, one BLAS thread a
process: ``OPENBLAS_NUM_THREADS=1`` and ``foldconv.set_num_threads(1)``), every process
runs the distributed trainer's step on random data at batch 16 per process: forward,
cross-entropy, backward scaled by the process's share, the bucketed allreduce of the
gradients (:class:`foldconv.trainer.distributed.GradientBuckets`), and SGD with momentum.
It reports the median step time, the global images/s, the median allreduce time per step
and its bytes. A third job measures the loopback bandwidth between 2 processes: a ping-pong
of 64 MiB and an allreduce of AlexNet's gradient size (float32, 60,965,224 values); a
fourth whether that allreduce can hide behind computation (Iallreduce during GEMMs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16  # per process
SIZES = {"lenet5": (1, 28, 10), "alexnet_paper": (3, 227, 1000)}


def worker_step(model_name: str, steps: int) -> dict | None:
    import foldconv
    from foldconv import nn, optim
    from foldconv.models import get_model
    from foldconv.trainer.distributed import GradientBuckets, init_distributed

    foldconv.set_num_threads(1)
    comm = init_distributed()
    c, side, classes = SIZES[model_name]
    model = get_model(model_name, classes, rng=np.random.default_rng(0), in_channels=c)
    params = list(model.parameters())
    comm.bcast_arrays([p.data for p in params])
    buckets = GradientBuckets(params, comm)
    opt = optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    rng = np.random.default_rng(1 + comm.rank)
    x = rng.standard_normal((BATCH, c, side, side)).astype(np.float32)
    y = rng.integers(0, classes, size=BATCH)
    step_s, reduce_s = [], []
    for i in range(steps + 1):  # the first step warms up (allocations, caches)
        comm.comm.Barrier()
        t = time.perf_counter()
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward(1.0 / comm.size))
        r0 = comm.allreduce_seconds
        buckets.allreduce()
        opt.step()
        comm.comm.Barrier()
        if i:
            step_s.append(time.perf_counter() - t)
            reduce_s.append(comm.allreduce_seconds - r0)
    if comm.rank:
        return None
    med = statistics.median(step_s)
    return {
        "model": model_name,
        "processes": comm.size,
        "step_s": med,
        "step_min_s": min(step_s),
        "images_per_s": comm.size * BATCH / med,
        "allreduce_s": statistics.median(reduce_s),
        "allreduce_bytes": buckets.nbytes,
        "buckets": len(buckets.buckets),
    }


def worker_bandwidth() -> dict | None:
    from foldconv.trainer.distributed import init_distributed

    comm = init_distributed()
    c, mpi = comm.comm, comm.MPI
    ping = np.zeros(64 * 2**20 // 4, dtype=np.float32)
    times = []
    for _ in range(6):
        c.Barrier()
        t = time.perf_counter()
        if comm.rank == 0:
            c.Send(ping, dest=1)
            c.Recv(ping, source=1)
        elif comm.rank == 1:
            c.Recv(ping, source=0)
            c.Send(ping, dest=0)
        times.append((time.perf_counter() - t) / 2)
    one_way = statistics.median(times[1:])
    grads = np.ones(60_965_224, dtype=np.float32)
    ar = []
    for _ in range(4):
        c.Barrier()
        t = time.perf_counter()
        c.Allreduce(mpi.IN_PLACE, grads, op=mpi.SUM)
        ar.append(time.perf_counter() - t)
    ar_s = statistics.median(ar[1:])
    if comm.rank:
        return None
    n = comm.size
    return {
        "pingpong_bytes": ping.nbytes,
        "pingpong_GBps": ping.nbytes / one_way / 1e9,
        "allreduce_bytes": grads.nbytes,
        "allreduce_s": ar_s,
        # The bandwidth a ring allreduce of this time implies: 2(N-1)/N bytes per link.
        "allreduce_bus_GBps": 2 * (n - 1) / n * grads.nbytes / ar_s / 1e9,
    }


def worker_overlap() -> dict | None:
    """Can an allreduce hide behind computation here? The gradient of AlexNet (244 MB)
    reduced after a stretch of work (GEMMs, the backward's kind) against the same
    allreduce started before the work (Iallreduce) and waited for after it."""
    import foldconv
    from foldconv.trainer.distributed import init_distributed

    foldconv.set_num_threads(1)
    comm = init_distributed()
    c, mpi = comm.comm, comm.MPI
    grads = np.ones(60_965_224, dtype=np.float32)
    a = np.random.default_rng(0).standard_normal((600, 600)).astype(np.float32)

    def work() -> None:
        for _ in range(150):
            a @ a

    def timed(f) -> float:
        c.Barrier()
        t = time.perf_counter()
        f()
        c.Barrier()
        return time.perf_counter() - t

    def serial() -> None:
        work()
        c.Allreduce(mpi.IN_PLACE, grads, op=mpi.SUM)

    def overlapped() -> None:
        req = c.Iallreduce(mpi.IN_PLACE, grads, op=mpi.SUM)
        work()
        req.Wait()

    rows = {"work": [], "allreduce": [], "serial": [], "overlapped": []}
    for _ in range(4):
        rows["work"].append(timed(work))
        rows["allreduce"].append(timed(lambda: c.Allreduce(mpi.IN_PLACE, grads, op=mpi.SUM)))
        rows["serial"].append(timed(serial))
        rows["overlapped"].append(timed(overlapped))
    if comm.rank:
        return None
    return {k: statistics.median(v[1:]) for k, v in rows.items()}


def launch(n: int, args: list[str]) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        ["mpiexec", "-n", str(n), sys.executable, __file__, "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", default="lenet5,alexnet_paper")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker is not None:
        what = a.worker[0]
        if what == "bandwidth":
            r = worker_bandwidth()
        elif what == "overlap":
            r = worker_overlap()
        else:
            r = worker_step(what, a.steps)
        if r is not None:
            print(json.dumps(r), flush=True)
        return
    rows = []
    for model in a.models.split(","):
        for n in (1, 2):
            rows.append(launch(n, [model, "--steps", str(a.steps)]))
    bw = launch(2, ["bandwidth"])
    ov = launch(2, ["overlap"])
    if a.json:
        print(json.dumps({"steps": rows, "bandwidth": bw, "overlap": ov}, indent=2))
        return
    print("| model | processes | s/step (median) | min | images/s | allreduce s/step | MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = {}
    for r in rows:
        base.setdefault(r["model"], r["images_per_s"])
        print(
            f"| {r['model']} | {r['processes']} | {r['step_s']:.3f} | {r['step_min_s']:.3f} | "
            f"{r['images_per_s']:.1f} ({r['images_per_s'] / base[r['model']]:.2f}x) | "
            f"{r['allreduce_s']:.3f} | {r['allreduce_bytes'] / 1e6:.1f} |"
        )
    print(
        f"\nloopback, 2 processes: ping-pong {bw['pingpong_bytes'] / 2**20:.0f} MiB at "
        f"{bw['pingpong_GBps']:.2f} GB/s one way; allreduce of {bw['allreduce_bytes'] / 1e6:.0f}"
        f" MB in {bw['allreduce_s']:.3f} s ({bw['allreduce_bus_GBps']:.2f} GB/s bus bandwidth)"
    )
    print(
        f"overlap, 2 processes: work {ov['work']:.3f} s, allreduce {ov['allreduce']:.3f} s, "
        f"one after the other {ov['serial']:.3f} s, Iallreduce during the work "
        f"{ov['overlapped']:.3f} s"
    )


if __name__ == "__main__":
    main()
