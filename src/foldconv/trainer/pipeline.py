"""The data pipeline of a run: the input size a model is fed, normalisation statistics,
augmentation, and the batches of an epoch from any position in it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from foldconv.nn.module import Module


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


class _DeviceFeeder:
    """Copies a run's batches to its device: on CUDA, one contiguous host-to-device copy per
    array through a reused page-locked (pinned) staging buffer; on the CPU, nothing.

    The data pipeline (indexing, augmentation, normalisation) runs on the host, in NumPy;
    only its finished batch crosses to the GPU, once per step. A pinned buffer lets the copy
    run by DMA without a hidden staging copy in the driver; the buffer of a slot is reused
    once the copy that last read it has completed (an event recorded after it).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._staging: dict[str, tuple[np.ndarray, Any]] = {}

    def __call__(self, a: np.ndarray, slot: str) -> Any:
        """``a`` on the device (``slot`` names the staging buffer: 'x' or 'y')."""
        if self.device == "cpu":
            return a
        from foldconv.backend import cuda_module, to_device  # noqa: PLC0415

        a = np.ascontiguousarray(a)
        if a.size == 0 or self.device != "cuda":
            return to_device(a, self.device)
        cp = cuda_module(self.device)
        import cupyx  # noqa: PLC0415

        buf, done = self._staging.get(slot, (None, None))
        if done is not None:
            done.synchronize()  # the last copy out of buf has finished
        if buf is None or buf.nbytes < a.nbytes:
            buf = cupyx.empty_pinned((a.nbytes,), dtype=np.uint8)
        staged = buf[: a.nbytes].view(a.dtype).reshape(a.shape)
        np.copyto(staged, a)
        out = cp.empty(a.shape, dtype=a.dtype)
        out.set(staged)
        done = cp.cuda.Event()
        done.record()
        self._staging[slot] = (buf, done)
        return out
