"""Stateless forward/backward pairs: the convolution and its kin."""

from foldconv.functional.convolution import (
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
)
from foldconv.functional.padding import pad, pad_backward
from foldconv.functional.unfold import fold, unfold

__all__: list[str] = [
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_backward",
    "conv_transpose",
    "conv_transpose_backward",
    "fold",
    "pad",
    "pad_backward",
    "unfold",
]
