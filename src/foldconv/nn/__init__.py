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
from foldconv.nn.dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from foldconv.nn.identity import Identity
from foldconv.nn.init import manual_seed
from foldconv.nn.linear import Flatten, Linear
from foldconv.nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from foldconv.nn.lrn import LocalResponseNorm
from foldconv.nn.module import Module, Parameter, Sequential
from foldconv.nn.normalization import BatchNorm1d, BatchNorm2d
from foldconv.nn.padding import (
    CircularPad1d,
    CircularPad2d,
    CircularPad3d,
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    ZeroPad1d,
    ZeroPad2d,
    ZeroPad3d,
)
from foldconv.nn.pixel_shuffle import PixelShuffle, PixelUnshuffle
from foldconv.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool1d, MaxPool2d, MaxPool3d
from foldconv.nn.upsample import Upsample, UpsamplingBilinear2d, UpsamplingNearest2d

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GELU",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "NLLLoss",
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
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "LocalResponseNorm",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "CircularPad1d",
    "CircularPad2d",
    "CircularPad3d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ConstantPad3d",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReflectionPad3d",
    "ReplicationPad1d",
    "ReplicationPad2d",
    "ReplicationPad3d",
    "ZeroPad1d",
    "ZeroPad2d",
    "ZeroPad3d",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "Identity",
    "PixelShuffle",
    "PixelUnshuffle",
    "Upsample",
    "UpsamplingBilinear2d",
    "UpsamplingNearest2d",
]
