"""Where a training step of the 2012 paper's AlexNet goes: per layer and pass.

Each layer's ``forward`` and ``backward`` is wrapped by a wall-clock timer (the model's
own code runs unchanged), as are the loss, ``zero_grad`` and the SGD update (momentum
0.9, weight decay 5e-4). Batch 16, 227x227, float32; the backward skips the images'
gradient as the trainer does (``skip_input_grad``). Prints the median over ``--steps``
steps after one warm-up step, in ms, with each convolution's and Linear layer's
multiply-adds.

    PYTHONPATH=src python bench/alexnet_profile.py [--steps 5] [--net lenet] [--json]

``--net lenet`` profiles LeNet-5 at batch 128 (1x28x28) the same way; ``--batch`` sets
another batch size (the trainer's LeNet-5 recipe uses 64).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np


def _timed(fn: Callable[..., Any], key: str, times: dict[str, list[float]]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[key].append(time.perf_counter() - t0)
        return out

    return wrapper


def _macs(layer: Any, out_shape: tuple[int, ...]) -> int:
    # Forward multiply-adds: one per output element and weight tap of its group.
    weight = getattr(layer, "weight", None)
    if weight is None:
        return 0
    per_output = math.prod(weight.data.shape[1:])
    return math.prod(out_shape) * per_output


def profile(
    steps: int, net: str = "alexnet", batch: int | None = None
) -> tuple[dict[str, float], dict[str, int], list[str]]:
    from foldconv import nn, optim
    from foldconv.allocator import keep_freed_memory_from_env
    from foldconv.models import alexnet_paper, lenet5
    from foldconv.trainer.loop import skip_input_grad

    keep_freed_memory_from_env()  # as the trainer does (FOLDCONV_KEEP_FREED_MEMORY=0: off)

    rng = np.random.default_rng(0)
    if net == "lenet":
        model = lenet5(10, rng=rng)
        n = batch or 128
        x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, size=n)
    else:
        model = alexnet_paper(1000, rng=rng)
        n = batch or 16
        x = rng.standard_normal((n, 3, 227, 227)).astype(np.float32)
        y = rng.integers(0, 1000, size=n)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    times: dict[str, list[float]] = collections.defaultdict(list)
    macs: dict[str, int] = {}
    order = []
    for seq, prefix in ((model.features, "features"), (model.classifier, "classifier")):
        for i, layer in enumerate(seq._modules.values()):
            name = f"{prefix}.{i} {type(layer).__name__}"
            order.append(name)
            layer.forward = _timed(layer.forward, name + " forward", times)
            layer.backward = _timed(layer.backward, name + " backward", times)
            if getattr(layer, "weight", None) is not None:
                fwd = layer.forward

                def record(x: Any, fwd: Callable = fwd, layer: Any = layer, name: str = name):
                    out = fwd(x)
                    macs[name] = _macs(layer, out.shape)
                    return out

                layer.forward = record
    zero_grad = _timed(opt.zero_grad, "zero_grad", times)
    update = _timed(opt.step, "optimizer step", times)
    for s in range(steps + 1):
        if s == 1:
            times.clear()
        t0 = time.perf_counter()
        loss = crit(model(x), y)
        zero_grad()
        grad = crit.backward()
        with skip_input_grad(model):
            model.backward(grad)
        update()
        times["step"].append(time.perf_counter() - t0)
    del loss
    medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return medians, macs, order


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--net", choices=["alexnet", "lenet"], default="alexnet")
    p.add_argument("--batch", type=int, default=None, help="default: 128 (lenet), 16 (alexnet)")
    p.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = p.parse_args(argv)
    medians, macs, order = profile(args.steps, args.net, args.batch)
    if args.json:
        print(json.dumps({"ms": medians, "macs": macs}))
        return 0
    print(f"{'layer':28} {'forward ms':>11} {'backward ms':>12} {'GMAC fwd':>9}")
    for name in order:
        f = medians.get(name + " forward", float("nan"))
        b = medians.get(name + " backward", float("nan"))
        m = f"{macs[name] / 1e9:9.3f}" if name in macs else ""
        print(f"{name:28} {f:11.2f} {b:12.2f} {m}")
    for key in ("zero_grad", "optimizer step", "step"):
        print(f"{key:28} {medians[key]:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
