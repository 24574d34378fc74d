"""Shared pieces of the model zoo: the features -> pool -> flatten -> classifier network."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv.nn.module import Module, Sequential


class FeatureClassifier(Module):
    """``classifier(flatten(avgpool(features(x))))``, with PyTorch's child names.

    torchvision's AlexNet and VGG (and our LeNet-5) are this network: the children
    ``features``, ``avgpool`` (optional) and ``classifier`` give the state_dict names
    ``features.0.weight``, ``classifier.1.bias``, ... The flatten is done in ``forward``
    (as ``torch.flatten(x, 1)`` is in torchvision), so it owns no name.

    Attributes
    ----------
    input_size : int or None
        The spatial size the network is built for when it needs exactly that size
        (no adaptive pooling); None when any size >= ``min_input_size`` works.
    min_input_size : int
        The smallest square input the features accept.
    in_channels : int
        Channels of the input images.
    """

    def __init__(
        self,
        features: Sequential,
        classifier: Sequential,
        avgpool: Module | None = None,
        *,
        in_channels: int,
        input_size: int | None,
        min_input_size: int,
    ) -> None:
        super().__init__()
        self.features = features
        if avgpool is not None:
            self.avgpool = avgpool
        self.classifier = classifier
        self.in_channels = in_channels
        self.input_size = input_size
        self.min_input_size = min_input_size
        self._pooled_shape: tuple[int, ...] | None = None

    def forward(self, x: Any) -> Any:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        x = self.features(x)
        if "avgpool" in self._modules:
            x = self.avgpool(x)
        self._pooled_shape = tuple(x.shape)
        return self.classifier(x.reshape(x.shape[0], math.prod(x.shape[1:])))  # N may be 0

    def backward(self, grad_output: Any) -> Any:
        """(N, num_classes) -> (N, C, H, W); the flatten's backward is a reshape."""
        if self._pooled_shape is None:
            raise RuntimeError(f"{type(self).__name__}: backward() called before forward()")
        g = self.classifier.backward(grad_output).reshape(self._pooled_shape)
        if "avgpool" in self._modules:
            g = self.avgpool.backward(g)
        return self.features.backward(g)


def tag(model: Module, arch: str, **kwargs: Any) -> Module:
    """Record how a builder made ``model``: ``get_model(model.arch, num_classes,
    **model.arch_kwargs)`` builds the same network (so checkpoints can be reloaded)."""
    object.__setattr__(model, "arch", arch)
    object.__setattr__(model, "arch_kwargs", dict(kwargs))
    return model


def conv_layers(model: Module) -> list[tuple[str, Module]]:
    """The (name, module) pairs of the model's convolutions, in definition order."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__.startswith("Conv")]


def kaiming_normal_fan_out(p: Any, rng: np.random.Generator) -> None:
    """torchvision's conv init: N(0, 2 / fan_out), fan_out = out_channels * kh * kw.

    As in ``torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu')``
    (the group count does not enter PyTorch's fan computation).
    """
    shape = p.data.shape
    fan_out = shape[0] * int(np.prod(shape[2:]))
    std = math.sqrt(2.0 / fan_out)
    p.data[...] = rng.normal(0.0, std, size=shape).astype(p.data.dtype)


def fill_normal(p: Any, std: float, rng: np.random.Generator) -> None:
    p.data[...] = rng.normal(0.0, std, size=p.data.shape).astype(p.data.dtype)


def fill_constant(p: Any, value: float) -> None:
    p.data[...] = value
