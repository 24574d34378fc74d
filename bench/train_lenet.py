"""LeNet-5 on MNIST (../shared/data/mnist10k): foldconv's trainer vs the same run in PyTorch.

Both frameworks get the same network, the same initial weights, the very same batches
(foldconv's seeded DataLoader and transforms: bilinear resize if needed, random crop with
2-pixel padding, normalisation) and the same optimiser and schedule (SGD with momentum and
weight decay, cosine annealing per epoch). Printed: test accuracy after the last epoch and
seconds per training epoch (evaluation excluded), median over the epochs.

    python bench/train_lenet.py [--rounds 3] [--epochs 12] [--data-dir ../shared/data/mnist10k]

Each round starts both frameworks in fresh processes and runs their epochs in turn: epoch
e of one, then epoch e of the other (foldconv first in odd rounds, PyTorch first in even
ones), each while the other process only waits, so that the machine's drift falls on both
alike. A virtual machine's speed here moved by a third from one minute to the next, and
whole runs in turn (``--sequential``: the older way, each framework's whole training in
turn) gave round ratios from 0.66x to 1.21x on one idle machine. Printed: the ratio of the
medians over every round's epochs, each round's own, and the median of the epoch pairs'
ratios with its quartiles. PyTorch runs with ``torch.set_num_threads(2)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# First, as the README says: foldconv sets OpenBLAS's idle spin before NumPy loads it.
from foldconv import _openblas_env  # noqa: F401

# isort: split
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist10k"


def run_ours(args: argparse.Namespace, out: Path, on_step: Any = None) -> dict:
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
        on_step=on_step,
    )
    return {
        "test_accuracy": s["test_accuracy"],
        "epoch_seconds": [r["epoch_seconds"] for r in _history(out)],
        "config": s["config"],
    }


def _history(out: Path) -> list[dict]:
    import json

    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def _torch_setup(args: argparse.Namespace, cfg: dict) -> dict:
    """PyTorch's network, optimiser, schedule and loaders for this run (see the module
    docstring): what :func:`_torch_epoch` runs one epoch of."""
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
    return dict(
        model=model,
        opt=opt,
        sched=sched,
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=train_loader,
        test_loader=test_loader,
    )


def _torch_epoch(run: dict, epoch: int, verbose: bool) -> tuple[float, float]:
    """One epoch of PyTorch's run: (training seconds, test accuracy after it)."""
    import torch

    model, opt, loss_fn = run["model"], run["opt"], run["loss_fn"]
    model.train()
    run["train_loader"].set_epoch(epoch)
    t0 = time.perf_counter()
    for x, y in run["train_loader"]:
        xb, yb = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    run["sched"].step()
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in run["test_loader"]:
            pred = model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
            correct += int((pred == y).sum())
            n += len(y)
    if verbose:
        print(
            f"torch epoch {epoch + 1}: test acc {100 * correct / n:.2f}% ({seconds:.2f} s)",
            flush=True,
        )
    return seconds, correct / n


def run_torch(args: argparse.Namespace, cfg: dict) -> dict:
    run = _torch_setup(args, cfg)
    seconds, accuracy = [], 0.0
    for epoch in range(cfg["epochs"]):
        t, accuracy = _torch_epoch(run, epoch, args.verbose)
        seconds.append(t)
    return {"test_accuracy": accuracy, "epoch_seconds": seconds}


