"""Layers holding parameters, each with a hand-written backward pass."""

from foldconv.nn.init import manual_seed
from foldconv.nn.module import Module, Parameter, Sequential

__all__ = ["Module", "Parameter", "Sequential", "manual_seed"]
