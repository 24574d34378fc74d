"""Max pooling at one thread: foldconv's compiled kernels, its NumPy path, and PyTorch.

LeNet-5's pools (batch 128) and the paper AlexNet's (batch 16), float32, forward as in
training (values and winning taps; PyTorch: ``max_pool2d`` on a tensor that requires
grad) and backward. Each (implementation, shape) runs in a fresh process, the
implementations interleaved, for ``--rounds`` rounds; each process reports the median of
``--reps`` calls in CPU time (``time.process_time``: on a shared machine, time spent
waiting for a core does not count), and the table gives the median over rounds.

    PYTHONPATH=src python bench/max_pool_bench.py [--rounds 5] [--reps 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    "lenet pool1": ((128, 6, 28, 28), 2, 2),
    "lenet pool2": ((128, 16, 10, 10), 2, 2),
    "alexnet pool1": ((16, 96, 55, 55), 3, 2),
    "alexnet pool2": ((16, 256, 27, 27), 3, 2),
    "alexnet pool3": ((16, 256, 13, 13), 3, 2),
}
IMPLS = ("compiled", "numpy", "torch")


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (and compilation, or loading it from Numba's disk cache)
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def measure(impl: str, name: str, reps: int) -> dict[str, float]:
    """(forward ms, backward ms) of one implementation on one shape, in this process."""
    import numpy as np

    shape, k, s = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if impl == "torch":
        import torch

        torch.set_num_threads(1)
        xt = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.max_pool2d(xt, k, s)
        g = torch.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32))

        def backward() -> None:
            xt.grad = None
            torch.nn.functional.max_pool2d(xt, k, s).backward(g)

        fwd = _median_ms(lambda: torch.nn.functional.max_pool2d(xt, k, s), reps)
        both = _median_ms(backward, reps)
        return {"forward": fwd, "backward": both - fwd}
    import foldconv
    from foldconv.functional import max_pool, max_pool_backward

    foldconv.set_compiled(impl == "compiled")
    y, argmax = max_pool(x, (k, k), s, return_indices="argmax")
    g = rng.standard_normal(y.shape).astype(np.float32)
    return {
        "forward": _median_ms(lambda: max_pool(x, (k, k), s, return_indices="argmax"), reps),
        "backward": _median_ms(lambda: max_pool_backward(g, argmax, x.shape, (k, k), s), reps),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.reps)))
        return 0
    env = dict(os.environ, FOLDCONV_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name in SHAPES:
            for impl in IMPLS:
                cmd = [sys.executable, __file__, "--reps", str(args.reps), "--one", impl, name]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results.setdefault((impl, name), []).append(json.loads(out.stdout))
    table = {
        f"{impl} | {name}": {
            key: statistics.median(r[key] for r in runs) for key in ("forward", "backward")
        }
        for (impl, name), runs in results.items()
    }
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"{'shape':14} {'impl':9} {'forward ms':>11} {'backward ms':>12}")
    for name in SHAPES:
        for impl in IMPLS:
            r = table[f"{impl} | {name}"]
            print(f"{name:14} {impl:9} {r['forward']:11.3f} {r['backward']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
