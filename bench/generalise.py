"""Unseen shapes: does algorithm='auto' keep up with the plain im2col path?

    python bench/generalise.py

Forward + all three gradients (float32, 2 threads), median ms, auto against
algorithm='im2col' in the same run, for shapes outside the suite: other kernel sizes,
1-d and 3-d, strided depthwise, transposed convolutions, small and large batches.
"""

from __future__ import annotations

import statistics
import time

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np

from foldconv.functional import conv, conv_backward, conv_transpose, conv_transpose_backward

CASES = [
    # name, x shape, weight shape, options, transposed?
    ("1-d k7 s1", (32, 64, 512), (64, 64, 7), dict(padding=3), False),
    ("1-d k3 s2", (32, 64, 512), (128, 64, 3), dict(stride=2, padding=1), False),
    ("3-d k3", (4, 32, 16, 32, 32), (32, 32, 3, 3, 3), dict(padding=1), False),
    ("2-d k7 s2 (stem)", (8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), False),
    ("2-d k3 batch 1", (1, 256, 28, 28), (256, 256, 3, 3), dict(padding=1), False),
    ("2-d k3 batch 64", (64, 64, 32, 32), (64, 64, 3, 3), dict(padding=1), False),
    (
        "depthwise s2 k5",
        (16, 64, 56, 56),
        (64, 1, 5, 5),
        dict(stride=2, padding=2, groups=64),
        False,
    ),
    ("transposed k4 s2", (8, 128, 16, 16), (128, 64, 4, 4), dict(stride=2, padding=1), True),
    ("transposed k3 s1", (8, 64, 32, 32), (64, 64, 3, 3), dict(padding=1), True),
]


def _median(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    print("| shape | auto f+b ms | im2col f+b ms | auto / im2col |")
    print("|---|---|---|---|")
    ratios = []
    for name, xs, ws, opts, transposed in CASES:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = (rng.standard_normal(ws) * 0.1).astype(np.float32)
        fwd, bwd = (
            (conv_transpose, conv_transpose_backward) if transposed else (conv, conv_backward)
        )
        gy = np.ones_like(fwd(x, w, **opts))

        def run(alg, fwd=fwd, bwd=bwd, x=x, w=w, gy=gy, opts=opts):
            fwd(x, w, **opts, algorithm=alg)
            bwd(gy, x, w, **opts, algorithm=alg)

        t = {}
        for _ in range(2):  # interleaved rounds
            for alg in ("auto", "im2col"):
                t.setdefault(alg, []).append(_median(lambda a=alg: run(a)))
        auto, plain = min(t["auto"]), min(t["im2col"])
        ratios.append(auto / plain)
        print(f"| {name} | {auto:.1f} | {plain:.1f} | {auto / plain:.2f} |")
    gm = float(np.exp(np.mean(np.log(ratios))))
    print(f"| geometric mean | | | {gm:.2f} |")


if __name__ == "__main__":
    main()
