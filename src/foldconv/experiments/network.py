"""The small AlexNet-like network the experiments train, one switch per property under test.

The layout keeps AlexNet's order of operations at a size that trains on two cores:

    conv1 5x5 (16) -> act -> [LRN] -> pool
    conv2 5x5 (32) -> act -> [LRN] -> pool
    conv3 3x3 (32) -> act
    flatten -> fc1 (128) -> act -> [dropout] -> fc2 (128) -> act -> [dropout] -> fc3 (classes)

As in the paper, LRN follows the activation of the first two convolutions and precedes
their pooling, and dropout drops the outputs of the first two fully connected layers. The
switches change no parameter: every arm built from the same seed starts from bitwise the
same weights.
"""

from __future__ import annotations

import numpy as np

from foldconv import nn
from foldconv.models._base import FeatureClassifier, tag

__all__ = ["ACTIVATIONS", "INITS", "POOLS", "small_alexnet"]

ACTIVATIONS = ("relu", "tanh")
POOLS = ("overlapping", "non-overlapping")
INITS = ("default", "he")

# The paper's LRN constants (k = 2, n = 5, alpha = 1e-4, beta = 0.75); PyTorch's
# LocalResponseNorm divides alpha by the size, so the paper's alpha is 5 * 1e-4 here.
LRN_SIZE = 5
LRN_ALPHA = 5e-4
LRN_BETA = 0.75
LRN_K = 2.0


def _activation(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.Tanh()


def _pool(kind: str) -> nn.Module:
    # 3x3 stride 2 with padding 1 maps an even side n to n / 2, as 2x2 stride 2 does: both
    # arms feed fc1 the same number of features, so they have the same parameters.
    if kind == "overlapping":
        return nn.MaxPool2d(3, stride=2, padding=1)
    return nn.MaxPool2d(2, stride=2)


def model_layers(layers: list[nn.Module]) -> list[tuple[int, nn.Module]]:
    """The (index, layer) pairs of the layers holding weights (convolutions and linears)."""
    return [(i, m) for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]


def small_alexnet(
    num_classes: int = 10,
    *,
    in_channels: int = 1,
    input_size: int = 28,
    activation: str = "relu",
    lrn: bool = False,
    pool: str = "overlapping",
    dropout: float = 0.0,
    init: str = "default",
    rng: np.random.Generator | int | None = None,
    dropout_rng: np.random.Generator | int | None = None,
) -> FeatureClassifier:
    """A three-convolution AlexNet-like classifier for small images.

    Parameters
    ----------
    num_classes : int
    in_channels : int
        1 for digits/MNIST, 3 for CIFAR-10.
    input_size : int
        Height = width of the input; a multiple of 4 (two poolings halve it), at least 4.
    activation : 'relu' or 'tanh'
        The non-linearity after every convolution and hidden fully connected layer.
    lrn : bool
        Local response normalisation (the paper's constants) after the activations of
        conv1 and conv2.
    pool : 'overlapping' or 'non-overlapping'
        Max pooling 3x3 stride 2 (padding 1) or 2x2 stride 2.
    dropout : float in [0, 1)
        Drop probability of the outputs of fc1 and fc2 (0 builds no Dropout layers).
    init : 'default' or 'he'
        'default': the layers' own initialisation (PyTorch's: weights uniform with
        variance 1 / (3 fan_in)); 'he': weights normal with variance 2 / fan_in (He et
        al., 2015), biases zero. Either way both arms of a seed get the same weights.
    rng : numpy Generator, int or None
        Source of the initial weights (PyTorch's default initialisation).
    dropout_rng : numpy Generator, int or None
        Source of the dropout masks (kept apart from ``rng`` so the weights do not
        depend on whether the network has dropout).

    Returns
    -------
    FeatureClassifier
        (N, in_channels, input_size, input_size) -> (N, num_classes) logits.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if (
        isinstance(input_size, bool)
        or not isinstance(input_size, (int, np.integer))
        or input_size < 4
        or input_size % 4
    ):
        raise ValueError(f"input_size: expected a multiple of 4, at least 4, got {input_size!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    if init not in INITS:
        raise ValueError(f"init: expected one of {', '.join(INITS)}, got {init!r}")
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    g = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    side = int(input_size) // 4
    feats: list[nn.Module] = [nn.Conv2d(int(in_channels), 16, 5, padding=2, rng=g)]
    feats.append(_activation(activation))
    if lrn:
        feats.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K))
    feats.append(_pool(pool))
    feats.append(nn.Conv2d(16, 32, 5, padding=2, rng=g))
    feats.append(_activation(activation))
    if lrn:
        feats.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K))
    feats.append(_pool(pool))
    feats += [nn.Conv2d(32, 32, 3, padding=1, rng=g), _activation(activation)]
    d = None
    if dropout > 0:
        d = (
            dropout_rng
            if isinstance(dropout_rng, np.random.Generator)
            else np.random.default_rng(dropout_rng)
        )
    cls: list[nn.Module] = [nn.Linear(32 * side * side, 128, rng=g), _activation(activation)]
    if d is not None:
        cls.append(nn.Dropout(float(dropout), rng=d))
    cls += [nn.Linear(128, 128, rng=g), _activation(activation)]
    if d is not None:
        cls.append(nn.Dropout(float(dropout), rng=d))
    cls.append(nn.Linear(128, int(num_classes), rng=g))
    if init == "he":
        # Drawn after the default initialisation from the same generator, so the weights
        # still depend only on the seed and the layer shapes, not on the switches.
        for _, m in model_layers(feats + cls):
            fan_in = int(np.prod(m.weight.data.shape[1:]))
            m.weight.data[...] = g.normal(0.0, np.sqrt(2.0 / fan_in), m.weight.data.shape)
            m.bias.data[...] = 0.0
    model = FeatureClassifier(
        nn.Sequential(*feats),
        nn.Sequential(*cls),
        in_channels=int(in_channels),
        input_size=int(input_size),
        min_input_size=int(input_size),
    )
    return tag(
        model,
        "small_alexnet",
        in_channels=int(in_channels),
        input_size=int(input_size),
        activation=activation,
        lrn=bool(lrn),
        pool=pool,
        dropout=float(dropout),
        init=init,
    )
