"""ResNet-18 for 32x32 images (He et al., 2016, with the CIFAR stem)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv import nn
from foldconv.models._base import kaiming_normal_fan_out, tag
from foldconv.nn.init import get_generator
from foldconv.nn.module import Module


class BasicBlock(Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut.

    ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` where ``shortcut`` is
    ``downsample`` = Sequential(Conv2d 1x1 stride s, BatchNorm2d) when the shape changes,
    the identity otherwise. Children are named as in torchvision (``conv1``, ``bn1``,
    ``conv2``, ``bn2``, ``downsample.0``, ``downsample.1``).
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        g = get_generator(rng)
        self.conv1 = nn.Conv2d(
            in_planes, planes, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=g
        )
        self.bn1 = nn.BatchNorm2d(planes, dtype=dtype)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False, dtype=dtype, rng=g)
        self.bn2 = nn.BatchNorm2d(planes, dtype=dtype)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False, dtype=dtype, rng=g),
                nn.BatchNorm2d(planes, dtype=dtype),
            )
        self._mask = None

    def forward(self, x: Any) -> Any:
        """(N, in_planes, H, W) -> (N, planes, H / stride, W / stride)."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out = out + (self.downsample(x) if "downsample" in self._modules else x)
        self._mask = out > 0
        return out * self._mask

    def backward(self, grad_output: Any) -> Any:
        """The sum rule: dL/dx = J_body^T g + J_shortcut^T g with g = dL/dy * 1[y > 0]."""
        if self._mask is None:
            raise RuntimeError("BasicBlock: backward() called before forward()")
        g = grad_output * self._mask
        g_body = self.conv1.backward(
            self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(g))))
        )
        if "downsample" in self._modules:
            return g_body + self.downsample.backward(g)
        return g_body + g


class ResNet(Module):
    """ResNet with the CIFAR stem: 3x3 conv, no max pool, four stages, global average pool.

    state_dict names follow torchvision: ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
    ``layer2.0.downsample.0``, ``fc``.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, (int, np.integer))
            or num_classes < 1
        ):
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        g = get_generator(rng)
        self.in_channels = in_channels
        self.input_size = None
        self.min_input_size = 8
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False, dtype=dtype, rng=g)
        self.bn1 = nn.BatchNorm2d(64, dtype=dtype)
        self.relu = nn.ReLU()
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(
                    BasicBlock(in_planes, planes, stride if j == 0 else 1, rng=g, dtype=dtype)
                )
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, int(num_classes), dtype=dtype, rng=g)
        # torchvision's init: Kaiming-normal (fan_out) convolutions; BatchNorm starts at
        # weight 1, bias 0 (the layer's own default); fc keeps the Linear default.
        for _, m in self.named_modules():
            if type(m).__name__ == "Conv2d":
                kaiming_normal_fan_out(m.weight, g)
        self._pooled_shape = None

    def forward(self, x: Any) -> Any:
        """(N, in_channels, H, W) -> (N, num_classes) logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        self._pooled_shape = tuple(x.shape)
        return self.fc(x.reshape(x.shape[0], math.prod(x.shape[1:])))  # N may be 0

    def backward(self, grad_output: Any) -> Any:
        if self._pooled_shape is None:
            raise RuntimeError("ResNet: backward() called before forward()")
        g = self.fc.backward(grad_output).reshape(self._pooled_shape)
        g = self.avgpool.backward(g)
        for layer in (self.layer4, self.layer3, self.layer2, self.layer1):
            g = layer.backward(g)
        return self.conv1.backward(self.bn1.backward(self.relu.backward(g)))


def resnet18(
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    rng: np.random.Generator | int | None = None,
    dtype: Any = np.float32,
) -> ResNet:
    """CIFAR-style ResNet-18: 11,173,962 parameters at 10 classes.

    Stem Conv2d(in_channels, 64, 3, padding 1, no bias), BatchNorm2d, ReLU (no max pool);
    stages of two BasicBlocks with 64, 128, 256, 512 channels (stride 1, 2, 2, 2);
    AdaptiveAvgPool2d(1); fc = Linear(512, num_classes).
    (N, in_channels, 32, 32) -> (N, num_classes) logits; any size >= 8 works.
    """
    model = ResNet((2, 2, 2, 2), num_classes, in_channels=in_channels, rng=rng, dtype=dtype)
    return tag(model, "resnet18", in_channels=in_channels)


__all__ = ["BasicBlock", "ResNet", "resnet18"]
