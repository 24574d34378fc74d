"""Training, evaluation and prediction: the engine behind ``foldconv train``.

:func:`train` builds a model and its data pipeline from names (or takes a model and
datasets), trains it with a progress bar, and writes into its output directory:

- ``metrics.jsonl``: one JSON record per epoch (losses, accuracies, learning rate, time);
- ``summary.json``: ``test_accuracy`` (a fraction), ``epochs``, ``wall_seconds``,
  ``images_per_second`` and the full ``config``;
- ``best.safetensors`` and ``last.safetensors``: the weights under PyTorch's names
  (``torch.nn.Module.load_state_dict(safetensors.torch.load_file(path))`` reads them), with
  the checkpoint's description as JSON in the file's metadata under ``"foldconv"``;
- ``best.state-<id>.safetensors`` and ``last.state-<id>.safetensors``: what resuming needs
  besides the weights (optimizer arrays, and as JSON metadata the optimizer's groups, the
  scheduler, every random generator's state, the position in the epoch and the history);
  the weights file names its state file;
- ``loss.png``, ``accuracy.png`` and ``filters.png`` (the first convolution's filters, as
  in Figure 3 of the AlexNet paper).

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the old one with :func:`os.replace`. A state file gets a fresh
name and is written before the weights file that points at it, so a kill at any moment
leaves a previous, consistent checkpoint.

Exact resumption: the data order of epoch ``e`` and the augmentation of its batch ``b``
depend only on ``(seed, e, b)`` (see :class:`foldconv.data.DataLoader`), and the
checkpoint holds the weights, buffers, optimizer and scheduler state and the state of the
model's random generators (dropout) at a step boundary, so a resumed run computes the same
losses, step for step, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.backend import to_device
from foldconv.nn.module import Module

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainingDiverged",
    "TrainingInterrupted",
    "default_config",
    "evaluate",
    "load_checkpoint",
    "predict",
    "train",
]

CHECKPOINT_FORMAT = "foldconv-checkpoint/1"
STATE_FORMAT = "foldconv-train-state/1"

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "multistep", "cosine", "plateau")

# Hyper-parameters per model; (model, dataset) entries refine them. The digits recipe was
# measured on a 2-core machine: see the README / BENCHMARKS.md.
_MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "lenet5": dict(
        epochs=10,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
    "alexnet": dict(
        epochs=30,
        batch_size=128,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="plateau",
        augment=True,
    ),
    "vgg": dict(
        epochs=30,
        batch_size=64,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
    "resnet18": dict(
        epochs=30,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
}
_MODEL_RECIPES["alexnet_paper"] = _MODEL_RECIPES["alexnet"]
_MODEL_RECIPES["vgg11"] = _MODEL_RECIPES["vgg16"] = _MODEL_RECIPES["vgg"]
_PAIR_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("lenet5", "digits"): dict(epochs=10, batch_size=32, lr=0.05),
    ("lenet5", "mnist"): dict(epochs=12, batch_size=64, lr=0.05),
}
_ADAM_LR = 1e-3


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint stays.

    Attributes
    ----------
    epoch, step : int
        1-based epoch and global optimizer step at which the loss was not finite.
    summary : dict
        The summary written to ``summary.json`` (``status`` = ``"diverged"``).
    """

    def __init__(self, message: str, epoch: int, step: int, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.summary = summary


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved first (``checkpoint``)."""

    def __init__(self, message: str, checkpoint: Path | None, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.summary = summary


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to a temporary file in the same directory, which is flushed and fsynced
    and then renamed over ``path`` (:func:`os.replace`, atomic on POSIX and Windows). On
    any failure the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _generators(model: Module) -> dict[str, np.random.Generator]:
    """The model's random generators (dropout's) by the first attribute path reaching each."""
    found: dict[str, np.random.Generator] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, np.random.Generator) and id(value) not in seen:
                seen.add(id(value))
                found[f"{mod_name}.{attr}" if mod_name else attr] = value
    return found


def _rng_states(model: Module) -> dict[str, Any]:
    from foldconv.nn import init  # noqa: PLC0415

    states = {name: g.bit_generator.state for name, g in _generators(model).items()}
    return {"model": states, "global": init._global_rng.bit_generator.state}


def _set_rng_states(model: Module, states: Mapping[str, Any]) -> None:
    from foldconv.nn import init  # noqa: PLC0415

    gens = _generators(model)
    saved = states.get("model", {})
    missing = sorted(set(gens) - set(saved))
    if missing:
        raise ValueError(
            "checkpoint: the model's random generators do not match the checkpoint "
            f"(no state for {', '.join(missing)})"
        )
    for name, g in gens.items():
        g.bit_generator.state = saved[name]
    if "global" in states:
        init._global_rng.bit_generator.state = states["global"]


def _export_array(a: Any) -> np.ndarray:
    """A contiguous host copy, floats as float32 (float64 kept: exact resume in float64)."""
    a = np.asarray(to_device(a, "cpu"))
    dtype = np.float32 if a.dtype.kind == "f" and a.dtype != np.float64 else a.dtype
    # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (BatchNorm's
    # num_batches_tracked) into shape (1,).
    return np.array(a, dtype=dtype, order="C", copy=True)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def default_config(model: str = "lenet5", dataset: str = "digits") -> dict[str, Any]:
    """The recipe :func:`train` uses for ``model`` on ``dataset`` when not told otherwise.

    Returns
    -------
    dict
        ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``, ``optimizer``,
        ``scheduler`` and ``augment``.
    """
    base = dict(_MODEL_RECIPES.get(model, _MODEL_RECIPES["lenet5"]))
    base.update(_PAIR_RECIPES.get((model, dataset), {}))
    return base


def _check_hparams(cfg: dict[str, Any]) -> None:
    if not _is_int(cfg["epochs"]) or cfg["epochs"] < 1:
        raise ValueError(f"epochs: expected a positive int, got {cfg['epochs']!r}")
    if not _is_int(cfg["batch_size"]) or cfg["batch_size"] < 1:
        raise ValueError(f"batch_size: expected a positive int, got {cfg['batch_size']!r}")
    if not _is_real(cfg["lr"]) or not math.isfinite(cfg["lr"]) or cfg["lr"] <= 0:
        raise ValueError(f"lr: expected a positive number, got {cfg['lr']!r}")
    for key in ("momentum", "weight_decay", "label_smoothing"):
        v = cfg[key]
        if not _is_real(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{key}: expected a non-negative number, got {v!r}")
    if cfg["momentum"] >= 1:
        raise ValueError(f"momentum: expected a number in [0, 1), got {cfg['momentum']!r}")
    if cfg["label_smoothing"] > 1:
        raise ValueError(
            f"label_smoothing: expected a number in [0, 1], got {cfg['label_smoothing']!r}"
        )
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(
            f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}"
        )
    if cfg["scheduler"] not in SCHEDULERS:
        raise ValueError(
            f"scheduler: expected one of {', '.join(SCHEDULERS)} (or None), "
            f"got {cfg['scheduler']!r}"
        )
    if not _is_int(cfg["seed"]) or cfg["seed"] < 0:
        raise ValueError(f"seed: expected a non-negative int, got {cfg['seed']!r}")


def _check_device(device: Any) -> str:
    if not isinstance(device, str) or not (
        device == "cpu" or device == "cuda" or device.startswith("cuda:")
    ):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device != "cpu":
        from foldconv.backend import _cupy  # noqa: PLC0415

        if _cupy() is None:
            raise ValueError(
                f"device: {device!r} needs CuPy and a CUDA GPU; CuPy/GPU support is not "
                "available in this installation yet (pip install foldconv[cuda]); "
                "use --device cpu"
            )
    return device


# --------------------------------------------------------------------------------------------
# data pipeline
# --------------------------------------------------------------------------------------------
def _target_size(model: Module, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) the model is fed: its fixed input size, or the images' size raised to the
    smallest size its layers accept."""
    fixed = getattr(model, "input_size", None)
    if fixed is not None:
        return (int(fixed), int(fixed))
    low = int(getattr(model, "min_input_size", 1) or 1)
    return (max(image_hw[0], low), max(image_hw[1], low))


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    x = np.asarray(images, dtype=np.float64)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    std = np.where(std > 1e-8, std, 1.0)
    return [float(m) for m in mean], [float(s) for s in std]