def _config(args: argparse.Namespace) -> dict:
    """The trainer's configuration of this run (the recipe and the arguments given)."""
    from foldconv.trainer.config import resolve_config

    overrides = dict.fromkeys(
        (
            "momentum",
            "weight_decay",
            "optimizer",
            "scheduler",
            "augment",
            "label_smoothing",
        )
    )
    overrides.update(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    cfg, _ = resolve_config("lenet5", "mnist", args.data_dir, overrides, None)
    return cfg


def _worker(args: argparse.Namespace) -> int:
    """One framework's run in this process; its result as JSON on the last line."""
    import json
    import tempfile

    start = _busy_sample()
    if args.worker == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            r = run_ours(args, Path(args.out) if args.out else Path(tmp) / "run")
    else:
        r = run_torch(args, _config(args))
    end = _busy_sample()
    r["others"] = _others(start, end)
    r.pop("config", None)
    print(json.dumps(r), flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    """One framework's run, an epoch at a time on the parent's word (--interleave): read
    a line from stdin before each epoch, print ``EPOCH_DONE e`` after it; the run's result
    as JSON on the last line. Between epochs this process only waits, so the other
    framework's epochs run on an otherwise idle machine."""
    import json
    import tempfile

    def wait() -> None:
        if not sys.stdin.readline():
            raise SystemExit("train_lenet: the parent went away")

    cpu0 = time.process_time()
    if args.worker == "torch":
        cfg = _config(args)
        run = _torch_setup(args, cfg)
        print("READY", flush=True)
        seconds, accuracy = [], 0.0
        for epoch in range(cfg["epochs"]):
            wait()
            t, accuracy = _torch_epoch(run, epoch, args.verbose)
            seconds.append(t)
            print(f"EPOCH_DONE {epoch}", flush=True)
        result = {"test_accuracy": accuracy, "epoch_seconds": seconds}
    else:
        print("READY", flush=True)
        wait()
        current = [1]

        def on_step(info: dict) -> None:
            # The first step of the next epoch has run (after the last one's evaluation):
            # the last epoch is done; the other framework runs its epoch while this waits.
            # The trainer's epoch time counts each step before this call, never the wait.
            if info["epoch"] != current[0]:
                print(f"EPOCH_DONE {current[0] - 1}", flush=True)
                current[0] = info["epoch"]
                wait()

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out) if args.out else Path(tmp) / "run"
            result = run_ours(args, out, on_step)
            result.pop("config")
        print(f"EPOCH_DONE {current[0] - 1}", flush=True)
    result["cpu_seconds"] = time.process_time() - cpu0
    print(json.dumps(result), flush=True)
    return 0


class _Server:
    """A --serve worker process and its line protocol."""

    def __init__(self, who: str, argv: list[str], verbose: bool) -> None:
        import subprocess

        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", who, "--serve", *argv]
        self.who, self.verbose = who, verbose
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def expect(self, word: str) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                raise RuntimeError(f"train_lenet: the {self.who} run failed:\n{err[-3000:]}")
            line = line.rstrip("\n")
            if line.startswith(word):
                return line
            if self.verbose:
                print(line, flush=True)

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        import json

        line = self.expect("{")
        self.proc.wait()
        return json.loads(line)


def _interleaved_round(argv: list[str], epochs: int, torch_first: bool, verbose: bool) -> dict:
    """Both frameworks in fresh processes, their epochs in turn: epoch e of one, then
    epoch e of the other (PyTorch first when ``torch_first``), each on an otherwise idle
    machine, so a drift of the machine's speed falls on both alike."""
    start = _busy_sample()
    servers = {who: _Server(who, argv, verbose) for who in ("ours", "torch")}
    try:
        for server in servers.values():
            server.expect("READY")
        order = ("torch", "ours") if torch_first else ("ours", "torch")
        for epoch in range(epochs):
            for who in order:
                servers[who].go()
                servers[who].expect(f"EPOCH_DONE {epoch}")
        results = {who: server.result() for who, server in servers.items()}
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.proc.kill()
    end = _busy_sample()
    others = _others(start, end)
    if others is not None:
        # _others subtracts this process's CPU only: take the two workers' off too.
        own = sum(r["cpu_seconds"] for r in results.values()) / (end[0] - start[0])
        others = max(0.0, others - own)
    for r in results.values():
        r["others"] = others
    return results


def _run_worker(who: str, argv: list[str]) -> dict:
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", who, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"train_lenet: the {who} run failed:\n{done.stderr[-3000:]}")
    if done.stdout.strip() and "--verbose" in argv:
        print("\n".join(done.stdout.strip().splitlines()[:-1]), flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA),
        help=f"the MNIST files (default: {DEFAULT_DATA}, beside the repository)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="fresh-process runs of each framework (default: 3)"
    )
    p.add_argument("--epochs", type=int, default=None, help="default: the trainer's recipe")
    p.add_argument("--batch-size", type=int, default=None, help="default: the trainer's recipe")
    p.add_argument("--lr", type=float, default=None, help="default: the trainer's recipe")
    p.add_argument(
        "--seed", type=int, default=0, help="data order, augmentation and weights (default: 0)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="keep foldconv's run directory here (default: a temporary one, deleted after)",
    )
    p.add_argument("--verbose", action="store_true", help="print every epoch of both runs")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run each framework's whole training in turn (default: their epochs interleaved)",
    )
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(raw)
    if not Path(args.data_dir).is_dir():
        print(f"train_lenet: error: data directory {args.data_dir} not found", file=sys.stderr)
        return 2
    if args.rounds < 1:
        p.error(f"--rounds: expected a positive count, got {args.rounds}")
    if args.worker:
        return _serve(args) if args.serve else _worker(args)

    # What the workers get: the arguments, less those that only the parent reads.
    passed, skip = [], False
    for a in raw:
        if skip:
            skip = False
        elif a == "--rounds":
            skip = True  # and its value
        elif not a.startswith("--rounds=") and a != "--sequential":
            passed.append(a)
    cfg = _config(args)
    runs: dict[str, list[dict]] = {"ours": [], "torch": []}
    for r in range(args.rounds):
        if args.sequential:
            order = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
            for who in order:
                runs[who].append(_run_worker(who, passed))
        else:
            pair = _interleaved_round(passed, cfg["epochs"], r % 2 == 1, args.verbose)
            for who in ("ours", "torch"):
                runs[who].append(pair[who])
    print(
        f"LeNet-5 on {args.data_dir}: {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"SGD lr {cfg['lr']} momentum {cfg['momentum']} wd {cfg['weight_decay']}, "
        f"{cfg['scheduler']} schedule, augment={cfg['augment']}; {args.rounds} round(s), "
        "each framework in a fresh process" + ("" if args.sequential else ", their epochs in turn")
    )
    print(
        f"{'':10} {'test accuracy':>14} {'s/epoch (median)':>17} {'s/epoch (min)':>14} "
        f"{'round medians':>20}"
    )
    medians = {}
    for name, who in (("foldconv", "ours"), ("PyTorch", "torch")):
        epochs = [t for run in runs[who] for t in run["epoch_seconds"]]
        medians[who] = statistics.median(epochs)
        rounds = " / ".join(f"{statistics.median(run['epoch_seconds']):.2f}" for run in runs[who])
        accuracy = runs[who][-1]["test_accuracy"]
        print(
            f"{name:10} {100 * accuracy:13.2f}% {medians[who]:17.2f} {min(epochs):14.2f} "
            f"{rounds:>20}"
        )
    ratio = medians["ours"] / medians["torch"]
    others = [run["others"] for who in ("ours", "torch") for run in runs[who]]
    busy = None not in others and max(others) > 0.25
    per_round = [
        statistics.median(a["epoch_seconds"]) / statistics.median(b["epoch_seconds"])
        for a, b in zip(runs["ours"], runs["torch"], strict=True)
    ]
    print(
        f"foldconv / PyTorch time per epoch: {ratio:.2f}x (rounds: "
        + ", ".join(f"{x:.2f}x" for x in per_round)
        + ")"
        + (" -- NOT an idle comparison, see below" if busy else "")
    )
    if not args.sequential:
        pairs = [
            a / b
            for ours, theirs in zip(runs["ours"], runs["torch"], strict=True)
            for a, b in zip(ours["epoch_seconds"], theirs["epoch_seconds"], strict=True)
        ]
        q1, q2, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
        print(
            f"epoch pairs (epoch e of each, run in turn): median {q2:.2f}x, quartiles "
            f"{q1:.2f}x-{q3:.2f}x, over {len(pairs)} pairs"
        )
    if None not in others and args.sequential:
        print(
            "cores' worth of CPU other processes used during foldconv's / PyTorch's runs: "
            + " / ".join(
                ", ".join(f"{run['others']:.2f}" for run in runs[who]) for who in ("ours", "torch")
            )
        )
    elif None not in others:  # one figure a round: both frameworks ran in it, in turn
        print(
            "cores' worth of CPU other processes used in each round: "
            + ", ".join(f"{run['others']:.2f}" for run in runs["ours"])
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
