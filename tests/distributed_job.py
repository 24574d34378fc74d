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


def sync_batchnorm_check(out: str) -> None:
    """SyncBatchNorm2d over 7 images split row-wise over the ranks, float64: rank 0 saves
    the global input, upstream gradient, output, input gradient (gathered), the summed
    weight/bias gradients, the running statistics, and the input and weight gradients by
    central finite differences of the distributed loss sum(y * g)."""
    from foldconv.trainer.distributed import SyncBatchNorm, init_distributed

    comm = init_distributed()
    rows = slice(comm.rank, None, comm.size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 2, 2)) * 2 + 1
    g = rng.standard_normal(x.shape)
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    bn.weight.data[...] = [0.5, 1.5, -1.0]
    bn.bias.data[...] = [0.1, -0.2, 0.3]
    layer = SyncBatchNorm(bn, comm)
    y = layer(x[rows].copy())
    running = (bn.running_mean.copy(), bn.running_var.copy())
    dx = layer.backward(g[rows])
    dw = comm.allreduce_values(bn.weight.grad)
    db = comm.allreduce_values(bn.bias.grad)
    ys, dxs = comm.allgather(y), comm.allgather(dx)

    def loss(xv: np.ndarray) -> float:
        return float(comm.allreduce_values([np.sum(layer(xv[rows].copy()) * g[rows])])[0])

    h = 1e-6
    fd_x = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd_x[i] = (loss(xp) - loss(xm)) / (2 * h)
    fd_w = np.zeros(3)
    for c in range(3):
        w0 = bn.weight.data[c]
        bn.weight.data[c] = w0 + h
        lp = loss(x)
        bn.weight.data[c] = w0 - h
        lm = loss(x)
        bn.weight.data[c] = w0
        fd_w[c] = (lp - lm) / (2 * h)
    if comm.rank == 0:
        full_y, full_dx = np.empty_like(x), np.empty_like(x)
        for r in range(comm.size):
            full_y[r :: comm.size] = ys[r]
            full_dx[r :: comm.size] = dxs[r]
        np.savez(
            out,
            x=x,
            g=g,
            y=full_y,
            dx=full_dx,
            dw=dw,
            db=db,
            running_mean=running[0],
            running_var=running[1],
            fd_x=fd_x,
            fd_w=fd_w,
        )


if __name__ == "__main__":
    if sys.argv[1] == "syncbn":
        sync_batchnorm_check(sys.argv[2])
        sys.exit(0)
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    for one in job["runs"]:
        run(one)
