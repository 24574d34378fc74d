"""Layers holding parameters, each with a hand-written backward pass."""

from foldconv.nn.activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from foldconv.nn.container import Residual
from foldconv.nn.conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from foldconv.nn.dropout import Dropout
from foldconv.nn.init import manual_seed
from foldconv.nn.linear import Flatten, Linear
from foldconv.nn.loss import CrossEntropyLoss, MSELoss
from foldconv.nn.lrn import LocalResponseNorm
from foldconv.nn.module import Module, Parameter, Sequential
from foldconv.nn.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm
from foldconv.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GELU",
    "GroupNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "ReLU",
    "Residual",
    "Sigmoid",
    "Softmax",
    "Tanh",
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
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "LocalResponseNorm",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
]
