"""Run under ``mpiexec -n N`` by tests/test_distributed.py: trains the configurations named
in a JSON file with ``train(..., distributed=True)`` and, on rank 0, writes each one's
per-step losses next to its run directory.

    mpiexec -n N python3 tests/distributed_job.py SPEC.json

SPEC: ``{"runs": [{"out": ..., "net": "plain"|"bn", "dtype": "float64", "seed": 0,
"batch_size": 24, "epochs": 2, "sync_batchnorm": false, "resume": null,
"fail": null | {"rank": 1, "call": 3, "how": "raise"|"exit"}}]}``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from foldconv import nn  # noqa: E402
from foldconv.data import ArrayDataset, load_dataset  # noqa: E402
from foldconv.trainer import TrainingInterrupted, train  # noqa: E402


def _rank() -> int:
    from mpi4py import MPI  # noqa: PLC0415

    return MPI.COMM_WORLD.Get_rank()


def digits(dtype: str) -> tuple[ArrayDataset, ArrayDataset]:
    """320 training and 90 test digits (8x8): the training set does not divide by 24."""
    tr, te = load_dataset("digits")
    return (
        ArrayDataset(tr.images[:320].astype(dtype), tr.labels[:320], classes=tr.classes),
        ArrayDataset(te.images[:90].astype(dtype), te.labels[:90], classes=te.classes),
    )


class Net(nn.Sequential):
    """conv 3x3 (+ BatchNorm) + ReLU + max-pool + linear, for 8x8 digits; ``fail`` makes
    one rank raise or exit at a given forward call (a failing rank, for the tests)."""

    def __init__(self, bn: bool, dtype: str, seed: int = 0, fail: dict | None = None) -> None:
        g = np.random.default_rng(seed)
        layers = [nn.Conv2d(1, 6, 3, padding=1, rng=g)]
        if bn:
            layers.append(nn.BatchNorm2d(6))
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10, rng=g)]
        super().__init__(*layers)
        self.to(dtype=np.dtype(dtype))
        self.calls = 0
        self.fail = fail

    def forward(self, x):
        self.calls += 1
        f = self.fail
        if f is not None and self.calls == f["call"] and f["rank"] == _rank():
            if f["how"] == "exit":
                os._exit(3)
            raise RuntimeError(f"test failure at forward call {self.calls}")
        return super().forward(x)


def run(spec: dict, distributed: bool = True) -> None:
    losses: list[float] = []
    net = Net(spec.get("net") == "bn", spec.get("dtype", "float64"), spec.get("seed", 0))
    net.fail = spec.get("fail")
    try:
        train(
            model=net,
            dataset=digits(spec.get("dtype", "float64")),
            epochs=spec.get("epochs", 2),
            batch_size=spec.get("batch_size", 24),
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="cosine",
            augment=spec.get("augment", True),
            seed=spec.get("seed", 0),
            out=spec["out"],
            resume=spec.get("resume"),
            progress=False,
            verbose=False,
            on_step=lambda r: losses.append(r["loss"]),
            distributed=distributed,
            # One process: its BatchNorm already sees the whole batch.
            sync_batchnorm=distributed and spec.get("sync_batchnorm", False),
        )
        status = "completed"
    except TrainingInterrupted:
        status = "interrupted"
    if not distributed or _rank() == 0:
        with open(os.path.join(spec["out"], "losses.json"), "w") as f:
            json.dump({"losses": losses, "status": status}, f)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    for one in job["runs"]:
        run(one)
