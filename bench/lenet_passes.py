"""LeNet-5's two convolutions, pass by pass: foldconv's algorithms against PyTorch.

Batch 128, float32, one thread (``FOLDCONV_NUM_THREADS=1``, ``torch.set_num_threads(1)``),
CPU time of each call, median of ``--reps``; the forward, then ``conv_backward`` asking for
one gradient at a time (``output_mask``; PyTorch's ``aten.convolution_backward`` the same).
Each (framework, algorithm) runs in a fresh process, in turn, ``--rounds`` times.

    PYTHONPATH=src python bench/lenet_passes.py [--rounds 2] [--reps 40]
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

LAYERS = {
    "conv1": ((128, 1, 28, 28), (6, 1, 5, 5), 2),
    "conv2": ((128, 6, 14, 14), (16, 6, 5, 5), 0),
}
WHO = ("im2col", "direct_compiled", "im2col_compiled", "torch")


def _median_cpu(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def worker(who: str, reps: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    if who == "torch":
        import torch

        torch.set_num_threads(1)
        back = torch.ops.aten.convolution_backward
        for name, (xs, ws, pad) in LAYERS.items():
            x, w = torch.randn(xs), torch.randn(ws)
            y = torch.nn.functional.conv2d(x, w, padding=pad)
            dy = torch.randn(y.shape)

            def grad(mask, x=x, w=w, dy=dy, pad=pad):
                return back(dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

            out[name] = [
                _median_cpu(
                    lambda x=x, w=w, pad=pad: torch.nn.functional.conv2d(x, w, padding=pad), reps
                ),
                _median_cpu(lambda: grad([True, False, False]), reps),
                _median_cpu(lambda: grad([False, True, False]), reps),
            ]
        return out
    from foldconv.functional import conv, conv_backward

    for name, (xs, ws, pad) in LAYERS.items():
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        dy = rng.standard_normal(conv(x, w, padding=pad).shape).astype(np.float32)

        def grad(mask, x=x, w=w, dy=dy, pad=pad):
            return conv_backward(dy, x, w, padding=pad, algorithm=who, output_mask=mask)

        out[name] = [
            _median_cpu(lambda x=x, w=w, pad=pad: conv(x, w, padding=pad, algorithm=who), reps),
            _median_cpu(lambda: grad((True, False, False)), reps),
            _median_cpu(lambda: grad((False, True, False)), reps),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--worker", choices=WHO, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.reps < 1:
        p.error("--rounds and --reps: expected at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps)))
        return 0
    env = dict(os.environ, FOLDCONV_NUM_THREADS="1", FOLDCONV_ADAPTIVE_THREADS="0")
    results: dict[str, list[dict]] = {who: [] for who in WHO}
    for _ in range(args.rounds):
        for who in WHO:
            cmd = [sys.executable, __file__, "--worker", who, "--reps", str(args.reps)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{who}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            results[who].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"one thread, CPU ms, median of {args.reps} calls; range over {args.rounds} rounds")
    print("| layer, pass | " + " | ".join(WHO) + " |")
    print("| --- |" + " --- |" * len(WHO))
    for name in LAYERS:
        for i, what in enumerate(("forward", "input gradient", "weight gradient")):
            cells = []
            for who in WHO:
                vals = [r[name][i] for r in results[who]]
                cells.append(f"{min(vals):.2f}-{max(vals):.2f}" if vals else "failed")
            print(f"| {name} {what} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