def _build_transforms(
    dataset_name: str,
    image_hw: tuple[int, int],
    target_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
) -> tuple[Any, Any]:
    """(train transform, eval transform) as foldconv.data.transforms pipelines.

    Both resize to the model's size (bilinear) and normalise with the training set's
    per-channel mean and std; training adds a random crop after zero padding of 1/14 of
    the side (2 pixels at 28) for digits and custom data, 1/8 (4 at 32) with horizontal
    flips for natural images (cifar10, folder).
    """
    from foldconv.data.transforms import (  # noqa: PLC0415
        Compose,
        Normalize,
        RandomCrop,
        RandomHorizontalFlip,
        Resize,
    )

    pre = [Resize(tuple(target_hw))] if tuple(target_hw) != tuple(image_hw) else []
    norm = Normalize(list(mean), list(std))
    train_t = list(pre)
    if augment:
        natural = dataset_name in ("cifar10", "folder")
        side = min(target_hw)
        pad = max(1, side // 8) if natural else max(1, side // 14)
        train_t.append(RandomCrop(tuple(target_hw), padding=pad))
        if natural:
            train_t.append(RandomHorizontalFlip())
    train_t.append(norm)
    return Compose(train_t), Compose(pre + [norm])


def _batches(loader: Any, epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
    """Batches ``start, start + 1, ...`` of ``epoch``, exactly as the loader makes them."""
    order = loader.indices(epoch)
    bs = loader.batch_size
    for b in range(start, len(loader)):
        x, y = loader.dataset[order[b * bs : (b + 1) * bs]]
        if loader.transform is not None:
            x = loader.transform(x, loader.batch_generator(epoch, b))
        yield x, y


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _resolve_checkpoint(path: str | os.PathLike, prefer: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for tag in (prefer, "last" if prefer == "best" else "best"):
            cand = p / f"{tag}.safetensors"
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"checkpoint: no best.safetensors or last.safetensors in directory {p}"
        )
    if not p.exists():
        raise FileNotFoundError(f"checkpoint: {p} does not exist")
    return p


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint: cannot read {path}: {e}") from e
    return arrays, meta


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights and the description (``"foldconv"`` metadata) of a checkpoint file.

    Raises
    ------
    ValueError
        If the file is not a foldconv checkpoint.
    """
    p = Path(path)
    weights, meta = _read_safetensors(p)
    if meta.get("format") != CHECKPOINT_FORMAT or "foldconv" not in meta:
        raise ValueError(
            f"checkpoint: {p} is not a foldconv checkpoint (expected metadata format "
            f"{CHECKPOINT_FORMAT!r}, got {meta.get('format')!r})"
        )
    return weights, json.loads(meta["foldconv"])


def load_checkpoint(
    path: str | os.PathLike, model: Module | None = None
) -> tuple[Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights.

    Parameters
    ----------
    path : a ``.safetensors`` checkpoint, or a run directory (its ``best.safetensors``)
    model : Module, optional
        The network to load into; default: built by name from the checkpoint's description
        (models from :mod:`foldconv.models`).

    Returns
    -------
    model : Module, in eval mode
    info : dict
        The checkpoint's description: ``model``, ``num_classes``, ``classes``,
        ``in_channels``, ``input_hw``, ``image_hw``, ``mean``, ``std``, ``epoch``,
        ``step``, ``test_accuracy``, ``config``, ...
    """
    p = _resolve_checkpoint(path, "best")
    weights, info = read_checkpoint(p)
    if model is None:
        from foldconv.models import MODELS, get_model  # noqa: PLC0415

        name = info.get("model")
        if name not in MODELS:
            raise ValueError(
                f"checkpoint: {p} holds a custom model {name!r}; pass model= to load it"
            )
        kwargs = info.get("arch_kwargs") or {"in_channels": info["in_channels"]}
        model = get_model(name, info["num_classes"], **kwargs)
    model.load_state_dict(weights)
    model.eval()
    info["path"] = str(p)
    return model, info


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    # Fixed margins: tight_layout costs more than the rest of the drawing.
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.9)
    return fig


def filter_mosaic(weight: np.ndarray, border: int = 1) -> np.ndarray:
    """Tile a first-layer weight (C_out, C_in, kh, kw) into one image, each filter
    min-max scaled to [0, 1] (RGB when C_in == 3, the first input channel otherwise).

    Returns
    -------
    ndarray, shape (H, W) or (H, W, 3)
    """
    w = np.asarray(to_device(weight, "cpu"), dtype=np.float64)
    out_c, in_c, kh, kw = w.shape
    rgb = in_c == 3
    tiles = w.transpose(0, 2, 3, 1) if rgb else w[:, 0]
    lo = tiles.reshape(out_c, -1).min(axis=1)
    hi = tiles.reshape(out_c, -1).max(axis=1)
    shape = (out_c,) + (1,) * (tiles.ndim - 1)
    tiles = (tiles - lo.reshape(shape)) / np.maximum(hi - lo, 1e-12).reshape(shape)
    cols = int(math.ceil(math.sqrt(out_c * 2)))  # wider than tall, like the paper's figure
    cols = min(cols, out_c)
    rows = int(math.ceil(out_c / cols))
    h = rows * (kh + border) + border
    wd = cols * (kw + border) + border
    canvas = np.ones((h, wd, 3) if rgb else (h, wd))
    for i in range(out_c):
        r, c = divmod(i, cols)
        top, left = border + r * (kh + border), border + c * (kw + border)
        canvas[top : top + kh, left : left + kw] = tiles[i]
    return canvas


def _write_png(path: Path, fig: Any) -> None:
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def write_plots(out: Path, history: Sequence[Mapping[str, Any]], model: Module) -> list[Path]:
    """``loss.png``, ``accuracy.png`` and ``filters.png`` in ``out``; returns their paths."""
    written = []
    epochs = [r["epoch"] for r in history]
    if history:
        fig = _figure(6, 4)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
        ax.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title("Loss")
        ax.grid(alpha=0.3)
        ax.legend()
        _write_png(out / "loss.png", fig)
        written.append(out / "loss.png")
        fig = _figure(6, 4)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
        ax.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        _write_png(out / "accuracy.png", fig)
        written.append(out / "accuracy.png")
    first = next(
        (
            m
            for _, m in model.named_modules()
            if getattr(getattr(m, "weight", None), "data", None) is not None
            and m.weight.data.ndim == 4
        ),
        None,
    )
    if first is not None:
        mosaic = filter_mosaic(first.weight.data)
        out_c, in_c, kh, kw = first.weight.data.shape
        fig = _figure(max(4.0, mosaic.shape[1] / 12), max(2.5, mosaic.shape[0] / 12 + 0.6))
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88)
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(mosaic, cmap=None if mosaic.ndim == 3 else "gray", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"First-layer filters ({out_c} of {in_c}x{kh}x{kw})")
        _write_png(out / "filters.png", fig)
        written.append(out / "filters.png")
    return written


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _evaluate_loader(
    model: Module, loader: Any, device: str, num_classes: int
) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, confusion matrix [true, predicted]) over a loader, eval mode."""
    from foldconv.functional.loss import cross_entropy  # noqa: PLC0415

    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    try:
        for x, y in _batches(loader, 0, 0):
            xd = to_device(x, device) if device != "cpu" else x
            yd = to_device(y, device) if device != "cpu" else y
            logits = model(xd)
            loss_sum += float(cross_entropy(logits, yd, reduction="sum"))
            pred = np.asarray(to_device(logits.argmax(axis=1), "cpu"))
            correct += int((pred == y).sum())
            seen += len(y)
            np.add.at(confusion, (np.asarray(y), pred), 1)
    finally:
        model.train(was_training)
    if seen == 0:
        return float("nan"), float("nan"), confusion
    return loss_sum / seen, correct / seen, confusion


# --------------------------------------------------------------------------------------------
# the training run
# --------------------------------------------------------------------------------------------
class _Interrupts:
    """SIGINT handling that never lands inside an update: during a critical section a
    Ctrl-C is remembered and raised as KeyboardInterrupt when the section ends."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.critical:
            self.pending = True
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                self._installed = False

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


