"""interpolate / interpolate_backward on CuPy arrays against the CPU path (one gather
kernel per axis, the backward included), run to run bit for bit, and the upsampling
layers on the GPU."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gpu._funcs import assert_bitwise_repeatable, assert_matches, on_gpu

CASES = [
    ((2, 3, 5), dict(scale_factor=2, mode="nearest")),
    ((1, 2, 7), dict(size=3, mode="nearest")),
    ((2, 3, 8, 9), dict(scale_factor=2, mode="nearest")),
    ((2, 3, 8, 9), dict(size=(5, 20), mode="nearest")),
    ((1, 2, 6, 5), dict(scale_factor=(1.7, 0.6), mode="nearest-exact")),
    ((1, 2, 3, 4, 5), dict(size=(4, 3, 9), mode="nearest")),
    ((2, 2, 9), dict(size=16, mode="linear", align_corners=False)),
    ((2, 2, 9), dict(scale_factor=0.5, mode="linear", align_corners=True)),
    ((2, 3, 8, 6), dict(size=(13, 4), mode="bilinear", align_corners=True)),
    ((2, 3, 8, 6), dict(scale_factor=1.5, mode="bilinear", align_corners=False)),
    ((2, 3, 8, 6), dict(scale_factor=2.5, mode="bilinear", recompute_scale_factor=True)),
    ((0, 2, 4, 3), dict(scale_factor=2, mode="bilinear")),
    ((1, 2, 3, 4, 5), dict(size=(5, 3, 7), mode="trilinear", align_corners=False)),
    ((1, 2, 3, 4, 5), dict(scale_factor=(0.7, 2.0, 1.0), mode="trilinear", align_corners=True)),
]


@pytest.mark.parametrize("shape, kw", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_interpolate_and_backward(cp, shape, kw, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ref = fc.interpolate(x, **kw)
    g = rng.standard_normal(ref.shape).astype(dtype)
    ref_dx = fc.interpolate_backward(g, shape, **kw)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, fc.interpolate(xd, **kw), ref)
    assert_matches(cp, fc.interpolate_backward(gd, shape, **kw), ref_dx)
    assert_bitwise_repeatable(cp, lambda: fc.interpolate(xd, **kw))
    assert_bitwise_repeatable(cp, lambda: fc.interpolate_backward(gd, shape, **kw))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.Upsample(scale_factor=2, mode="nearest"),
        lambda: nn.Upsample(size=(7, 5), mode="bilinear", align_corners=False),
        lambda: nn.UpsamplingNearest2d(scale_factor=3),
        lambda: nn.UpsamplingBilinear2d(size=(9, 11)),
    ],
)
def test_upsampling_layers(cp, layer):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    cpu, gpu = layer(), layer().to("cuda")
    ref = cpu(x)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    ref_dx = cpu.backward(g)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, gpu(xd), ref)
    assert_matches(cp, gpu.backward(gd), ref_dx)
