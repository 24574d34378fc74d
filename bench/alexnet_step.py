"""One AlexNet (2012 paper) training step at batch 16 on 227x227 images: foldconv vs PyTorch.

A step is forward, cross-entropy loss, backward and an SGD update (momentum 0.9, weight
decay 5e-4), float32, on the CPU. As the trainer does (``skip_input_grad``), foldconv's
backward computes no gradient for the images, which PyTorch does not compute either
(they do not require grad); ``--full`` computes it (conv1's input gradient, as this
script did before). Each framework runs in its own process, so that its
peak memory (``ru_maxrss``, the resident set's high-water mark) is its own; the table
gives the median step time over ``--repeats`` steps after one warm-up step, the peak RSS,
and the peak minus the RSS after building the model (the memory the steps add).

    python bench/alexnet_step.py [--batch 16] [--repeats 3] [--full]

``--who`` compares any contestants over ``--rounds`` rounds of fresh processes in turn
(the order reversed every other round): ``ours``, ``torch``, ``ours@DIR`` (foldconv and
this script from another source tree, e.g. a ``git worktree`` of an older commit) and
``ours+KEY=VALUE`` (an environment variable for that contestant; ``OPENBLAS_THREAD_TIMEOUT``
is removed from every contestant's environment unless given so):

    python bench/alexnet_step.py --who ours@/tmp/base ours ours+OPENBLAS_THREAD_TIMEOUT=28 \
        torch --rounds 5 --repeats 5

PyTorch runs with ``torch.set_num_threads(2)``. On a shared machine the timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


def worker_ours(batch: int, repeats: int, full: bool = False) -> dict:
    import contextlib

    from foldconv import nn, optim
    from foldconv.allocator import keep_freed_memory_from_env
    from foldconv.models import alexnet_paper
    from foldconv.trainer.loop import skip_input_grad

    keep_freed_memory_from_env()  # as the trainer does (FOLDCONV_KEEP_FREED_MEMORY=0: off)

    rng = np.random.default_rng(0)
    model = alexnet_paper(1000, rng=rng)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    x = rng.standard_normal((batch, 3, 227, 227)).astype(np.float32)
    y = rng.integers(0, 1000, size=batch)
    built = _current_rss_mib()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = crit(model(x), y)
        opt.zero_grad()
        with contextlib.nullcontext() if full else skip_input_grad(model):
            model.backward(crit.backward())
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"times": times[1:], "loss": float(loss), "built_mib": built, "peak_mib": _rss_mib()}


def torch_alexnet_paper(nn):
    """The 2012 paper's AlexNet (groups=2, LRN) in PyTorch, given ``torch.nn``."""
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
    features = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(),
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(),
        nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(9216, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, 1000),
    )
    return nn.Sequential(features, nn.Flatten(), classifier)


def worker_torch(batch: int, repeats: int) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(2)
    model = torch_alexnet_paper(nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, 227, 227)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 1000, size=batch))
    built = _current_rss_mib()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"times": times[1:], "loss": float(loss), "built_mib": built, "peak_mib": _rss_mib()}


def _contestant(who: str, args: argparse.Namespace) -> dict:
    name, *settings = who.split("+")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    script = __file__
    if "@" in name:
        name, tree = name.split("@", 1)
        env["PYTHONPATH"] = os.path.join(tree, "src")
        script = os.path.join(tree, "bench", os.path.basename(__file__))
    for kv in settings:
        key, _, value = kv.partition("=")
        env[key] = value
    cmd = [sys.executable, script, "--worker", name, "--batch", str(args.batch)]
    cmd += ["--repeats", str(args.repeats), *(["--full"] if args.full else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{who} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> int:
    """Every contestant in a fresh process per round, in turn; medians and ratios."""
    steps: dict[str, list[float]] = {w: [] for w in args.who}
    peaks: dict[str, list[float]] = {w: [] for w in args.who}
    for r in range(args.rounds):
        line = []
        for who in args.who if r % 2 == 0 else args.who[::-1]:
            out = _contestant(who, args)
            steps[who].append(statistics.median(out["times"]))
            peaks[who].append(out["peak_mib"])
            line.append(f"{who} {1e3 * steps[who][-1]:.0f}")
        print(f"# round {r}: " + ", ".join(line) + " ms", flush=True)
    print(
        f"AlexNet (paper) training step, batch {args.batch}; per round the median of "
        f"{args.repeats} steps after a warm-up; {args.rounds} rounds"
    )
    ref = "torch" if "torch" in steps else None
    print("| contestant | median of rounds ms | rounds ms | peak RSS MiB | / PyTorch per round |")
    print("| --- | --- | --- | --- | --- |")
    for who in args.who:
        ms = [1e3 * t for t in steps[who]]
        ratios = ""
        if ref and who != ref:
            per = [a / b for a, b in zip(steps[who], steps[ref], strict=True)]
            ratios = f"{statistics.median(per):.2f} ({min(per):.2f}-{max(per):.2f})"
        print(
            f"| {who} | {statistics.median(ms):.1f} | {min(ms):.0f}-{max(ms):.0f} | "
            f"{max(peaks[who]):.0f} | {ratios} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--full", action="store_true", help="foldconv also computes the images' gradient"
    )
    p.add_argument("--who", nargs="+", help="contestants compared in rounds (see above)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.worker == "ours":
            out = worker_ours(args.batch, args.repeats, args.full)
        else:
            out = worker_torch(args.batch, args.repeats)
        print(json.dumps(out))
        return 0
    if args.who:
        return compare(args)
    results = {}
    for name in ("ours", "torch"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
                *(["--full"] if args.full else []),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"AlexNet (paper) training step, batch {args.batch}, 227x227, float32, CPU; "
        f"median of {args.repeats} steps after a warm-up"
    )
    print(f"{'':10} {'s/step':>8} {'min':>8} {'peak RSS MiB':>13} {'added by steps':>15}")
    for label, key in (("foldconv", "ours"), ("PyTorch", "torch")):
        r = results[key]
        print(
            f"{label:10} {statistics.median(r['times']):8.2f} {min(r['times']):8.2f} "
            f"{r['peak_mib']:13.0f} {r['peak_mib'] - r['built_mib']:15.0f}"
        )
    ratio = statistics.median(results["ours"]["times"]) / statistics.median(
        results["torch"]["times"]
    )
    print(f"foldconv / PyTorch time per step: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
