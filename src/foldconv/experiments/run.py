"""Run one of the paper's ablations: two arms, several seeds, a JSON of numbers and a plot.

Each experiment trains :func:`~foldconv.experiments.network.small_alexnet` twice per seed,
once per arm; the arms differ only in the property under test. For one seed both arms start
from the same weights (the initialisation draws from ``SeedSequence(seed, spawn_key=(1,))``
and no switch adds a parameter) and see the same mini-batches in the same order (the
loader is seeded with ``seed``), so per-seed differences between the arms are paired.

Training is plain mini-batch SGD with momentum and weight decay at a constant learning rate,
no augmentation (the paper's Figure 1 used no regularisation of any kind, and the ablations
should not be masked by augmentation). The training error is measured in eval mode (no
dropout) on a fixed sample of at most ``TRAIN_EVAL_SIZE`` training images, ``evals_per_epoch``
times per epoch; the test error on the whole test split after every epoch.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.experiments.network import small_alexnet
from foldconv.nn.module import Module

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "Experiment",
    "build_arm",
    "default_settings",
    "format_result",
    "plot_experiment",
    "run_experiment",
    "spread",
]

DATASETS = ("digits", "mnist", "cifar10")
TRAIN_EVAL_SIZE = 500
_EVAL_BATCH = 500


@dataclass(frozen=True)
class Experiment:
    """One ablation: a base network and the two values of the property under test.

    Attributes
    ----------
    name : the command-line name
    title : what is compared, for the plot
    claim : what the paper reports
    base : small_alexnet keyword arguments shared by both arms
    arms : (label, keyword arguments) per arm, the baseline first
    metric : the per-run number compared ('epochs_to_target' or 'final_test_error')
    paper_value : the paper's figure for the comparison
    """

    name: str
    title: str
    claim: str
    base: Mapping[str, Any]
    arms: tuple[tuple[str, Mapping[str, Any]], tuple[str, Mapping[str, Any]]]
    metric: str
    paper_value: float
    evals_per_epoch: int = 1
    defaults: Mapping[str, Any] = field(default_factory=dict)


# The ablations start from the full network of the paper (ReLU, LRN, overlapping pooling,
# dropout 0.5) and change one property, as the paper's Section 3 and 4.2 numbers do;
# Figure 1 compares ReLU and tanh in a network without any regularisation.
_FULL = dict(activation="relu", lrn=True, pool="overlapping", dropout=0.5)
EXPERIMENTS: dict[str, Experiment] = {
    "relu-vs-tanh": Experiment(
        name="relu-vs-tanh",
        title="ReLU against tanh: training error (the paper's Figure 1)",
        claim=(
            "A four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 six times "
            "faster than an equivalent network with tanh neurons (Figure 1)."
        ),
        base=dict(lrn=False, pool="overlapping", dropout=0.0),
        arms=(("tanh", dict(activation="tanh")), ("relu", dict(activation="relu"))),
        metric="epochs_to_target",
        paper_value=6.0,
        evals_per_epoch=8,
    ),
    "lrn": Experiment(
        name="lrn",
        title="Local response normalisation: test error",
        claim="Response normalisation reduces the top-1 error rate by 1.4% (Section 3.3).",
        base={k: v for k, v in _FULL.items() if k != "lrn"},
        arms=(("without LRN", dict(lrn=False)), ("with LRN", dict(lrn=True))),
        metric="final_test_error",
        paper_value=1.4,
    ),
    "overlapping-pool": Experiment(
        name="overlapping-pool",
        title="Overlapping (3x3/2) against non-overlapping (2x2/2) pooling: test error",
        claim="Overlapping pooling reduces the top-1 error rate by 0.4% (Section 3.4).",
        base={k: v for k, v in _FULL.items() if k != "pool"},
        arms=(
            ("2x2 stride 2", dict(pool="non-overlapping")),
            ("3x3 stride 2", dict(pool="overlapping")),
        ),
        metric="final_test_error",
        paper_value=0.4,
    ),
    "dropout": Experiment(
        name="dropout",
        title="Dropout 0.5 in the first two fully connected layers: over-fitting",
        claim=(
            "Without dropout the network exhibits substantial overfitting; dropout roughly "
            "doubles the number of iterations required to converge (Section 4.2)."
        ),
        base={k: v for k, v in _FULL.items() if k != "dropout"},
        arms=(("without dropout", dict(dropout=0.0)), ("dropout 0.5", dict(dropout=0.5))),
        metric="final_test_error",
        paper_value=float("nan"),  # the paper gives no single number
    ),
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    # Each default finishes in a few minutes on two cores (see docs/experiments.md). The
    # paper's batch of 128 at lr 0.01 makes too few steps on these small training sets:
    # smaller batches at a larger rate train in the few epochs we can afford.
    "digits": dict(epochs=20, subset=None, batch_size=32, lr=0.02),
    "mnist": dict(epochs=4, subset=None, batch_size=64, lr=0.02),
    "cifar10": dict(epochs=10, subset=10000, batch_size=64, lr=0.01),
}


def default_settings(name: str, dataset: str = "digits") -> dict[str, Any]:
    """The settings :func:`run_experiment` uses for ``name`` on ``dataset`` when not told.

    Returns
    -------
    dict
        ``epochs``, ``subset``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
        ``evals_per_epoch``, ``target_error`` and ``seeds``.
    """
    exp = _get(name)
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    # The paper's momentum and weight decay; batch size and learning rate per dataset.
    s = dict(
        momentum=0.9,
        weight_decay=5e-4,
        evals_per_epoch=exp.evals_per_epoch,
        target_error=0.25,
        init="default",
        seeds=[0, 1, 2],
    )
    s.update(_DEFAULTS[dataset])
    s.update(exp.defaults)
    return s


def _get(name: Any) -> Experiment:
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"name: expected one of {', '.join(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _load(
    dataset: str, data_dir: Any, subset: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float], list[float]]:
    """Normalised (train x, train y, test x, test y, mean, std); the subset is drawn once,
    independently of the run seeds, so every seed and arm trains on the same images."""
    from foldconv.data import Normalize, load_dataset  # noqa: PLC0415

    train, test = load_dataset(dataset, data_dir)
    x, y = np.asarray(train.images), np.asarray(train.labels)
    if subset is not None:
        if subset > len(x):
            raise ValueError(
                f"subset: expected at most the {len(x)} training images of {dataset}, got {subset}"
            )
        pick = np.sort(
            np.random.default_rng(np.random.SeedSequence(0)).permutation(len(x))[:subset]
        )
        x, y = x[pick], y[pick]
    # The training images' per-channel statistics, as the trainer normalises.
    mean = [float(v) for v in x.astype(np.float64).mean(axis=(0, 2, 3))]
    std = [float(v) if v > 1e-8 else 1.0 for v in x.astype(np.float64).std(axis=(0, 2, 3))]
    norm = Normalize(mean, std)
    tx = np.asarray(test.images)
    return (
        norm(x.astype(np.float32)),
        y.astype(np.int64),
        norm(tx.astype(np.float32)),
        np.asarray(test.labels).astype(np.int64),
        mean,
        std,
    )


def _error(model: Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, error rate) of ``model`` on (x, y) in eval mode."""
    from foldconv.functional.loss import cross_entropy  # noqa: PLC0415

    was = model.training
    model.eval()
    loss, wrong = 0.0, 0
    try:
        for i in range(0, len(x), _EVAL_BATCH):
            logits = model(x[i : i + _EVAL_BATCH])
            yb = y[i : i + _EVAL_BATCH]
            loss += float(cross_entropy(logits, yb, reduction="sum"))
            wrong += int((np.asarray(logits).argmax(axis=1) != yb).sum())
    finally:
        model.train(was)
    return loss / max(len(x), 1), wrong / max(len(x), 1)


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------
def build_arm(
    name: str,
    arm: int,
    seed: int,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    init: str = "default",
) -> Module:
    """The network of arm ``arm`` (0: baseline, 1: the other) of experiment ``name`` for ``seed``.

    Both arms of one seed get the same initial weights.
    """
    exp = _get(name)
    if arm not in (0, 1):
        raise ValueError(f"arm: expected 0 or 1, got {arm!r}")
    kwargs = dict(exp.base)
    kwargs.update(exp.arms[arm][1])
    kwargs["init"] = init
    return small_alexnet(
        num_classes,
        in_channels=in_channels,
        input_size=input_size,
        rng=np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))),
        dropout_rng=np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))),
        **kwargs,
    )


