"""Data: in-memory datasets, a seeded resumable loader, batch transforms and dataset readers.

>>> from foldconv.data import DataLoader, load_dataset
>>> train, test = load_dataset("digits")
>>> loader = DataLoader(train, batch_size=64, shuffle=True, seed=0)
>>> x, y = next(iter(loader))
>>> x.shape, y.shape
((64, 1, 8, 8), (64,))
"""

from foldconv.data.datasets import (
    DATASETS,
    cifar10,
    digits,
    folder,
    load_dataset,
    load_image,
    mnist,
    read_idx,
)
from foldconv.data.loader import ArrayDataset, DataLoader
from foldconv.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "CenterCrop",
    "Compose",
    "DataLoader",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "cifar10",
    "digits",
    "folder",
    "load_dataset",
    "load_image",
    "mnist",
    "read_idx",
]
