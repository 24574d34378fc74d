"""Classic convolutional networks with PyTorch's state_dict names and shapes.

Every model maps (N, C, H, W) images to (N, num_classes) logits and has a hand-written
``backward``; ``model.state_dict()`` loads into the same network built in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foldconv.models._base import FeatureClassifier
from foldconv.models.alexnet import alexnet, alexnet_paper
from foldconv.models.lenet import lenet5
from foldconv.models.resnet import BasicBlock, ResNet, resnet18
from foldconv.models.vgg import vgg11, vgg16
from foldconv.nn.module import Module

MODELS: dict[str, Callable[..., Module]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "alexnet_paper": alexnet_paper,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "resnet18": resnet18,
}


def available_models() -> list[str]:
    """The names :func:`get_model` accepts."""
    return sorted(MODELS)


def get_model(name: str, num_classes: int = 10, **kwargs: Any) -> Module:
    """Build a model by name (``'lenet5'``, ``'alexnet'``, ``'alexnet_paper'``, ``'vgg11'``,
    ``'vgg16'``, ``'resnet18'``).

    Parameters
    ----------
    name : str
    num_classes : int
    **kwargs
        Passed to the builder (``in_channels``, ``rng``, ``dtype``, ...).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name.lower().replace("-", "_") not in MODELS:
        raise ValueError(f"name: expected one of {', '.join(available_models())}, got {name!r}")
    return MODELS[name.lower().replace("-", "_")](num_classes, **kwargs)


__all__ = [
    "MODELS",
    "BasicBlock",
    "FeatureClassifier",
    "ResNet",
    "alexnet",
    "alexnet_paper",
    "available_models",
    "get_model",
    "lenet5",
    "resnet18",
    "vgg11",
    "vgg16",
]
