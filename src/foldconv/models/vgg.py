"""VGG (Simonyan and Zisserman, 2014) in torchvision's layout, without batch norm."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv import nn
from foldconv.models._base import (
    FeatureClassifier,
    conv_layers,
    fill_constant,
    fill_normal,
    kaiming_normal_fan_out,
    tag,
)
from foldconv.nn.init import get_generator

# Output channels of each 3x3 convolution; "M" is a 2x2 max pool (torchvision's cfgs).
_CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


_NAMES = {"A": "vgg11", "D": "vgg16"}


def _vgg(
    cfg: str,
    num_classes: int,
    in_channels: int,
    dropout: float,
    rng: np.random.Generator | int | None,
    dtype: Any,
) -> FeatureClassifier:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    g = get_generator(rng)
    layers = []
    c = in_channels
    for v in _CFGS[cfg]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1, dtype=dtype, rng=g))
            layers.append(nn.ReLU())
            c = v
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(4096, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(4096, int(num_classes), dtype=dtype, rng=g),
    )
    model = FeatureClassifier(
        nn.Sequential(*layers),
        classifier,
        nn.AdaptiveAvgPool2d(7),
        in_channels=in_channels,
        input_size=None,
        min_input_size=32,
    )
    # torchvision's VGG init: Kaiming-normal (fan_out) convolutions, N(0, 0.01) linears,
    # zero biases.
    for _, conv in conv_layers(model):
        kaiming_normal_fan_out(conv.weight, g)
        fill_constant(conv.bias, 0.0)
    for _, lin in model.classifier.named_children():
        if type(lin).__name__ == "Linear":
            fill_normal(lin.weight, 0.01, g)
            fill_constant(lin.bias, 0.0)
    return tag(model, _NAMES[cfg], in_channels=in_channels, dropout=dropout)


def vgg11(
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    dropout: float = 0.5,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> FeatureClassifier:
    """VGG-11 (configuration A) as ``torchvision.models.vgg11``: 132,863,336 parameters.

    Eight 3x3 convolutions with five 2x2 max pools in ``features``, AdaptiveAvgPool2d(7),
    classifier = Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout,
    Linear(4096, num_classes). Inputs of at least 32x32; (N, C, H, W) -> (N, num_classes).
    """
    return _vgg("A", num_classes, in_channels, dropout, rng, dtype)


def vgg16(
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    dropout: float = 0.5,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> FeatureClassifier:
    """VGG-16 (configuration D) as ``torchvision.models.vgg16``: 138,357,544 parameters.

    Thirteen 3x3 convolutions, otherwise as :func:`vgg11`.
    """
    return _vgg("D", num_classes, in_channels, dropout, rng, dtype)
