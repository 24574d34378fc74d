"""The plots of a run: loss and accuracy per epoch, and the first layer's filters."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.backend import to_device
from foldconv.nn.module import Module
from foldconv.trainer.checkpoints import atomic_write_bytes


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
