"""Feature maps: every layer's activations for one image, as arrays and PNG grids.

:func:`feature_maps` runs a model forward and returns the output of each of its leaf
layers (the modules without children: convolutions, activations, normalisations, pooling,
linear layers), in the order they ran. :func:`activation_grid` tiles one layer's output into
an image, as :func:`foldconv.trainer.filter_mosaic` tiles the first layer's filters.
:func:`visualize` does both for a checkpoint written by ``foldconv train`` and an image
file, preprocessed exactly as the checkpoint's test images were (``foldconv visualize``).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from foldconv.backend import to_device
from foldconv.nn.module import Module

__all__ = ["Activation", "activation_grid", "feature_maps", "preprocess_image", "visualize"]


class Activation(NamedTuple):
    """The output of one leaf layer: its dotted name, the layer and the array it returned."""

    name: str
    layer: Module
    value: np.ndarray


def feature_maps(model: Module, x: Any) -> list[Activation]:
    """The output of every leaf layer of ``model`` for the batch ``x``, in call order.

    The model runs in eval mode (dropout off, running statistics used) and is returned to
    its previous mode afterwards.

    Parameters
    ----------
    model : Module
    x : array, shape (N, C, H, W)

    Returns
    -------
    list of Activation
        ``name`` is the layer's dotted name (``features.0``); a layer called more than once
        in a forward pass appears once per call, the later calls named ``name#2``, ...;
        ``value`` is a host (NumPy) copy of the output, shape (N, ...).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a Module, got {type(model).__name__}")
    seen: set[int] = set()
    leaves = []
    for name, m in model.named_modules():
        if id(m) in seen or any(True for _ in m.children()):
            continue
        seen.add(id(m))
        leaves.append((name or type(m).__name__, m))
    records: list[Activation] = []
    calls: dict[str, int] = {}
    patched: list[Module] = []
    was_training = model.training

    def wrap(name: str, m: Module, forward: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            y = forward(*args, **kwargs)
            calls[name] = calls.get(name, 0) + 1
            label = name if calls[name] == 1 else f"{name}#{calls[name]}"
            records.append(Activation(label, m, np.array(to_device(y, "cpu"), copy=True)))
            return y

        return recorded

    try:
        # The modules have no forward hooks: an instance attribute ``forward`` shadows the
        # class's method for this one pass (Module.__call__ looks it up on the instance) and
        # is removed afterwards, so the model is left exactly as it was.
        for name, m in leaves:
            object.__setattr__(m, "forward", wrap(name, m, m.forward))
            patched.append(m)
        model.eval()
        model(x)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
        model.train(was_training)
    return records


def activation_grid(activation: Any, border: int = 1) -> np.ndarray:
    """One image's activation of one layer as a single grey image in [0, 1].

    Parameters
    ----------
    activation : array, shape (C, H, W) or (F,)
        (C, H, W): the C maps tiled on a grid (as :func:`foldconv.trainer.filter_mosaic`
        tiles filters), each map min-max scaled on its own, separated by white borders of
        ``border`` pixels. (F,): the F values laid out row by row on the smallest square
        grid of cells holding them, scaled together; unused cells are NaN (drawn light
        blue by :func:`visualize`).

    Returns
    -------
    ndarray, shape (H_grid, W_grid), float64
    """
    from foldconv.trainer import filter_mosaic  # noqa: PLC0415

    a = np.asarray(to_device(activation, "cpu"), dtype=np.float64)
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border: expected a non-negative int, got {border!r}")
    if a.ndim == 3:
        # A (C, 1, H, W) "weight" with one input channel: one tile per map.
        return filter_mosaic(a[:, None], border=int(border))
    if a.ndim == 1:
        if a.size == 0:
            raise ValueError("activation: expected at least one value, got an empty array")
        side = int(math.ceil(math.sqrt(a.size)))
        rows = int(math.ceil(a.size / side))
        lo, hi = float(a.min()), float(a.max())
        cells = np.full(rows * side, np.nan)
        cells[: a.size] = (a - lo) / max(hi - lo, 1e-12)
        return cells.reshape(rows, side)
    raise ValueError(
        f"activation: expected one image's activation of shape (C, H, W) or (F,), "
        f"got shape {a.shape}"
    )


def preprocess_image(image: str | os.PathLike | np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """An image as the checkpoint's training run fed its test images.

    Parameters
    ----------
    image : an image file (read with Pillow, converted to the training images' channels and
        resized, bilinear, to their size) or an array (C, H, W) / (1, C, H, W) in [0, 1]
    info : the checkpoint's description (from :func:`foldconv.trainer.load_checkpoint`):
        ``in_channels``, ``image_hw``, ``input_hw``, ``mean`` and ``std``

    Returns
    -------
    ndarray, shape (1, C, input_h, input_w), float32
        Resized to the model's input size when it differs from the images' size, then
        normalised with the training set's per-channel mean and std.
    """
    from foldconv.data import Compose, Normalize, Resize, load_image  # noqa: PLC0415

    c = int(info["in_channels"])
    h, w = (int(v) for v in info["image_hw"])
    if isinstance(image, np.ndarray):
        x = np.asarray(image, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != c:
            raise ValueError(f"image: expected an array of shape ({c}, H, W), got {image.shape}")
    elif isinstance(image, (str, os.PathLike)):
        if c not in (1, 3):
            raise ValueError(f"image: cannot read files for a {c}-channel model")
        if not Path(image).is_file():
            raise FileNotFoundError(f"image: {image} does not exist")
        x = load_image(image, mode="RGB" if c == 3 else "L", size=(h, w))[None]
    else:
        raise TypeError(f"image: expected a path or an array, got {type(image).__name__}")
    # The trainer's evaluation transform: resize to the model's input size (when it differs
    # from the images' size), then normalise with the training images' statistics.
    target = tuple(int(v) for v in info["input_hw"])
    steps = [Resize(target)] if tuple(x.shape[2:]) != target else []
    return Compose(steps + [Normalize(list(info["mean"]), list(info["std"]))])(x)


def _file_name(index: int, name: str, kind: str) -> str:
    if index == 0:
        return "00-input.png"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return f"{index:02d}-{safe}-{kind}.png"


def _render(grid: np.ndarray, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    h, w = grid.shape
    # About 8 screen pixels per activation pixel, within sensible bounds.
    width = min(max(3.5, w / 12), 14.0)
    height = min(max(2.5, h / 12 * width / max(w / 12, 1e-9)), 14.0) + 0.6
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.6 / height)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib as mpl  # noqa: PLC0415

    cmap = mpl.colormaps["gray"].with_extremes(bad="#cfe0f5")  # NaN: unused grid cells
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def visualize(
    checkpoint: str | os.PathLike,
    image: str | os.PathLike | np.ndarray,
    out: str | os.PathLike | None = None,
    *,
    model: Module | None = None,
) -> dict[str, Any]:
    """Write each layer's activations for ``image`` as a PNG grid into ``out``.

    Parameters
    ----------
    checkpoint : a ``.safetensors`` checkpoint written by ``foldconv train``, or its run
        directory (its best checkpoint)
    image : an image file (PNG, JPEG, ... read with Pillow) or an array (C, H, W) in [0, 1];
        preprocessed as the checkpoint's test images were (:func:`preprocess_image`)
    out : path, optional
        Output directory; default ``runs/feature-maps-<image name>-<time>``.
    model : Module, optional
        For checkpoints of custom models.

    Returns
    -------
    dict
        ``files`` (the PNGs, in layer order: ``00-input.png`` then one per leaf layer,
        ``NN-<name>-<Type>.png``), ``layers`` (per file: ``name``, ``type``, ``shape``,
        ``min``, ``max``, ``file``), ``prediction`` (class name, probability),
        ``checkpoint`` and ``out``.
    """
    from foldconv.trainer import atomic_write_bytes, load_checkpoint  # noqa: PLC0415

    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        what = "is a directory, not an image file" if Path(image).is_dir() else "does not exist"
        raise FileNotFoundError(f"image: {image} {what} (arguments: CHECKPOINT IMAGE)")
    net, info = load_checkpoint(checkpoint, model)
    x = preprocess_image(image, info)
    acts = feature_maps(net, x)
    stem = Path(image).stem if isinstance(image, (str, os.PathLike)) else "array"
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"feature-maps-{stem}-{stamp}"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    layers: list[dict[str, Any]] = []
    entries: Sequence[tuple[str, str, np.ndarray]] = [("input", "input", x)] + [
        (a.name, type(a.layer).__name__, a.value) for a in acts
    ]
    for i, (name, kind, value) in enumerate(entries):
        one = np.asarray(value)[0]
        if one.ndim not in (1, 3):
            continue  # neither maps nor a vector (a custom layer's odd output): nothing to tile
        fname = _file_name(i, name, kind)
        grid = activation_grid(one)
        what = (
            f"{one.shape[0]} maps of {one.shape[1]}x{one.shape[2]}"
            if one.ndim == 3
            else f"{one.shape[0]} values"
        )
        title = f"{name} ({kind}): {what}, range [{one.min():.3g}, {one.max():.3g}]"
        atomic_write_bytes(out_dir / fname, _render(grid, title))
        layers.append(
            {
                "name": name,
                "type": kind,
                "shape": list(one.shape),
                "min": float(one.min()),
                "max": float(one.max()),
                "file": str(out_dir / fname),
            }
        )
    logits = np.asarray(acts[-1].value, dtype=np.float64)[0] if acts else None
    prediction = None
    if logits is not None and logits.ndim == 1:
        p = np.exp(logits - logits.max())
        p /= p.sum()
        k = int(np.argmax(p))
        classes = info.get("classes") or [str(i) for i in range(len(p))]
        prediction = (str(classes[k]), float(p[k]))
    return {
        "checkpoint": info["path"],
        "out": str(out_dir),
        "files": [r["file"] for r in layers],
        "layers": layers,
        "prediction": prediction,
    }
