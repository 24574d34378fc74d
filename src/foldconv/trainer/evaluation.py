"""Evaluation (accuracy, loss, confusion matrix) and prediction from checkpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.backend import to_device
from foldconv.nn.module import Module
from foldconv.trainer.checkpoints import load_checkpoint
from foldconv.trainer.config import _check_device, _is_int
from foldconv.trainer.pipeline import _batches, _build_transforms, _DeviceFeeder


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
    loss_sum_device: Any = None
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    feed = _DeviceFeeder(device)
    try:
        for x, y in _batches(loader, 0, 0):
            logits = model(feed(x, "x"))
            loss = cross_entropy(logits, feed(y, "y"), reduction="sum")
            if device == "cpu":
                loss_sum += float(loss)
            else:
                # Summed on the GPU (in float64, as the host sum is): the predictions,
                # for the confusion matrix on the host, are the one copy back per batch.
                loss = loss.astype("float64")
                loss_sum_device = loss if loss_sum_device is None else loss_sum_device + loss
            pred = np.asarray(to_device(logits.argmax(axis=1), "cpu"))
            correct += int((pred == y).sum())
            seen += len(y)
            np.add.at(confusion, (np.asarray(y), pred), 1)
    finally:
        model.train(was_training)
    if seen == 0:
        return float("nan"), float("nan"), confusion
    if loss_sum_device is not None:
        loss_sum = float(to_device(loss_sum_device, "cpu"))
    return loss_sum / seen, correct / seen, confusion


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
        Where the network runs (a checkpoint from either device loads on either).
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
    device: str = "cpu",
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
    model : Module, optional
        For checkpoints of custom models.
    device : 'cpu' or 'cuda'
        Where the network runs (images are read and preprocessed on the host).

    Returns
    -------
    list (one per image) of lists of (class name, probability), most probable first.
    """
    if not _is_int(k) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    device = _check_device(device)
    net, info = load_checkpoint(checkpoint, model)
    if device != "cpu":
        net.to(device)
    c = info["in_channels"]
    h, w = info["image_hw"]
    if isinstance(images, np.ndarray):
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"images: expected shape (N, {c}, H, W), got {images.shape}")
        if x.shape[0] == 0:
            return []  # no images, no predictions (as the model's forward on a batch of 0)
    else:
        from foldconv.data.datasets import load_image  # noqa: PLC0415

        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if len(images) == 0:
            return []
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
    x = eval_tf(x)
    if device != "cpu":
        x = _DeviceFeeder(device)(x, "x")
    logits = np.asarray(to_device(net(x), "cpu"), dtype=np.float64)
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
