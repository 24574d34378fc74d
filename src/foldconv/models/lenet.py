"""LeNet-5 (LeCun et al., 1998) in its common modern form: ReLU and max pooling."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv import nn
from foldconv.models._base import FeatureClassifier, tag
from foldconv.nn.init import get_generator


def _lenet_feature_size(input_size: int) -> int:
    # conv 5x5 with padding 2 keeps the size; pool /2; conv 5x5 valid -4; pool /2.
    return ((input_size // 2) - 4) // 2


def lenet5(
    num_classes: int = 10,
    *,
    in_channels: int = 1,
    input_size: int = 28,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> FeatureClassifier:
    """LeNet-5 for (N, in_channels, input_size, input_size) images.

    features = Conv2d(in_channels, 6, 5, padding=2), ReLU, MaxPool2d(2),
    Conv2d(6, 16, 5), ReLU, MaxPool2d(2); flatten; classifier = Linear(400, 120), ReLU,
    Linear(120, 84), ReLU, Linear(84, num_classes).

    The classic layout is for 28x28 inputs (16 * 5 * 5 = 400 features). Another
    ``input_size`` (>= 12) changes only the first Linear's ``in_features`` to
    ``16 * s * s`` with ``s = (input_size // 2 - 4) // 2``; the trainer keeps 28 and
    resizes smaller images (the 8x8 ``digits``) to 28x28 instead.

    Parameters
    ----------
    num_classes : int
        Outputs of the last Linear.
    in_channels : int
        Channels of the input (1 for MNIST, 3 for CIFAR-10).
    input_size : int
        Height = width of the input images.
    rng : numpy Generator, int or None
        Source of the initial weights (PyTorch's default initialisation).
    dtype : float32 or float64

    Returns
    -------
    FeatureClassifier
        Maps (N, in_channels, input_size, input_size) to (N, num_classes) logits.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)):
        raise ValueError(f"input_size: expected an int >= 12, got {input_size!r}")
    s = _lenet_feature_size(int(input_size))
    if s < 1:
        raise ValueError(f"input_size: expected an int >= 12, got {input_size}")
    g = get_generator(rng)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    classifier = nn.Sequential(
        nn.Linear(16 * s * s, 120, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Linear(120, 84, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Linear(84, int(num_classes), dtype=dtype, rng=g),
    )
    model = FeatureClassifier(
        features,
        classifier,
        in_channels=int(in_channels),
        input_size=int(input_size),
        min_input_size=int(input_size),
    )
    return tag(model, "lenet5", in_channels=int(in_channels), input_size=int(input_size))