def _epochs_to(curve: Sequence[Mapping[str, float]], target: float) -> float | None:
    """First epoch (linearly interpolated between measurements) where the training error
    falls to ``target``; None if it never does."""
    prev = None
    for point in curve:
        e, err = point["epoch"], point["train_error"]
        if err <= target:
            if prev is None or prev[1] == err:
                return float(e)
            (e0, r0) = prev
            return float(e0 + (e - e0) * (r0 - target) / (r0 - err))
        prev = (e, err)
    return None


def _train_one(
    model: Module,
    data: tuple[np.ndarray, ...],
    seed: int,
    cfg: Mapping[str, Any],
    tick: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    from foldconv import nn, optim  # noqa: PLC0415
    from foldconv.data import ArrayDataset, DataLoader  # noqa: PLC0415

    x, y, tx, ty = data[:4]
    loader = DataLoader(ArrayDataset(x, y), batch_size=cfg["batch_size"], shuffle=True, seed=seed)
    # A fixed sample of the training set for the training error (the first images of a
    # seed-independent permutation), small enough to be measured several times an epoch.
    pick = np.random.default_rng(np.random.SeedSequence(0)).permutation(len(x))[:TRAIN_EVAL_SIZE]
    ex, ey = x[np.sort(pick)], y[np.sort(pick)]
    opt = optim.SGD(
        list(model.parameters()),
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    crit = nn.CrossEntropyLoss()
    n_batches = len(loader)
    # Measure after these batches of each epoch (evenly spaced, the last one included).
    k = min(cfg["evals_per_epoch"], n_batches)
    marks = {math.ceil((i + 1) * n_batches / k) for i in range(k)}
    _, err0 = _error(model, ex, ey)
    curve = [{"epoch": 0.0, "train_error": err0}]
    history: list[dict[str, Any]] = []
    diverged = None
    steps = 0
    t0 = time.perf_counter()
    for e in range(cfg["epochs"]):
        loader.set_epoch(e)
        loss_sum, wrong, seen = 0.0, 0, 0
        for b, (xb, yb) in enumerate(loader, start=1):
            logits = model(xb)
            loss = float(crit(logits, yb))
            if not math.isfinite(loss):
                diverged = {"epoch": e + 1, "batch": b, "loss": str(loss)}
                break
            opt.zero_grad()
            model.backward(crit.backward())
            opt.step()
            steps += 1
            loss_sum += loss * len(yb)
            wrong += int((np.asarray(logits).argmax(axis=1) != yb).sum())
            seen += len(yb)
            if b in marks:
                _, err = _error(model, ex, ey)
                curve.append({"epoch": e + b / n_batches, "train_error": err})
            tick({"epoch": e + 1, "loss": loss})
        if diverged is not None:
            break
        test_loss, test_err = _error(model, tx, ty)
        history.append(
            {
                "epoch": e + 1,
                "batch_loss": loss_sum / max(seen, 1),
                "batch_error": wrong / max(seen, 1),
                "train_error": curve[-1]["train_error"],
                "test_loss": test_loss,
                "test_error": test_err,
            }
        )
    last = history[-1] if history and diverged is None else {}
    final_train = last.get("train_error")
    final_test = last.get("test_error")
    return {
        "seed": seed,
        "diverged": diverged,
        "steps": steps,
        "history": history,
        "curve": curve,
        "epochs_to_target": None if diverged else _epochs_to(curve, cfg["target_error"]),
        "final_train_error": final_train,
        "final_test_error": final_test,
        "best_test_error": min((h["test_error"] for h in history), default=None),
        "generalisation_gap": (
            None if final_test is None or final_train is None else final_test - final_train
        ),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """``mean``, ``std`` (sample, ddof=1; 0 for one value), ``min``, ``max`` and ``n`` of the
    values that are not None; ``missing`` counts the None (runs that never got there)."""
    v = np.array([float(a) for a in values if a is not None], dtype=np.float64)
    missing = sum(a is None for a in values)
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "missing": missing}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
        "missing": missing,
    }


def _compare(exp: Experiment, runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The paired, per-seed comparison of the two arms."""
    a, b = runs
    if exp.metric == "epochs_to_target":
        ratios = [
            None
            if ra["epochs_to_target"] in (None, 0) or rb["epochs_to_target"] in (None, 0)
            else ra["epochs_to_target"] / rb["epochs_to_target"]
            for ra, rb in zip(a, b, strict=True)
        ]
        return {
            "what": f"speed-up: epochs to the target training error, {exp.arms[0][0]} / "
            f"{exp.arms[1][0]} (per seed)",
            "per_seed": ratios,
            "spread": spread(ratios),
            "paper": exp.paper_value,
        }

    def diff(key: str) -> list[float | None]:
        return [
            None if ra[key] is None or rb[key] is None else 100 * (ra[key] - rb[key])
            for ra, rb in zip(a, b, strict=True)
        ]

    out = {
        "what": f"test error reduction in percentage points, {exp.arms[0][0]} minus "
        f"{exp.arms[1][0]} (per seed; positive: {exp.arms[1][0]} is better)",
        "per_seed": diff("final_test_error"),
        "spread": spread(diff("final_test_error")),
        "paper": None if math.isnan(exp.paper_value) else exp.paper_value,
        "gap_reduction": {
            "what": "reduction of the generalisation gap (test error minus training error) "
            "in percentage points, per seed",
            "per_seed": diff("generalisation_gap"),
            "spread": spread(diff("generalisation_gap")),
        },
    }
    return out


# --------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def _check_real(name: str, value: Any, low: float, high: float, *, open_low: bool) -> float:
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if open_low else value >= low)
        and value <= high
    )
    if not ok:
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise ValueError(f"{name}: expected a number in {bound}, got {value!r}")
    return float(value)


def run_experiment(
    name: str,
    *,
    dataset: str = "digits",
    data_dir: str | os.PathLike | None = None,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    subset: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    evals_per_epoch: int | None = None,
    target_error: float | None = None,
    init: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train both arms of experiment ``name`` for every seed; write ``<name>.json`` and
    ``<name>.png`` into ``out``.

    Parameters
    ----------
    name : 'relu-vs-tanh', 'lrn', 'overlapping-pool' or 'dropout'
    dataset : 'digits' (bundled), 'mnist' or 'cifar10'
    data_dir : path, optional
        Where the mnist/cifar10 files are (as for :func:`foldconv.data.load_dataset`).
    seeds : int or sequence of int, default 3
        A count n means the seeds 0, ..., n - 1.
    epochs : int, optional
        Default: :func:`default_settings` for the dataset.
    subset : int, optional
        Train on this many training images (a fixed random subset, the same for every seed).
    batch_size, lr, momentum, weight_decay : optional
        SGD's settings; default momentum 0.9 and weight decay 5e-4 as in the paper, batch
        size and learning rate per dataset (:func:`default_settings`).
    evals_per_epoch : int, optional
        How often per epoch the training error is measured (default 8 for relu-vs-tanh,
        1 otherwise).
    target_error : float, default 0.25
        The training error whose first crossing relu-vs-tanh times.
    init : 'default' or 'he', optional
        The weights' initialisation (see :func:`small_alexnet`); default 'default'.
    out : path, optional
        Output directory; default ``runs/experiment-<name>-<dataset>-<time>``.
    progress : bool
        A tqdm bar over all the runs' batches.
    verbose : bool
        Print one line per finished run.

    Returns
    -------
    dict
        What ``<name>.json`` holds: ``experiment``, ``claim``, ``config``, ``arms`` (label,
        network settings, per-seed ``runs`` and the ``spread`` of each metric),
        ``comparison`` (the paired per-seed difference and its spread), ``files``,
        ``wall_seconds``.
    """
    exp = _get(name)
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    dataset = dataset.lower()
    cfg = default_settings(name, dataset)
    given = dict(
        epochs=epochs,
        subset=subset,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        evals_per_epoch=evals_per_epoch,
        target_error=target_error,
        init=init,
    )
    cfg.update({k: v for k, v in given.items() if v is not None})
    if seeds is not None:
        if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            cfg["seeds"] = list(range(_check_int("seeds", seeds, 1)))
        elif isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0:
            cfg["seeds"] = [_check_int("seeds", s, 0) for s in seeds]
            if len(set(cfg["seeds"])) != len(cfg["seeds"]):
                raise ValueError(f"seeds: expected distinct seeds, got {list(seeds)!r}")
        else:
            raise ValueError(f"seeds: expected a positive count or a list of seeds, got {seeds!r}")
    cfg["epochs"] = _check_int("epochs", cfg["epochs"], 1)
    cfg["batch_size"] = _check_int("batch_size", cfg["batch_size"], 1)
    cfg["evals_per_epoch"] = _check_int("evals_per_epoch", cfg["evals_per_epoch"], 1)
    if cfg["subset"] is not None:
        cfg["subset"] = _check_int("subset", cfg["subset"], 1)
    cfg["lr"] = _check_real("lr", cfg["lr"], 0.0, math.inf, open_low=True)
    cfg["momentum"] = _check_real("momentum", cfg["momentum"], 0.0, 0.999, open_low=False)
    cfg["weight_decay"] = _check_real("weight_decay", cfg["weight_decay"], 0.0, 1.0, open_low=False)
    cfg["target_error"] = _check_real("target_error", cfg["target_error"], 0.0, 1.0, open_low=True)

    if cfg["init"] not in ("default", "he"):
        raise ValueError(f"init: expected 'default' or 'he', got {cfg['init']!r}")
    x, y, tx, ty, mean, std = _load(dataset, data_dir, cfg["subset"])
    if x.shape[2] != x.shape[3] or x.shape[2] % 4:
        raise ValueError(
            f"dataset: the experiments need square images with a side divisible by 4, "
            f"got {x.shape[2]}x{x.shape[3]}"
        )
    num_classes = int(max(y.max(), ty.max())) + 1
    shape = dict(num_classes=num_classes, in_channels=int(x.shape[1]), input_size=int(x.shape[2]))
    cfg.update(
        dataset=dataset,
        data_dir=None if data_dir is None else str(data_dir),
        train_size=int(len(x)),
        test_size=int(len(tx)),
        train_eval_size=int(min(len(x), TRAIN_EVAL_SIZE)),
        mean=mean,
        std=std,
        **shape,
    )
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (
        Path(out) if out is not None else Path("runs") / f"experiment-{name}-{dataset}-{stamp}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm  # noqa: PLC0415

    n_batches = -(-len(x) // cfg["batch_size"])
    total = 2 * len(cfg["seeds"]) * cfg["epochs"] * n_batches
    bar = tqdm(total=total, desc=name, unit="batch", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    runs: list[list[dict[str, Any]]] = [[], []]
    try:
        for seed in cfg["seeds"]:
            for arm in (0, 1):
                label = exp.arms[arm][0]
                model = build_arm(name, arm, seed, init=cfg["init"], **shape)

                def tick(info: dict[str, Any], label: str = label, seed: int = seed) -> None:
                    bar.update(1)
                    if progress:
                        bar.set_postfix(
                            arm=label, seed=seed, epoch=info["epoch"], loss=f"{info['loss']:.3f}"
                        )

                r = _train_one(model, (x, y, tx, ty), seed, cfg, tick)
                runs[arm].append(r)
                if r["diverged"] is not None:
                    # Keep the bar's total honest: the skipped batches will not come.
                    bar.update(cfg["epochs"] * n_batches - r["steps"])
                if verbose:
                    bar.clear()
                    print(_run_line(exp, label, r, cfg), flush=True)
    finally:
        bar.close()

    result: dict[str, Any] = {
        "experiment": name,
        "title": exp.title,
        "claim": exp.claim,
        "config": cfg,
        "arms": [],
        "comparison": _compare(exp, runs),
    }
    for arm in (0, 1):
        label, kwargs = exp.arms[arm]
        net = dict(exp.base)
        net.update(kwargs)
        rs = runs[arm]
        result["arms"].append(
            {
                "label": label,
                "network": net,
                "runs": rs,
                "spread": {
                    key: spread([r[key] for r in rs])
                    for key in (
                        "epochs_to_target",
                        "final_train_error",
                        "final_test_error",
                        "best_test_error",
                        "generalisation_gap",
                    )
                },
            }
        )
    result["wall_seconds"] = time.perf_counter() - t0
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    result["files"] = {"json": str(json_path), "png": str(png_path)}
    from foldconv.trainer import atomic_write_bytes  # noqa: PLC0415

    atomic_write_bytes(png_path, plot_experiment(result))
    atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    return result


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _run_line(exp: Experiment, label: str, r: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    head = f"{exp.name} [{label}, seed {r['seed']}]"
    if r["diverged"] is not None:
        d = r["diverged"]
        return f"{head}: diverged (loss {d['loss']}) at epoch {d['epoch']}, batch {d['batch']}"
    ett = r["epochs_to_target"]
    reach = (
        f"{ett:.2f} epochs to {100 * cfg['target_error']:.0f}% training error"
        if ett is not None
        else f"never at {100 * cfg['target_error']:.0f}% training error"
    )
    return (
        f"{head}: test error {_pct(r['final_test_error'])}, training error "
        f"{_pct(r['final_train_error'])}, {reach} ({r['seconds']:.1f} s)"
    )


def format_result(result: Mapping[str, Any]) -> str:
    """A few lines of text: per arm the spread of the compared metric, then the comparison."""
    cfg = result["config"]
    lines = [
        f"{result['experiment']} on {cfg['dataset']} ({cfg['train_size']} training images, "
        f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, "
        f"seeds {', '.join(map(str, cfg['seeds']))})"
    ]
    for arm in result["arms"]:
        s = arm["spread"]
        ett = s["epochs_to_target"]
        t = s["final_test_error"]
        g = s["generalisation_gap"]
        text = f"  {arm['label']:>16}: "
        if result["experiment"] == "relu-vs-tanh":
            text += (
                f"epochs to {100 * cfg['target_error']:.0f}% training error "
                + (
                    f"mean {ett['mean']:.3f} [{ett['min']:.3f}, {ett['max']:.3f}]"
                    if ett["n"]
                    else "never reached"
                )
                + (
                    f" ({ett['missing']} runs never reached it)"
                    if ett["missing"] and ett["n"]
                    else ""
                )
                + "; "
            )
        text += (
            f"test error mean {_pct(t['mean'])} [{_pct(t['min'])}, {_pct(t['max'])}]"
            f", gap (test - train) mean {_pct(g['mean'])}"
        )
        lines.append(text)
    c = result["comparison"]
    s = c["spread"]
    if s["n"]:
        lines.append(
            f"  {c['what']}: mean {s['mean']:.3f}, std {s['std']:.3f}, min {s['min']:.3f}, "
            f"max {s['max']:.3f} over {s['n']} seeds"
            + (f" (the paper: {c['paper']:g})" if c.get("paper") is not None else "")
        )
    else:
        lines.append(f"  {c['what']}: not measurable (no seed got there in both arms)")
    if "gap_reduction" in c and c["gap_reduction"]["spread"]["n"]:
        s = c["gap_reduction"]["spread"]
        lines.append(
            f"  {c['gap_reduction']['what']}: mean {s['mean']:.3f}, min {s['min']:.3f}, "
            f"max {s['max']:.3f}"
        )
    lines.append(f"  files: {result['files']['json']}, {result['files']['png']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the plot
# --------------------------------------------------------------------------------------------
def plot_experiment(result: Mapping[str, Any]) -> bytes:
    """The PNG of an experiment: training error against epochs (left; each seed thin, the
    mean of the seeds thick) and test error after each epoch (right, on a log scale; mean,
    with the band from the best to the worst seed). Returns the PNG's bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    cfg = result["config"]
    fig = Figure(figsize=(11, 4.2), dpi=90)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.22)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = ("tab:red", "tab:blue")
    for arm, color in zip(result["arms"], colors, strict=True):
        curves = [r["curve"] for r in arm["runs"]]
        for c in curves:
            left.plot(
                [p["epoch"] for p in c],
                [100 * p["train_error"] for p in c],
                color=color,
                alpha=0.3,
                lw=0.8,
            )
        n = min(len(c) for c in curves)
        if n:
            ep = [p["epoch"] for p in curves[0][:n]]
            mean = np.mean([[100 * p["train_error"] for p in c[:n]] for c in curves], axis=0)
            left.plot(ep, mean, color=color, lw=2, label=arm["label"])
        hist = [r["history"] for r in arm["runs"]]
        m = min(len(h) for h in hist)
        if m:
            ep = [h["epoch"] for h in hist[0][:m]]
            test = np.array([[100 * h["test_error"] for h in hs[:m]] for hs in hist])
            right.plot(ep, test.mean(axis=0), "o-", color=color, lw=2, label=arm["label"])
            right.fill_between(ep, test.min(axis=0), test.max(axis=0), color=color, alpha=0.2)
    if result["experiment"] == "relu-vs-tanh":
        left.axhline(100 * cfg["target_error"], color="k", ls="--", lw=1, label="target")
    left.set_xlabel("epoch")
    left.set_ylabel("training error (%)")
    left.set_title(f"Training error ({cfg['train_eval_size']} training images, eval mode)")
    right.set_xlabel("epoch")
    right.set_ylabel("test error (%)")
    right.set_title(f"Test error ({cfg['test_size']} images; band: min-max over seeds)")
    for ax in (left, right):
        # A log scale shows the differences of a few tenths of a point at the end of
        # training that a linear one squeezes onto the axis (when no error is zero).
        lows = [float(np.min(line.get_ydata())) for line in ax.get_lines() if len(line.get_ydata())]
        if lows and min(lows) > 0 and ax is right:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: PLC0415

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(
        f"{result['title']}\n{cfg['dataset']}, {cfg['train_size']} training images, "
        f"seeds {', '.join(map(str, cfg['seeds']))}, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
        f"{cfg['init']} init",
        fontsize=10,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
