"""AlexNet's five convolutions (and a few others), pass by pass: algorithms against PyTorch.

Batch 16 (the suite's batches for the others), float32, both libraries on the cores this
process may use. Wall time, median of ``--reps`` calls after two untimed ones, per
pass: the forward, then ``conv_backward`` asking for one gradient at a time
(``output_mask``; PyTorch's ``aten.convolution_backward`` the same) and for all three
("all", what a layer's backward does). Each contestant runs in a fresh process, in turn
(the order reversed every other round), ``--rounds`` times; the table gives the median
over rounds.

A contestant is an algorithm name (``auto``, ``im2col``, ``winograd``,
``im2col_compiled``, ...) or ``torch``; ``NAME@DIR`` runs foldconv from another source
tree (``DIR/src``, e.g. a ``git worktree`` of an older commit) and ``NAME+KEY=VALUE``
sets an environment variable for that contestant.

    PYTHONPATH=src python bench/conv_passes.py [--who auto im2col_compiled torch]
        [--layers c1 c2 c3 c4 c5] [--rounds 3] [--reps 5]
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
import foldconv  # noqa: F401

# isort: split
import numpy as np

# name: x shape, w shape, stride, padding, groups, dilation
LAYERS = {
    "c1": ((16, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1, 1),
    "c2": ((16, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2, 1),
    "c3": ((16, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1, 1),
    "c4": ((16, 384, 13, 13), (384, 192, 3, 3), 1, 1, 2, 1),
    "c5": ((16, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2, 1),
    "vgg_c3": ((8, 256, 56, 56), (256, 256, 3, 3), 1, 1, 1, 1),
    "resnet_1x1": ((16, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1, 1),
    "resnet_s2": ((16, 128, 28, 28), (128, 128, 3, 3), 2, 1, 1, 1),
    "dilated": ((8, 64, 64, 64), (64, 64, 3, 3), 1, 2, 1, 2),
    "cifar_b64": ((64, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1, 1),
    "stem_7x7": ((8, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1),
    "batch4": ((4, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1, 1),
}
PASSES = ("fwd", "dX", "dW", "all")
MASKS = ((True, False, False), (False, True, False), (True, True, True))


def _median_ms(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def worker(who: str, names: list[str], reps: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    if who == "torch":
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        back = torch.ops.aten.convolution_backward
        for name in names:
            xs, ws, s, p, groups, d = LAYERS[name]
            x, w = torch.randn(xs), torch.randn(ws)

            def fwd(x=x, w=w, s=s, p=p, groups=groups, d=d):
                return torch.nn.functional.conv2d(
                    x, w, stride=s, padding=p, groups=groups, dilation=d
                )

            dy = torch.randn(fwd().shape)
            row = [_median_ms(fwd, reps)]
            for mask in MASKS:
                row.append(
                    _median_ms(
                        lambda m=list(mask), x=x, w=w, dy=dy, s=s, p=p, g=groups, d=d: back(
                            dy, x, w, None, [s, s], [p, p], [d, d], False, [0, 0], g, m
                        ),
                        reps,
                    )
                )
            out[name] = row
        return out
    from foldconv.functional import conv, conv_backward

    for name in names:
        xs, ws, s, p, groups, d = LAYERS[name]
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        opts = dict(stride=s, padding=p, groups=groups, dilation=d, algorithm=who)
        try:
            dy = rng.standard_normal(conv(x, w, **opts).shape).astype(np.float32)
        except ValueError:  # the algorithm does not run this layer
            out[name] = [None] * len(PASSES)
            continue
        row = [_median_ms(lambda x=x, w=w, o=opts: conv(x, w, **o), reps)]
        for mask in MASKS:
            try:
                row.append(
                    _median_ms(
                        lambda m=mask, x=x, w=w, dy=dy, o=opts: conv_backward(
                            dy, x, w, output_mask=m, **o
                        ),
                        reps,
                    )
                )
            except ValueError:
                row.append(None)
        out[name] = row
    return out


def _launch(who: str, names: list[str], reps: int) -> dict:
    # Each tree's foldconv decides OpenBLAS's idle spin itself, unless the contestant says.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    name, *settings = who.split("+")
    for kv in settings:
        key, _, value = kv.partition("=")
        env[key] = value
    if "@" in name:
        name, tree = name.split("@", 1)
        env["PYTHONPATH"] = os.path.join(tree, "src")
    cmd = [sys.executable, __file__, "--worker", name, "--reps", str(reps), "--layers", *names]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{who} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--who", nargs="+", default=["auto", "im2col", "im2col_compiled", "torch"])
    p.add_argument("--layers", nargs="+", default=["c1", "c2", "c3", "c4", "c5"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [n for n in args.layers if n not in LAYERS]
    if unknown:
        p.error(f"--layers: unknown {unknown}; known: {', '.join(LAYERS)}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.layers, args.reps)))
        return 0
    runs: dict[str, list[dict]] = {w: [] for w in args.who}
    for r in range(args.rounds):
        for who in args.who if r % 2 == 0 else args.who[::-1]:
            runs[who].append(_launch(who, args.layers, args.reps))
            print(f"# round {r} {who} done", file=sys.stderr, flush=True)
    print("| layer | pass | " + " | ".join(args.who) + " |")
    print("| --- | --- |" + " --- |" * len(args.who))
    for name in args.layers:
        for i, pass_ in enumerate(PASSES):
            cells = []
            for who in args.who:
                values = [run[name][i] for run in runs[who] if run[name][i] is not None]
                cells.append(f"{statistics.median(values):.2f}" if values else "-")
            print(f"| {name} | {pass_} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
