"""LeNet-5 on MNIST (../shared/data/mnist10k): foldconv's trainer vs the same run in PyTorch.

Both frameworks get the same network, the same initial weights, the very same batches
(foldconv's seeded DataLoader and transforms: bilinear resize if needed, random crop with
2-pixel padding, normalisation) and the same optimiser and schedule (SGD with momentum and
weight decay, cosine annealing per epoch). Printed: test accuracy after the last epoch and
seconds per training epoch (evaluation excluded), median over the epochs.

    python bench/train_lenet.py [--epochs 12] [--data-dir ../shared/data/mnist10k]

PyTorch runs with ``torch.set_num_threads(2)``. On a shared machine the timings are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist10k"


def run_ours(args: argparse.Namespace, out: Path) -> dict:
    from foldconv.trainer import train

    s = train(
        "lenet5",
        "mnist",
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=out,
        progress=False,
        verbose=args.verbose,
    )
    return {
        "test_accuracy": s["test_accuracy"],
        "epoch_seconds": [r["epoch_seconds"] for r in _history(out)],
        "config": s["config"],
    }


def _history(out: Path) -> list[dict]:
    import json

    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def run_torch(args: argparse.Namespace, cfg: dict) -> dict:
    import torch
    from torch import nn

    from foldconv.data import DataLoader, load_dataset
    from foldconv.models import lenet5
    from foldconv.trainer import _build_transforms, _channel_stats

    torch.set_num_threads(2)
    train_ds, test_ds = load_dataset("mnist", args.data_dir)
    mean, std = _channel_stats(train_ds.images)
    hw = tuple(train_ds.images.shape[2:])
    train_tf, eval_tf = _build_transforms("mnist", hw, (28, 28), mean, std, cfg["augment"])
    train_loader = DataLoader(
        train_ds, batch_size=cfg["batch_size"], shuffle=True, seed=cfg["seed"], transform=train_tf
    )
    test_loader = DataLoader(test_ds, batch_size=256, shuffle=False, transform=eval_tf)

    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)
    )
    # The initial weights foldconv's trainer drew for this seed.
    init_rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=(1,)))
    sd = lenet5(10, rng=init_rng).state_dict()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for epoch in range(cfg["epochs"]):
        model.train()
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in train_loader:
            xb, yb = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
        sched.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in test_loader:
                pred = model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
                correct += int((pred == y).sum())
                n += len(y)
        if args.verbose:
            print(
                f"torch epoch {epoch + 1}: test acc {100 * correct / n:.2f}% ({seconds[-1]:.2f} s)",
                flush=True,
            )
    return {"test_accuracy": correct / n, "epoch_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--epochs", type=int, default=None, help="default: the trainer's recipe")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directory for foldconv's run")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(f"train_lenet: error: data directory {args.data_dir} not found", file=sys.stderr)
        return 2

    import tempfile

    start = _busy_sample()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        ours = run_ours(args, out)
    between = _busy_sample()
    theirs = run_torch(args, ours["config"])
    end = _busy_sample()
    others = [_others(a, b) for a, b in ((start, between), (between, end))]
    cfg = ours["config"]
    print(
        f"LeNet-5 on {args.data_dir}: {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"SGD lr {cfg['lr']} momentum {cfg['momentum']} wd {cfg['weight_decay']}, "
        f"{cfg['scheduler']} schedule, augment={cfg['augment']}"
    )
    print(f"{'':10} {'test accuracy':>14} {'s/epoch (median)':>17} {'s/epoch (min)':>14}")
    for name, r in (("foldconv", ours), ("PyTorch", theirs)):
        print(
            f"{name:10} {100 * r['test_accuracy']:13.2f}% "
            f"{statistics.median(r['epoch_seconds']):17.2f} {min(r['epoch_seconds']):14.2f}"
        )
    ratio = statistics.median(ours["epoch_seconds"]) / statistics.median(theirs["epoch_seconds"])
    print(f"foldconv / PyTorch time per epoch: {ratio:.2f}x")
    if None not in others:
        print(
            "cores' worth of CPU other processes used during foldconv's / PyTorch's run: "
            f"{others[0]:.2f} / {others[1]:.2f}"
        )
        if max(others) > 0.25:
            # PyTorch's threads stall beside other work far more than ours (BENCHMARKS.md,
            # "Under load"): the ratio is then not an idle-machine comparison.
            print(
                "note: other processes kept the machine busy; this ratio is not an idle "
                "comparison (bench/under_load.py compares the two under set loads)"
            )
    return 0


def _busy_sample() -> tuple[float, float, float] | None:
    """(wall s, busy CPU s of all cores, this process's CPU s), or None without /proc."""
    import os

    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), busy, time.process_time()


def _others(a: tuple | None, b: tuple | None) -> float | None:
    """Cores' worth of CPU that other processes used between two samples."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    return max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0])


if __name__ == "__main__":
    sys.exit(main())
