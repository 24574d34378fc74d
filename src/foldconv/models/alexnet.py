"""AlexNet: torchvision's single-GPU layout and the 2012 paper's two-column network."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv import nn
from foldconv.models._base import (
    FeatureClassifier,
    conv_layers,
    fill_constant,
    fill_normal,
    tag,
)
from foldconv.nn.init import get_generator


def _check_classes(num_classes: Any) -> int:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    return int(num_classes)


def alexnet(
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    dropout: float = 0.5,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> FeatureClassifier:
    """torchvision's AlexNet (``torchvision.models.alexnet``): 224x224 inputs.

    features.0/3/6/8/10 are the convolutions (64, 192, 384, 256, 256 channels), then
    AdaptiveAvgPool2d(6) and classifier = Dropout, Linear(9216, 4096), ReLU, Dropout,
    Linear(4096, 4096), ReLU, Linear(4096, num_classes). 61,100,840 parameters at 1000
    classes. Thanks to the adaptive pool any input of at least 63x63 works.

    Parameters
    ----------
    num_classes : int
    in_channels : int
        3 as in torchvision; 1 for grey images changes only ``features.0.weight``.
    dropout : float
        Drop probability of the two Dropout layers.
    rng : numpy Generator, int or None
        Source of the initial weights (PyTorch's default initialisation) and of the
        dropout masks.
    dtype : float32 or float64

    Returns
    -------
    FeatureClassifier
        (N, in_channels, H, W) -> (N, num_classes) logits.
    """
    num_classes = _check_classes(num_classes)
    g = get_generator(rng)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, 11, stride=4, padding=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 192, 5, padding=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(192, 384, 3, padding=1, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
    )
    classifier = nn.Sequential(
        nn.Dropout(dropout, rng=g),
        nn.Linear(256 * 6 * 6, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(4096, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Linear(4096, num_classes, dtype=dtype, rng=g),
    )
    model = FeatureClassifier(
        features,
        classifier,
        nn.AdaptiveAvgPool2d(6),
        in_channels=in_channels,
        input_size=None,
        min_input_size=63,
    )
    return tag(model, "alexnet", in_channels=in_channels, dropout=dropout)


def alexnet_paper(
    num_classes: int = 1000,
    *,
    init: str = "paper",
    in_channels: int = 3,
    dropout: float = 0.5,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> FeatureClassifier:
    """The network of Krizhevsky, Sutskever and Hinton (2012) on 227x227 inputs.

    features = Conv2d(3, 96, 11, stride 4), ReLU, LocalResponseNorm(5, alpha=5e-4,
    beta=0.75, k=2), MaxPool2d(3, 2), Conv2d(96, 256, 5, padding 2, groups 2), ReLU, LRN,
    MaxPool2d(3, 2), Conv2d(256, 384, 3, padding 1), ReLU, Conv2d(384, 384, 3, padding 1,
    groups 2), ReLU, Conv2d(384, 256, 3, padding 1, groups 2), ReLU, MaxPool2d(3, 2);
    classifier = Dropout, Linear(9216, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU,
    Linear(4096, num_classes). 60,965,224 parameters at 1000 classes.

    The paper's two GPUs are the ``groups=2`` convolutions: conv2, conv4 and conv5 see
    only the kernel maps on their own GPU, conv3 and the dense layers see both. The
    LRN's alpha is 5e-4 because PyTorch's LocalResponseNorm divides alpha by ``size``
    and the paper's alpha = 1e-4 is not divided (5e-4 / 5 = 1e-4).

    Parameters
    ----------
    num_classes : int
    init : 'paper' or 'default'
        'paper': weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the two
        hidden fully-connected layers (so that the ReLUs start with positive inputs),
        0 elsewhere. 'default': PyTorch's default initialisation of each layer.
    in_channels, dropout, rng, dtype
        As in :func:`alexnet`.

    Returns
    -------
    FeatureClassifier
        (N, in_channels, 227, 227) -> (N, num_classes) logits.
    """
    num_classes = _check_classes(num_classes)
    if init not in ("paper", "default"):
        raise ValueError(f"init: expected 'paper' or 'default', got {init!r}")
    g = get_generator(rng)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, 11, stride=4, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(256, 384, 3, padding=1, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
    )
    classifier = nn.Sequential(
        nn.Dropout(dropout, rng=g),
        nn.Linear(256 * 6 * 6, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(4096, 4096, dtype=dtype, rng=g),
        nn.ReLU(),
        nn.Linear(4096, num_classes, dtype=dtype, rng=g),
    )
    model = FeatureClassifier(
        features,
        classifier,
        in_channels=in_channels,
        input_size=227,
        min_input_size=227,
    )
    if init == "paper":
        # conv2, conv4, conv5 (features.4/10/12) and fc6, fc7 (classifier.1/4) start
        # with bias 1; conv1, conv3 and fc8 with bias 0.
        ones = {"features.4", "features.10", "features.12", "classifier.1", "classifier.4"}
        layers = conv_layers(model) + [
            (n, m) for n, m in model.named_modules() if type(m).__name__ == "Linear"
        ]
        for name, layer in layers:
            fill_normal(layer.weight, 0.01, g)
            fill_constant(layer.bias, 1.0 if name in ones else 0.0)
    return tag(model, "alexnet_paper", init=init, in_channels=in_channels, dropout=dropout)
