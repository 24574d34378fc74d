"""AlexNet training steps on the GPU: foldconv (CuPy) vs the same network in PyTorch.

A step is zero_grad, forward, cross-entropy loss, backward and an SGD update (momentum
0.9, weight decay 5e-4), float32, strict IEEE float32 on both sides, batch 128:

- the 2012 paper's AlexNet (``foldconv.models.alexnet_paper``: groups=2, LRN), 227x227, vs
  its PyTorch twin (``torch_alexnet_paper`` of bench/alexnet_step.py);
- torchvision's AlexNet layout (``foldconv.models.alexnet``), 224x224, vs
  ``torchvision.models.alexnet`` (or, without torchvision, the same layers in plain torch).

Both networks of a pair start from the same weights (ours copied into torch's) and are
first checked against each other in eval mode (no dropout) on 8 images: the logits
(MISMATCH above 1e-4 relative) and the losses of three SGD steps (above 1e-3). Then the
median of ``--steps`` CUDA-event-timed steps after warm-up, images/s, and the peak GPU
memory: for foldconv the CuPy pool's in-use bytes (measured over one extra step), for
torch ``max_memory_allocated``; the bytes each framework's pool reserved are in the JSON.
On the CPU (``--smoke``) ours' peak is tracemalloc's: only what the step allocates.
Issue 10's targets: paper AlexNet <= 1.2x PyTorch, torchvision AlexNet <= 1.5x.

    python bench/gpu_step.py [--quick] [--batch 128] [--steps 20] [--json PATH]
    python bench/gpu_step.py --smoke      # CPU, batch 2: checks the code, times nothing
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from alexnet_step import torch_alexnet_paper
from gpu_common import (
    MISMATCH_TOL,
    Device,
    Stage,
    add_common_arguments,
    failure,
    fmt_gib,
    interleaved_ms,
    median,
    rel_err,
    strict_fp32,
)

# Issue 10's targets: ours / PyTorch step time.
TARGETS = {"alexnet_paper": 1.2, "alexnet": 1.5}
# Relative difference of the losses of three identical SGD steps (float32, different
# summation orders) above which ours and torch's are said to disagree.
LOSS_TOL = 1e-3
# H100 anchors of bench-suite.md, strict fp32, batch 128 (ms per step).
H100_TORCH_MS = {"alexnet_paper": 26.26, "alexnet": 12.19}


def torch_alexnet_torchvision(nn: Any) -> Any:
    """torchvision's AlexNet layout in plain torch (for machines without torchvision):
    the same modules and state_dict names as ``torchvision.models.alexnet``."""

    class AlexNet(nn.Module):
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(256 * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x: Any) -> Any:
            x = self.avgpool(self.features(x))
            return self.classifier(x.flatten(1))

    return AlexNet


def _torch_builders(torch: Any) -> dict[str, tuple[str, Callable[[int], Any]]]:
    """network -> (what the reference is, builder(num_classes))."""
    nn = torch.nn
    try:
        import torchvision  # noqa: PLC0415

        tv = ("torchvision", lambda n: torchvision.models.alexnet(weights=None, num_classes=n))
    except Exception:  # noqa: BLE001 - absent, or built for another torch
        cls = torch_alexnet_torchvision(nn)
        tv = ("torch (torchvision's layers)", lambda n: cls(n))

    def paper(n: int) -> Any:
        model = torch_alexnet_paper(nn)
        if n != 1000:
            model[2][-1] = nn.Linear(4096, n)
        return model

    return {"alexnet_paper": ("PyTorch twin", paper), "alexnet": tv}


def torch_twin(ours: Any, build: Callable[[], Any], dev: Device) -> Any:
    """torch's model from ``build()`` holding copies of ours' weights: built on the meta
    device (no second initialisation of 61M parameters), then loaded strictly, the two
    state_dicts paired in order (the same layers in the same order; the paper twin's names
    differ from ours)."""
    torch = dev.torch
    with torch.device("meta"):
        theirs = build()
    src = list(ours.state_dict().items())
    dst = list(theirs.state_dict().items())
    if len(src) != len(dst):
        raise ValueError(f"state_dicts differ: {len(src)} arrays (ours) vs {len(dst)} (torch)")
    state = {}
    for (name, a), (tname, t) in zip(src, dst, strict=True):
        if tuple(a.shape) != tuple(t.shape):
            raise ValueError(f"{name} {tuple(a.shape)} vs torch {tname} {tuple(t.shape)}")
        state[tname] = torch.from_numpy(np.array(Device.to_numpy(a)))  # a copy: not shared
    theirs.load_state_dict(state, strict=True, assign=True)
    return theirs


def _ours_step(dev: Device, model: Any, x_np: np.ndarray, y_np: np.ndarray, lr: float) -> Any:
    """A foldconv training step on fixed data (returns the loss, not synchronised)."""
    from foldconv import nn, optim  # noqa: PLC0415

    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    x, y = dev.asarray(x_np), dev.asarray(y_np)

    def step() -> Any:
        opt.zero_grad()
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        return loss

    return step


def _torch_step(dev: Device, model: Any, x_np: np.ndarray, y_np: np.ndarray, lr: float) -> Any:
    """The same step in PyTorch."""
    torch = dev.torch
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss()
    x, y = dev.tensor(x_np), dev.tensor(y_np)

    def step() -> Any:
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _scalar(loss: Any) -> float:
    return float(loss.detach()) if hasattr(loss, "detach") else float(loss)


def agreement(
    dev: Device, ours: Any, theirs: Any, x_np: np.ndarray, y_np: np.ndarray
) -> dict[str, Any]:
    """The same network from the same weights, in eval mode (no dropout): the logits, and
    the losses of three SGD steps (lr 1e-3), ours against torch's. Checks every layer's
    forward and backward and the optimizer on this device in one go."""
    torch = dev.torch
    ours.eval()
    theirs.eval()
    try:
        with torch.no_grad():
            logits = rel_err(ours(dev.asarray(x_np)), theirs(dev.tensor(x_np)))
        so = _ours_step(dev, ours, x_np, y_np, lr=1e-3)
        st = _torch_step(dev, theirs, x_np, y_np, lr=1e-3)
        losses = [(_scalar(so()), _scalar(st())) for _ in range(3)]
    finally:
        ours.train()
        theirs.train()
    diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in losses)
    if not all(np.isfinite(v) for pair in losses for v in pair):
        diff = float("inf")
    return {"logits_rel_err": logits, "losses": losses, "loss_rel_diff": diff}


def time_steps(
    dev: Device, framework: str, step: Any, warmup: int, steps: int, budget_s: float
) -> dict[str, Any]:
    """Median ms of ``step`` after ``warmup``; its loss after them; peak and reserved
    bytes (ours: the CuPy pool's in-use peak over one more step; torch: max allocated
    and reserved over the timed steps)."""
    for _ in range(warmup):
        step()
    dev.reset_peak_torch()  # after the warm-up: the steady state's peak
    times = interleaved_ms(
        dev, {"s": (framework, step)}, warmup=0, repeats=steps, budget_s=budget_s
    )["s"]
    if framework == "ours":
        last: list[Any] = []
        peak: int | None = dev.peak_bytes_ours(lambda: last.append(step()))
        reserved = dev.reserved_bytes_ours()
        loss = _scalar(last[0])
    else:
        peak, reserved = dev.peak_bytes_torch()
        loss = _scalar(step())
    if not np.isfinite(loss):
        raise FloatingPointError(f"{framework}'s loss is {loss} after {warmup + len(times) + 1}")
    return {
        "ms": median(times),
        "times_ms": times,
        "loss": loss,
        "peak_bytes": peak,
        "reserved_bytes": reserved,
    }


def bench_network(
    dev: Device,
    network: str,
    *,
    batch: int,
    num_classes: int,
    warmup: int,
    steps: int,
    budget_s: float,
    stage: Stage,
) -> None:
    """One network, ours and torch's from the same weights, each guarded: one row."""
    from foldconv import models  # noqa: PLC0415

    torch = dev.torch
    size = 227 if network == "alexnet_paper" else 224
    ref_name, torch_builder = _torch_builders(torch)[network]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, 3, size, size), np.float32)
    y_np = rng.integers(0, num_classes, size=batch)
    label = f"{network} {size}² b{batch}"
    result: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    try:
        ours = getattr(models, network)(num_classes, rng=0)
        theirs = torch_twin(ours, lambda: torch_builder(num_classes), dev)
    except Exception as err:  # noqa: BLE001 - this network's row says why; the next one runs
        stage.add(label, status="FAILED", note=failure(f"{label} build", err))
        return
    check = None
    try:
        ours.to(dev.name)
        theirs.to(dev.name)
        n = min(batch, 8)
        check = agreement(dev, ours, theirs, x_np[:n], y_np[:n])
    except Exception as err:  # noqa: BLE001 - the timing below may still work
        errors["check"] = failure(f"{label} check", err)

    try:
        step = _ours_step(dev, ours, x_np, y_np, lr=0.01)
        result["ours"] = time_steps(dev, "ours", step, warmup, steps, budget_s)
    except Exception as err:  # noqa: BLE001 - reported in the row; torch's run goes on
        errors["ours"] = failure(f"{label} foldconv", err)
    ours = step = None  # free its GPU memory before torch's run
    dev.free_memory()
    try:
        step = _torch_step(dev, theirs, x_np, y_np, lr=0.01)
        result["torch"] = time_steps(dev, "torch", step, warmup, steps, budget_s)
    except Exception as err:  # noqa: BLE001
        errors["torch"] = failure(f"{label} torch", err)
    theirs = step = None
    dev.free_memory()

    if check is None:
        check_status, check_note = "FAILED", ""
    else:
        agree = check["logits_rel_err"] <= MISMATCH_TOL and check["loss_rel_diff"] <= LOSS_TOL
        check_status = "ok" if agree else "MISMATCH"
        check_note = (
            f"vs torch, eval mode: logits rel err {check['logits_rel_err']:.1e}, "
            f"3 SGD steps' losses ≤{check['loss_rel_diff']:.1e} apart"
        )
    common = {"network": network, "batch": batch, "size": size, "agreement": check}
    o, t = result.get("ours"), result.get("torch")

    def describe(r: dict[str, Any] | None) -> str:
        if r is None:
            return "FAILED"
        return f"{r['ms']:.1f} ms, {batch / r['ms'] * 1e3:,.0f} img/s, {fmt_gib(r['peak_bytes'])}"

    ratio = o["ms"] / t["ms"] if o and t else None
    notes = [check_note] if check_note else []
    if ratio is not None and not dev.smoke:
        goal = TARGETS[network]
        notes.append(f"target ≤{goal}: {'met' if ratio <= goal else 'missed'}")
    notes += [f"{side}: {text}" for side, text in errors.items()]
    status = "FAILED" if (o is None or t is None) else check_status
    stage.add(
        label,
        ours=describe(o),
        reference=f"{ref_name}: {describe(t)}",
        ratio=ratio,
        status=status,
        note="; ".join(notes),
        ours_result=o,
        torch_result=t,
        reference_name=ref_name,
        target=TARGETS[network],
        h100_torch_ms=H100_TORCH_MS[network],
        **common,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, budget=50.0)
    p.add_argument("--batch", type=int, default=None, help="default 128 (smoke: 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; quick 2)")
    p.add_argument(
        "--networks",
        default="alexnet_paper,alexnet",
        help="comma-separated: alexnet_paper (2012 paper), alexnet (torchvision layout)",
    )
    a = p.parse_args(argv)
    networks = a.networks.split(",")
    unknown = sorted(set(networks) - set(TARGETS))
    if unknown:
        p.error(f"--networks: unknown {', '.join(unknown)}")
    batch = a.batch or (2 if a.smoke else 128)
    steps = a.steps or (1 if a.smoke else 5 if a.quick else 20)
    warmup = a.warmup or (1 if a.smoke else 2 if a.quick else 3)
    num_classes = 10 if a.smoke else 1000
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    stage = Stage("step", a.json, mode, batch=batch, steps=steps, warmup=warmup)
    try:
        dev = Device(a.smoke)
        stage.doc["info"].update(strict_fp32(dev.torch))
        dev.torch.backends.cudnn.benchmark = True
        dev.torch.manual_seed(0)  # torch's dropout masks
        for i, network in enumerate(networks):
            if stage.elapsed() > a.budget:
                stage.add(network, status="skipped (time budget)")
                continue
            share = (a.budget - stage.elapsed()) / (len(networks) - i)
            bench_network(
                dev,
                network,
                batch=batch,
                num_classes=num_classes,
                warmup=warmup,
                steps=steps,
                budget_s=share * 0.35,  # per framework, timed steps only
                stage=stage,
            )
    except Exception as err:  # noqa: BLE001
        stage.add("set-up", status="FAILED", note=failure("training step set-up", err))
    stage.finish()
    return 0 if stage.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
