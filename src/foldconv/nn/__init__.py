"""Layers holding parameters, each with a hand-written backward pass."""

from foldconv.nn.conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from foldconv.nn.init import manual_seed
from foldconv.nn.module import Module, Parameter, Sequential

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Module",
    "Parameter",
    "Sequential",
    "manual_seed",
]
