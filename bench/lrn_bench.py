"""Local response normalisation alone: foldconv's or PyTorch's forward and backward on
AlexNet's two LRN layers (batch 16, float32, size 5, alpha 5e-4, beta 0.75, k 2).

One process measures one library, at one thread (``--threads``), as it runs in training:
the forward keeps its cache (``return_cache=True``; PyTorch's autograd keeps its own) and
the backward uses it. Prints, per layer and pass, the median over ``--repeats`` calls
after one warm-up call of the wall time and of the process's CPU time
(``time.process_time``, which a busy machine disturbs less), in ms. Run fresh processes,
interleaved, to compare:

    PYTHONPATH=src python bench/lrn_bench.py --worker ours [--threads 1] [--repeats 15]
    python bench/lrn_bench.py --worker torch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

SHAPES = {"lrn1": (16, 96, 55, 55), "lrn2": (16, 256, 27, 27)}
SIZE, ALPHA, BETA, K = 5, 5e-4, 0.75, 2.0


def _time(
    fn: Callable[[Any], Any], repeats: int, setup: Callable[[], Any] = lambda: None
) -> tuple[float, float]:
    fn(setup())  # warm-up (and Numba's compilation or cache load)
    wall, cpu = [], []
    for _ in range(repeats):
        arg = setup()  # untimed
        w0, c0 = time.perf_counter(), time.process_time()
        fn(arg)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def ours(x: Any, g: Any, repeats: int) -> dict[str, tuple[float, float]]:
    from foldconv.functional import local_response_norm, local_response_norm_backward

    _, cache = local_response_norm(x, SIZE, ALPHA, BETA, K, return_cache=True)
    return {
        "forward": _time(
            lambda _: local_response_norm(x, SIZE, ALPHA, BETA, K, return_cache=True), repeats
        ),
        "backward": _time(
            lambda _: local_response_norm_backward(g, x, SIZE, ALPHA, BETA, K, cache=cache),
            repeats,
        ),
    }


def torch_lrn(x: Any, g: Any, repeats: int) -> dict[str, tuple[float, float]]:
    import torch

    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(g)

    def forward(_: Any = None) -> Any:
        return torch.nn.functional.local_response_norm(xt, SIZE, ALPHA, BETA, K)

    # a fresh graph for each backward (a backward frees its graph), built untimed
    return {
        "forward": _time(forward, repeats),
        "backward": _time(lambda y: y.backward(gt), repeats, setup=forward),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "torch"], required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import numpy as np

    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
    else:
        import foldconv

        foldconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in SHAPES.items():
        # ReLU output, as in AlexNet
        x = np.maximum(rng.standard_normal(shape, dtype=np.float32) * 3, 0)
        g = rng.standard_normal(shape, dtype=np.float32)
        run = ours if args.worker == "ours" else torch_lrn
        for pass_, (wall, cpu) in run(x, g, args.repeats).items():
            out[f"{name} {pass_}"] = {"wall_ms": wall, "cpu_ms": cpu}
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"worker": args.worker, "load": load, "ms": out}))
        return 0
    print(f"{args.worker}, {args.threads} thread(s), load {load:.2f}")
    for key, v in out.items():
        print(f"{key:14} wall {v['wall_ms']:7.2f} ms  cpu {v['cpu_ms']:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