def _make_optimizer(name: str, params: list[Any], cfg: Mapping[str, Any]) -> Any:
    from foldconv import optim  # noqa: PLC0415

    if name == "sgd":
        return optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    if name == "adam":
        return optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _make_scheduler(name: str, optimizer: Any, epochs: int) -> Any:
    from foldconv.optim import lr_scheduler as S  # noqa: PLC0415, N812

    if name == "none":
        return None
    if name == "step":
        return S.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "multistep":
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        return S.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=epochs)
    # AlexNet: divide by 10 when the validation error stops improving.
    return S.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=2)


def _module_name(model: Module) -> str:
    """A model's registry name when a :mod:`foldconv.models` builder made it, else its class."""
    from foldconv.models import MODELS  # noqa: PLC0415

    arch = getattr(model, "arch", None)
    return arch if arch in MODELS else type(model).__name__


def _norm_model(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _norm_dataset(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _check_resume_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Only ``epochs`` may differ from the checkpoint's configuration when resuming."""
    for key, value in overrides.items():
        if key == "epochs" or value is None:
            continue
        saved = cfg.get(key)
        if key == "scheduler" and isinstance(value, str) and value.lower() == "none":
            value = "none"
        same = (
            value.lower() == saved.lower()
            if isinstance(value, str) and isinstance(saved, str)
            else value == saved
        )
        if not same:
            raise ValueError(
                f"{key}: cannot change on resume (the checkpoint has {saved!r}, got "
                f"{value!r}); only epochs may be changed"
            )


def train(
    model: str | Module | None = None,
    dataset: str | tuple[Any, Any] | None = None,
    data_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    scheduler: str | None = None,
    seed: int | None = None,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    augment: bool | None = None,
    label_smoothing: float | None = None,
    download: bool = False,
    verbose: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train a classifier and write metrics, checkpoints and plots into ``out``.

    Every hyper-parameter left as None takes the recipe of :func:`default_config` for
    this model and dataset (or, when resuming, the checkpoint's value).

    Parameters
    ----------
    model : str or Module, default 'lenet5'
        A name from :mod:`foldconv.models` (built with the dataset's class and channel
        counts, initialised from ``seed``), or a Module mapping (N, C, H, W) to
        (N, num_classes) logits.
    dataset : str or (train, test), default 'digits'
        ``'digits'``, ``'mnist'``, ``'cifar10'`` or ``'folder'`` (see
        :func:`foldconv.data.load_dataset`), or two ArrayDatasets.
    data_dir : path, optional
        Where the dataset's files are.
    epochs, batch_size, lr, momentum, weight_decay : numbers, optional
    optimizer : 'sgd', 'adam' or 'adamw', optional
    scheduler : None/'none', 'step', 'multistep', 'cosine' or 'plateau', optional
        Stepped once per epoch ('plateau' on the test error).
    seed : int, default 0
        Seeds the weights, the data order, the augmentation and dropout.
    device : 'cpu' or 'cuda'
        'cuda' needs CuPy.
    out : path, optional
        Output directory; default ``runs/<model>-<dataset>-<timestamp>`` (the resumed
        directory when resuming).
    resume : path, optional
        A run directory (or its ``last.safetensors``) to continue exactly where it
        stopped. Only ``epochs`` may differ from the checkpoint's configuration: a new
        total re-plans a cosine/step/multistep schedule over it (the learning rate becomes
        the new plan's value for the epochs done).
    progress : bool
        Show a tqdm bar per epoch (loss, accuracy, images/s).
    augment : bool, optional
        Random crops (and flips for natural images) during training.
    label_smoothing : float, optional (default 0)
    download : bool
        Let mnist/cifar10 fetch missing files.
    verbose : bool
        Print a line after each epoch.
    on_step : callable, optional
        Called after every optimizer step with ``{'epoch', 'step', 'batch', 'loss',
        'accuracy', 'lr'}`` (epoch and step 1-based).

    Returns
    -------
    dict
        The summary also written to ``summary.json``: ``status``, ``test_accuracy``,
        ``best_test_accuracy``, ``best_epoch``, ``epochs``, ``steps``, ``wall_seconds``,
        ``images_per_second``, ``train_loss``, ``train_accuracy``, ``out``,
        ``checkpoints`` and ``config``.

    Raises
    ------
    TrainingDiverged
        When a loss is NaN or infinite (the message names the epoch and step).
    TrainingInterrupted
        On Ctrl-C, after saving ``last.safetensors``.
    """
    run = _Run(
        model=model,
        dataset=dataset,
        data_dir=data_dir,
        overrides=dict(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            optimizer=optimizer,
            scheduler=scheduler,
            seed=seed,
            augment=augment,
            label_smoothing=label_smoothing,
        ),
        device=device,
        out=out,
        resume=resume,
        progress=progress,
        download=download,
        verbose=verbose,
        on_step=on_step,
    )
    return run.run()


class _Run:
    """One call of :func:`train`: set-up, the loop, checkpoints and reports."""

    def __init__(
        self,
        *,
        model: str | Module | None,
        dataset: str | tuple[Any, Any] | None,
        data_dir: Any,
        overrides: dict[str, Any],
        device: str,
        out: Any,
        resume: Any,
        progress: bool,
        download: bool,
        verbose: bool,
        on_step: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.device = _check_device(device)
        self.progress = bool(progress)
        self.verbose = bool(verbose)
        self.on_step = on_step
        if on_step is not None and not callable(on_step):
            raise TypeError(f"on_step: expected a callable, got {type(on_step).__name__}")
        if model is not None and not isinstance(model, (str, Module)):
            raise TypeError(f"model: expected a model name or a Module, got {type(model).__name__}")

        resume_info: dict[str, Any] | None = None
        resume_weights: dict[str, np.ndarray] | None = None
        if resume is not None:
            ckpt = _resolve_checkpoint(resume, "last")
            resume_weights, resume_info = read_checkpoint(ckpt)
            self.resume_path = ckpt
        from foldconv.models import MODELS, available_models  # noqa: PLC0415

        model_name = _norm_model(model) if isinstance(model, str) else None
        ds_name = _norm_dataset(dataset) if isinstance(dataset, str) else None
        if dataset is not None and not isinstance(dataset, str):
            if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
                raise TypeError(
                    "dataset: expected a dataset name or a (train, test) pair of datasets, "
                    f"got {type(dataset).__name__}"
                )
            ds_name = "custom"
        # -- configuration: recipe < checkpoint < explicit arguments ------------------------
        if resume_info is not None:
            cfg = dict(resume_info["config"])
            if model is None:
                if cfg["model"] not in MODELS:
                    raise ValueError(
                        f"model: the checkpoint holds a custom model {cfg['model']!r}; pass "
                        "the same Module as model= to resume it"
                    )
                model_name = cfg["model"]
            elif model_name is not None and model_name != cfg["model"]:
                raise ValueError(
                    f"model: the checkpoint trains {cfg['model']!r}; cannot resume it as {model!r}"
                )
            if ds_name is None:
                ds_name = cfg["dataset"]
            elif ds_name != cfg["dataset"]:
                raise ValueError(
                    f"dataset: the checkpoint trains on {cfg['dataset']!r}; cannot resume on "
                    f"{ds_name!r}"
                )
            _check_resume_overrides(cfg, overrides)
            if data_dir is None:
                data_dir = cfg.get("data_dir")
            else:
                cfg["data_dir"] = str(data_dir)
            if overrides.get("epochs") is not None:
                cfg["epochs"] = overrides["epochs"]
        else:
            if model is None:
                model_name = "lenet5"
            if ds_name is None:
                ds_name = "digits"
            if model_name is not None and model_name not in MODELS:
                raise ValueError(
                    f"model: expected one of {', '.join(available_models())}, got {model!r}"
                )
            cfg = default_config(model_name or "", ds_name)
            cfg.update(seed=0, label_smoothing=0.0)
            for k, v in overrides.items():
                if v is not None:
                    cfg[k] = v
            if str(cfg["optimizer"]).lower() in ("adam", "adamw") and overrides.get("lr") is None:
                cfg["lr"] = _ADAM_LR
            cfg["model"] = model_name or _module_name(model)
            cfg["dataset"] = ds_name
            cfg["data_dir"] = None if data_dir is None else str(data_dir)
        if cfg["scheduler"] is None:
            cfg["scheduler"] = "none"
        for key in ("optimizer", "scheduler"):
            if isinstance(cfg[key], str):
                cfg[key] = cfg[key].lower()
        _check_hparams(cfg)
        cfg["device"] = self.device
        self.cfg = cfg

        # -- data ---------------------------------------------------------------------------
        if ds_name == "custom":
            if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
                raise ValueError(
                    "dataset: this checkpoint was trained on custom datasets; pass the same "
                    "(train, test) pair again to resume"
                )
            train_ds, test_ds = dataset
        else:
            from foldconv.data import load_dataset  # noqa: PLC0415

            train_ds, test_ds = load_dataset(ds_name, data_dir, download=download)
        if len(train_ds) == 0:
            raise ValueError("dataset: the training set is empty")
        self.train_ds, self.test_ds = train_ds, test_ds
        classes = list(getattr(train_ds, "classes", None) or [])
        num_classes = len(classes) or int(np.max(train_ds.labels)) + 1
        classes = classes or [str(i) for i in range(num_classes)]
        image_chw = tuple(int(s) for s in train_ds.images.shape[1:])

        # -- model --------------------------------------------------------------------------
        if isinstance(model, Module):
            self.model = model
            if resume_info is not None and _module_name(model) != cfg["model"]:
                raise ValueError(
                    f"model: the checkpoint trains {cfg['model']!r}; cannot resume it as "
                    f"{_module_name(model)!r}"
                )
        else:
            from foldconv.models import get_model  # noqa: PLC0415

            init_rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=(1,)))
            kwargs = {"in_channels": image_chw[0]}
            if resume_info is not None:
                kwargs = dict(resume_info.get("arch_kwargs") or kwargs)
            self.model = get_model(model_name, num_classes, rng=init_rng, **kwargs)
        if self.device != "cpu":
            self.model.to(self.device)
        target_hw = _target_size(self.model, image_chw[1:])
        if resume_info is not None:
            mean, std = resume_info["mean"], resume_info["std"]
        else:
            mean, std = _channel_stats(train_ds.images)
        self.train_tf, self.eval_tf = _build_transforms(
            ds_name, image_chw[1:], target_hw, mean, std, bool(cfg["augment"])
        )
        from foldconv.data import DataLoader  # noqa: PLC0415

        self.train_loader = DataLoader(
            train_ds,
            batch_size=cfg["batch_size"],
            shuffle=True,
            drop_last=False,
            seed=cfg["seed"],
            transform=self.train_tf,
        )
        self.test_loader = DataLoader(
            test_ds, batch_size=max(256, cfg["batch_size"]), shuffle=False, transform=self.eval_tf
        )
        self.info_base = {
            "model": cfg["model"],
            "dataset": ds_name,
            "num_classes": num_classes,
            "classes": classes,
            "in_channels": image_chw[0],
            "image_hw": list(image_chw[1:]),
            "input_hw": list(target_hw),
            "mean": list(mean),
            "std": list(std),
            "arch_kwargs": dict(getattr(self.model, "arch_kwargs", None) or {}),
        }

        # -- optimisation -------------------------------------------------------------------
        self.params = list(self.model.parameters())
        if not self.params:
            raise ValueError("model: has no parameters to train")
        self.optimizer = _make_optimizer(cfg["optimizer"], self.params, cfg)
        self.scheduler = _make_scheduler(cfg["scheduler"], self.optimizer, cfg["epochs"])
        from foldconv.nn import CrossEntropyLoss  # noqa: PLC0415

        self.criterion = CrossEntropyLoss(label_smoothing=float(cfg["label_smoothing"]))

        # -- position and history -----------------------------------------------------------
        self.epoch = 0  # 0-based epoch in progress
        self.batch = 0  # batches completed in it
        self.step = 0  # optimizer steps completed
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0
        self.best_epoch = 0
        self.elapsed = 0.0  # wall seconds of earlier sessions
        self.train_seconds = 0.0
        self.train_images = 0
        if resume_info is not None:
            self._restore(resume_weights, resume_info)
            default_out = self.resume_path.parent
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            default_out = Path("runs") / f"{cfg['model']}-{ds_name}-{stamp}"
        self.out = Path(out) if out is not None else default_out
        self.out.mkdir(parents=True, exist_ok=True)
        self.cfg["out"] = str(self.out)
        self.last_test_acc: float | None = (
            self.history[-1]["test_accuracy"] if self.history else None
        )
        self.interrupts = _Interrupts()

    # -- resume -----------------------------------------------------------------------------
    def _restore(self, weights: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> None:
        from foldconv.optim import unflatten_state  # noqa: PLC0415

        if info["num_classes"] != self.info_base["num_classes"]:
            raise ValueError(
                f"checkpoint: {info['num_classes']} classes, but the dataset has "
                f"{self.info_base['num_classes']}"
            )
        self.model.load_state_dict(weights)
        state_path = self.resume_path.parent / info["state_file"]
        if not state_path.is_file():
            raise FileNotFoundError(
                f"checkpoint: the training state {state_path.name} named by "
                f"{self.resume_path.name} is missing from {state_path.parent}"
            )
        arrays, meta = _read_safetensors(state_path)
        if meta.get("format") != STATE_FORMAT or meta.get("id") != info.get("state_id"):
            raise ValueError(f"checkpoint: {state_path} does not belong to {self.resume_path.name}")
        state = json.loads(meta["trainer"])
        self.optimizer.load_state_dict(
            unflatten_state(arrays, json.loads(meta["optimizer"]), prefix="optimizer.")
        )
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(self.model, state["rng"])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.step = int(state["step"])
        self.partial = dict(state["partial"])
        self.history = list(state["history"])
        self.best_acc = float(state["best_accuracy"])
        self.best_epoch = int(state["best_epoch"])
        self.elapsed = float(state["elapsed"])
        self.train_seconds = float(state["train_seconds"])
        self.train_images = int(state["train_images"])
        if int(info["config"]["epochs"]) != int(self.cfg["epochs"]):
            self._replan_schedule()

    def _replan_schedule(self) -> None:
        """Fit a schedule planned over the total epochs to a new total (resume with more
        epochs): the learning rate becomes the schedule's closed-form value for the epochs
        already done under the new plan, and later steps follow the new plan."""
        s, name, total = self.scheduler, self.cfg["scheduler"], int(self.cfg["epochs"])
        if s is None or name == "plateau":
            return
        done = int(s.last_epoch)
        if name == "cosine":
            s.T_max = total
            lrs = [
                s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * done / total)) / 2
                for base in s.base_lrs
            ]
        elif name == "step":
            s.step_size = max(1, total // 3)
            lrs = [base * s.gamma ** (done // s.step_size) for base in s.base_lrs]
        else:
            s.milestones = sorted({max(1, total // 2), max(1, (3 * total) // 4)})
            lrs = [base * s.gamma ** sum(m <= done for m in s.milestones) for base in s.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        s.last_lr = list(lrs)

    # -- saving -----------------------------------------------------------------------------
    def _save(self, tag: str) -> Path:
        """Write ``<tag>.state-<id>.safetensors`` then ``<tag>.safetensors`` (atomically)."""
        import safetensors.numpy as stn  # noqa: PLC0415

        from foldconv.optim import flatten_state  # noqa: PLC0415

        state_id = uuid.uuid4().hex[:12]
        state_name = f"{tag}.state-{state_id}.safetensors"
        opt_arrays, opt_meta = flatten_state(self.optimizer.state_dict(), prefix="optimizer.")
        trainer_state = {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "partial": self.partial,
            "history": self.history,
            "best_accuracy": self.best_acc,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed + (time.perf_counter() - self.t0),
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": _rng_states(self.model),
        }
        atomic_write_bytes(
            self.out / state_name,
            stn.save(
                opt_arrays,
                metadata={
                    "format": STATE_FORMAT,
                    "id": state_id,
                    "trainer": json.dumps(trainer_state),
                    "optimizer": json.dumps(opt_meta),
                },
            ),
        )
        info = dict(self.info_base)
        info.update(
            epoch=len(self.history),
            step=self.step,
            test_accuracy=self.last_test_acc,
            config=self.cfg,
            state_file=state_name,
            state_id=state_id,
            saved_at=_dt.datetime.now().isoformat(timespec="seconds"),
        )
        weights = {k: _export_array(v) for k, v in self.model.state_dict().items()}
        path = self.out / f"{tag}.safetensors"
        atomic_write_bytes(
            path,
            stn.save(
                weights,
                metadata={"format": CHECKPOINT_FORMAT, "foldconv": json.dumps(info)},
            ),
        )
        for old in self.out.glob(f"{tag}.state-*.safetensors"):
            if old.name != state_name:
                with contextlib.suppress(OSError):
                    old.unlink()
        return path

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_bytes(self.out / "metrics.jsonl", text.encode())

    def _summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        wall = self.elapsed + (time.perf_counter() - self.t0)
        summary = {
            "status": status,
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "best_test_accuracy": self.best_acc if self.best_acc >= 0 else None,
            "best_epoch": self.best_epoch or None,
            "train_loss": last.get("train_loss"),
            "train_accuracy": last.get("train_accuracy"),
            "epochs": len(self.history),
            "steps": self.step,
            "wall_seconds": wall,
            "train_seconds": self.train_seconds,
            "images_per_second": (
                self.train_images / self.train_seconds if self.train_seconds > 0 else None
            ),
            "num_parameters": int(sum(p.size for p in self.params)),
            "out": str(self.out),
            "checkpoints": {
                tag: str(self.out / f"{tag}.safetensors")
                for tag in ("best", "last")
                if (self.out / f"{tag}.safetensors").exists()
            },
            "classes": self.info_base["classes"],
            "config": self.cfg,
        }
        if message:
            summary["message"] = message
        return summary

    def _finish_files(self, status: str, message: str | None = None) -> dict[str, Any]:
        summary = self._summary(status, message)
        _write_json(self.out / "summary.json", summary)
        try:
            write_plots(self.out, self.history, self.model)
        except Exception as e:  # a plotting failure must not lose the run  # noqa: BLE001
            if self.verbose:
                print(f"foldconv: warning: could not draw plots: {e}")
        return summary

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.t0 = time.perf_counter()
        self.interrupts.install()
        try:
            return self._loop()
        finally:
            self.interrupts.uninstall()

    def _snapshot(self) -> tuple[dict[str, Any], list[tuple[Module, str, Any]]]:
        rng = _rng_states(self.model)
        buffers = []
        for _, m in self.model.named_modules():
            for name, b in m._buffers.items():
                if b is not None:
                    buffers.append((m, name, b.copy()))
        return rng, buffers

    @staticmethod
    def _rollback(model: Module, snap: tuple[dict[str, Any], list[Any]]) -> None:
        rng, buffers = snap
        _set_rng_states(model, rng)
        for m, name, value in buffers:
            m._buffers[name][...] = value

    def _loop(self) -> dict[str, Any]:
        from tqdm.auto import tqdm  # noqa: PLC0415

        cfg = self.cfg
        model, opt, crit = self.model, self.optimizer, self.criterion
        n_batches = len(self.train_loader)
        snap = None
        bar = None
        try:
            while self.epoch < cfg["epochs"]:
                e = self.epoch
                model.train()
                bar = tqdm(
                    total=n_batches,
                    initial=self.batch,
                    desc=f"epoch {e + 1}/{cfg['epochs']}",
                    unit="batch",
                    disable=not self.progress,
                    leave=False,
                    dynamic_ncols=True,
                )
                lr = float(opt.param_groups[0]["lr"])
                batches = _batches(self.train_loader, e, self.batch)
                while True:
                    # Images/s counts the data pipeline (augmentation) too.
                    t_batch = time.perf_counter()
                    try:
                        x, y = next(batches)
                    except StopIteration:
                        break
                    snap = self._snapshot()
                    xd = to_device(x, self.device) if self.device != "cpu" else x
                    yd = to_device(y, self.device) if self.device != "cpu" else y
                    logits = model(xd)
                    loss = float(crit(logits, yd))
                    if not math.isfinite(loss):
                        snap = None
                        self._diverged(loss, e, bar)
                    opt.zero_grad()
                    model.backward(crit.backward())
                    correct = int((logits.argmax(axis=1) == yd).sum())
                    with self.interrupts.section():
                        opt.step()
                        snap = None
                        self.step += 1
                        self.batch += 1
                        dt = time.perf_counter() - t_batch
                        p = self.partial
                        p["loss_sum"] += loss * len(y)
                        p["correct"] += correct
                        p["seen"] += len(y)
                        p["seconds"] += dt
                        self.train_seconds += dt
                        self.train_images += len(y)
                    bar.update(1)
                    if self.progress:
                        bar.set_postfix(
                            loss=f"{p['loss_sum'] / p['seen']:.4f}",
                            acc=f"{100 * p['correct'] / p['seen']:.2f}%",
                            img_s=f"{p['seen'] / max(p['seconds'], 1e-9):.0f}",
                            refresh=False,
                        )
                    if self.on_step is not None:
                        self.on_step(
                            {
                                "epoch": e + 1,
                                "step": self.step,
                                "batch": self.batch,
                                "loss": loss,
                                "accuracy": correct / len(y),
                                "lr": lr,
                            }
                        )
                bar.close()
                bar = None
                test_loss, test_acc, _ = _evaluate_loader(
                    model, self.test_loader, self.device, self.info_base["num_classes"]
                )
                with self.interrupts.section():
                    self._end_epoch(e, lr, test_loss, test_acc)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            if snap is not None:
                self._rollback(model, snap)
            raise self._interrupted() from None
        return self._finish_files("completed")

    def _end_epoch(self, e: int, lr: float, test_loss: float, test_acc: float) -> None:
        p = self.partial
        record = {
            "epoch": e + 1,
            "step": self.step,
            "train_loss": p["loss_sum"] / max(p["seen"], 1),
            "train_accuracy": p["correct"] / max(p["seen"], 1),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": lr,
            "epoch_seconds": p["seconds"],
            "images_per_second": p["seen"] / p["seconds"] if p["seconds"] > 0 else None,
        }
        self.history.append(record)
        self.last_test_acc = test_acc
        if self.scheduler is not None:
            if self.cfg["scheduler"] == "plateau":
                self.scheduler.step(1.0 - test_acc)
            else:
                self.scheduler.step()
        self.epoch = e + 1
        self.batch = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        improved = test_acc > self.best_acc
        if improved:
            self.best_acc = test_acc
            self.best_epoch = e + 1
        self._write_metrics()
        self._save("last")
        if improved:
            self._save("best")
        if self.verbose:
            ips = record["images_per_second"]
            print(
                f"epoch {e + 1}/{self.cfg['epochs']}: train loss {record['train_loss']:.4f}, "
                f"train acc {100 * record['train_accuracy']:.2f}%, test loss {test_loss:.4f}, "
                f"test acc {100 * test_acc:.2f}% ({record['epoch_seconds']:.1f} s, "
                f"{ips or 0:.0f} img/s)",
                flush=True,
            )

    def _diverged(self, loss: float, e: int, bar: Any) -> None:
        if bar is not None:
            bar.close()
        step = self.step + 1
        kept = self.out / "last.safetensors"
        keep = (
            f"the last good checkpoint is {kept}"
            if kept.exists()
            else "no checkpoint was written yet (none completed an epoch)"
        )
        message = (
            f"loss is {loss} at epoch {e + 1}, step {step} (batch {self.batch + 1} of "
            f"{len(self.train_loader)}); training stopped, {keep}. Try a smaller --lr."
        )
        summary = self._finish_files("diverged", message)
        raise TrainingDiverged(message, e + 1, step, summary)

    def _interrupted(self) -> TrainingInterrupted:
        # Saving must not itself be cut short by a second Ctrl-C.
        with self.interrupts.section():
            path = self._save("last")
            summary = self._finish_files("interrupted")
        message = (
            f"interrupted at epoch {self.epoch + 1}, step {self.step} (batch {self.batch} of "
            f"{len(self.train_loader)} done); checkpoint saved to {path}; continue with "
            f"`foldconv train --resume {self.out}`"
        )
        summary["message"] = message
        return TrainingInterrupted(message, path, summary)


# --------------------------------------------------------------------------------------------
# evaluate / predict
# --------------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: str | Any | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    model: Module | None = None,
) -> dict[str, Any]:
    """Accuracy and confusion matrix of a checkpoint on its dataset's test split.

    Parameters
    ----------
    checkpoint : a ``.safetensors`` checkpoint or a run directory (its best checkpoint)
    data_dir : path, optional
        Default: the directory recorded at training time.
    dataset : str or ArrayDataset, optional
        Default: the training run's dataset (its test split).
    batch_size : int
    device : 'cpu' or 'cuda'
    model : Module, optional
        For checkpoints of custom models.

    Returns
    -------
    dict
        ``accuracy`` (fraction), ``loss``, ``n``, ``confusion`` (list of rows: true class,
        columns: predicted class), ``classes``, ``checkpoint``.
    """
    device = _check_device(device)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    net, info = load_checkpoint(checkpoint, model)
    if device != "cpu":
        net.to(device)
    if dataset is None or isinstance(dataset, str):
        from foldconv.data import load_dataset  # noqa: PLC0415

        name = dataset or info["dataset"]
        if name == "custom":
            raise ValueError(
                "dataset: the checkpoint was trained on custom data; pass dataset= (an "
                "ArrayDataset) to evaluate it"
            )
        ddir = data_dir if data_dir is not None else info["config"].get("data_dir")
        _, test_ds = load_dataset(name, ddir)
    else:
        test_ds = dataset
    image_chw = tuple(int(s) for s in test_ds.images.shape[1:])
    if image_chw[0] != info["in_channels"]:
        raise ValueError(
            f"dataset: expected images with {info['in_channels']} channels (as in training), "
            f"got {image_chw[0]}"
        )
    _, eval_tf = _build_transforms(
        info["dataset"], image_chw[1:], tuple(info["input_hw"]), info["mean"], info["std"], False
    )
    from foldconv.data import DataLoader  # noqa: PLC0415

    loader = DataLoader(test_ds, batch_size=batch_size, shuffle=False, transform=eval_tf)
    loss, acc, confusion = _evaluate_loader(net, loader, device, info["num_classes"])
    return {
        "checkpoint": info["path"],
        "accuracy": acc,
        "loss": loss,
        "n": int(confusion.sum()),
        "confusion": confusion.tolist(),
        "classes": info["classes"],
    }


def predict(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike] | np.ndarray,
    *,
    k: int = 5,
    model: Module | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-``k`` classes with probabilities for each image.

    Parameters
    ----------
    checkpoint : a ``.safetensors`` checkpoint or a run directory
    images : image file paths (read with Pillow), or an array (N, C, H, W) / (C, H, W) in
        [0, 1]. Files are converted to the training images' channels and resized
        (bilinear) to their size, then preprocessed as the test set was.
    k : int
        How many classes (at most the number of classes).

    Returns
    -------
    list (one per image) of lists of (class name, probability), most probable first.
    """
    if not _is_int(k) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    net, info = load_checkpoint(checkpoint, model)
    c = info["in_channels"]
    h, w = info["image_hw"]
    if isinstance(images, np.ndarray):
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"images: expected shape (N, {c}, H, W), got {images.shape}")
    else:
        from foldconv.data.datasets import load_image  # noqa: PLC0415

        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images: expected at least one image, got none")
        mode = "RGB" if c == 3 else "L"
        loaded = []
        for path in images:
            if not Path(path).is_file():
                raise FileNotFoundError(f"images: {path} does not exist")
            loaded.append(load_image(path, mode=mode, size=(h, w)))
        x = np.stack(loaded)
        if c not in (1, 3):
            raise ValueError(f"images: cannot read files for a {c}-channel model")
    _, eval_tf = _build_transforms(
        info["dataset"], x.shape[2:], tuple(info["input_hw"]), info["mean"], info["std"], False
    )
    logits = np.asarray(net(eval_tf(x)), dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    classes = info["classes"]
    result = []
    for row in probs:
        top = np.argsort(-row, kind="stable")[:k]
        result.append([(classes[i], float(row[i])) for i in top])
    return result
