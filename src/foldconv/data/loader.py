"""In-memory datasets and a seeded, resumable mini-batch loader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from foldconv.data.transforms import Transform

__all__ = ["ArrayDataset", "DataLoader"]


class ArrayDataset:
    """Images and integer labels held in memory.

    Parameters
    ----------
    images : array_like, shape (N, C, H, W), floating
        Stored as float32 (float64 is kept as float64), conventionally scaled to [0, 1].
    labels : array_like, shape (N,), integer
        Class indices in ``0 .. len(classes) - 1``; stored as int64.
    transform : callable ``t(x, rng=None)``, optional
        A batch transform (see :mod:`foldconv.data.transforms`) that :class:`DataLoader`
        applies to every batch it draws from this dataset.
    classes : sequence of str, optional
        Class names, ``classes[k]`` naming label ``k``. Default: ``["0", "1", ...]`` up to the
        largest label.

    Attributes
    ----------
    images : ndarray (N, C, H, W)
    labels : ndarray (N,) int64
    classes : list of str
    transform : callable or None
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"images: expected shape (N, C, H, W), got shape {images.shape}")
        if images.dtype.kind != "f":
            raise TypeError(
                f"images: expected floating values (scaled to [0, 1]), got dtype {images.dtype}"
            )
        if images.dtype != np.float64:
            images = images.astype(np.float32, copy=False)
        if labels.ndim != 1:
            raise ValueError(f"labels: expected shape (N,), got shape {labels.shape}")
        if labels.size and labels.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        if len(labels) != len(images):
            raise ValueError(
                f"labels: expected one label per image ({len(images)}), got {len(labels)}"
            )
        labels = labels.astype(np.int64, copy=False)
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels: expected non-negative class indices, got {labels.min()}")
        if classes is None:
            n_classes = int(labels.max()) + 1 if labels.size else 0
            classes = [str(k) for k in range(n_classes)]
        classes = [str(c) for c in classes]
        if labels.size and labels.max() >= len(classes):
            raise ValueError(
                f"classes: expected a name for every label up to {int(labels.max())}, "
                f"got {len(classes)} names"
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable, got {type(transform).__name__}")
        self.images = images
        self.labels = labels
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels at ``index`` (an int, slice or index array), untransformed."""
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, image_shape={self.image_shape}, "
            f"classes={len(self.classes)}, transform={self.transform!r})"
        )


class DataLoader:
    """Iterate over a dataset in mini-batches, reproducibly.

    Parameters
    ----------
    dataset : ArrayDataset (or anything with ``__len__`` and ``__getitem__(index_array)``
        returning ``(images, labels)``)
    batch_size : int, default 64
    shuffle : bool, default False
        Visit the samples in a fresh random order every epoch.
    drop_last : bool, default False
        Drop the final batch when it is smaller than ``batch_size``.
    seed : int, optional
        Seeds both the shuffling and the random transforms. None draws one from the OS at
        construction (kept in ``loader.seed``, so it can be saved and given back on resume).
    transform : callable ``t(x, rng=None)``, optional
        Batch transform; default: the dataset's ``transform`` attribute, if any.

    Notes
    -----
    Reproducibility: the order of epoch ``e`` comes from a Generator seeded by
    ``SeedSequence(seed, spawn_key=(e, 0))``, and batch ``b`` of that epoch is transformed with
    one seeded by ``SeedSequence(seed, spawn_key=(e, 1, b))``. Both depend only on
    ``(seed, e[, b])``, so ``loader.set_epoch(e)`` in a resumed run reproduces epoch ``e``
    exactly, whatever happened before. Each ``iter(loader)`` runs the current epoch and then
    advances it by one; call :meth:`set_epoch` to choose the epoch explicitly.

    Devices: the loader and its transforms (augmentation included) run on the host and yield
    NumPy batches, whatever device the model is on; the seeded host generators are what make
    epochs reproducible and resumable. A GPU run copies each finished batch to the device
    once (:func:`foldconv.train` does so through a pinned staging buffer).

    Yields
    ------
    x : ndarray, shape (B, C, H, W)
    y : ndarray, shape (B,), int64
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"dataset: expected an object with __len__ and __getitem__, "
                f"got {type(dataset).__name__}"
            )
        if (
            not isinstance(batch_size, (int, np.integer))
            or isinstance(batch_size, bool)
            or batch_size <= 0
        ):
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        elif not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int or None, got {seed!r}")
        if transform is None:
            transform = getattr(dataset, "transform", None)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.transform = transform
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch that the next ``iter(loader)`` will run."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (its order and augmentations)."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative int, got {epoch!r}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.dataset)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def indices(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the samples, shape (N,) int64."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        ss = np.random.SeedSequence(self.seed, spawn_key=(int(epoch), 0))
        return np.random.default_rng(ss).permutation(n).astype(np.int64)

    def batch_generator(self, epoch: int, batch: int) -> np.random.Generator:
        """The Generator that transforms batch ``batch`` of epoch ``epoch``."""
        ss = np.random.SeedSequence(self.seed, spawn_key=(int(epoch), 1, int(batch)))
        return np.random.default_rng(ss)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self._epoch
        self._epoch = epoch + 1
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.indices(epoch)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self.dataset[idx]
            if self.transform is not None:
                x = self.transform(x, self.batch_generator(epoch, b))
            yield x, y

    def __repr__(self) -> str:
        return (
            f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})"
        )
