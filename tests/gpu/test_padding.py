"""pad / pad_backward and the convolution's padding modes on CuPy arrays against the CPU
path (the adjoint of reflect, replicate and circular padding is a gather kernel there), run
to run bit for bit, and the padding layers on the GPU."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from foldconv.functional.padding import apply_pad, pad_adjoint
from tests.gpu._funcs import assert_bitwise_repeatable, assert_matches, on_gpu

PAD_CASES = [
    ("constant", (2, 3, 5), (1, 2)),
    ("constant", (2, 3, 4, 5), (-1, 2, 3, -2)),
    ("reflect", (2, 3, 5), (4, 1)),
    ("reflect", (3, 4, 5), (1, 2, 3, 0)),
    ("reflect", (2, 2, 3, 4, 5), (1, 1, 2, 0, 0, 2)),
    ("replicate", (2, 2, 3), (5, 4)),
    ("replicate", (0, 2, 3, 4), (1, 2, 2, 1)),
    ("replicate", (1, 2, 2, 3, 2), (2, 1, 0, 1, 3, 2)),
    ("circular", (2, 3, 4), (4, 2)),
    ("circular", (1, 2, 5, 4), (-1, 2, 1, -2)),
    ("circular", (1, 2, 2, 3, 4), (1, 1, 3, 0, 2, 1)),
]


@pytest.mark.parametrize("mode, shape, pad", PAD_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pad_and_backward(cp, mode, shape, pad, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ref = fc.pad(x, pad, mode)
    g = rng.standard_normal(ref.shape).astype(dtype)
    ref_dx = fc.pad_backward(g, shape, pad, mode)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, fc.pad(xd, pad, mode), ref)
    assert_matches(cp, fc.pad_backward(gd, shape, pad, mode), ref_dx)
    assert_bitwise_repeatable(cp, lambda: fc.pad_backward(gd, shape, pad, mode))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "shape, pads",
    [((2, 3, 6), ((2, 3),)), ((2, 3, 9, 7), ((1, 2), (3, 1))), ((1, 2, 4, 5, 3), ((1, 1),) * 3)],
)
def test_convolution_padding_modes(cp, mode, shape, pads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    ref = apply_pad(x, pads, mode)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    ref_dx = pad_adjoint(g, shape[2:], pads, mode)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, apply_pad(xd, pads, mode), ref)
    assert_matches(cp, pad_adjoint(gd, shape[2:], pads, mode), ref_dx)
    assert_bitwise_repeatable(cp, lambda: pad_adjoint(gd, shape[2:], pads, mode))


def test_a_large_reflect_adjoint(cp):
    """AlexNet-sized feature maps: the kernel's grid-stride loop covers more than one grid."""
    rng = np.random.default_rng(2)
    g = rng.standard_normal((8, 64, 31, 29)).astype(np.float32)
    pads = ((2, 2), (3, 1))
    ref = pad_adjoint(g, (27, 25), pads, "reflect")
    (gd,) = on_gpu(cp, g)
    assert_matches(cp, pad_adjoint(gd, (27, 25), pads, "reflect"), ref)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.ReflectionPad1d((2, 1)), (2, 3, 5)),
        (lambda: nn.ReflectionPad2d(2), (2, 3, 4, 5)),
        (lambda: nn.ReflectionPad3d((1, 0, 1, 2, 0, 1)), (1, 2, 3, 4, 3)),
        (lambda: nn.ReplicationPad1d(3), (2, 3, 4)),
        (lambda: nn.ReplicationPad2d((1, 2, 3, 0)), (2, 3, 4, 5)),
        (lambda: nn.ReplicationPad3d(2), (1, 2, 3, 2, 3)),
        (lambda: nn.CircularPad1d(2), (2, 3, 4)),
        (lambda: nn.CircularPad2d((1, 2, 2, 1)), (2, 3, 4, 5)),
        (lambda: nn.CircularPad3d(1), (1, 2, 3, 2, 3)),
        (lambda: nn.ConstantPad2d((1, 2, 0, 1), 0.5), (2, 3, 4, 5)),
        (lambda: nn.ZeroPad2d(1), (2, 3, 4, 5)),
    ],
)
def test_padding_layers(cp, layer, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    cpu, gpu = layer(), layer().to("cuda")
    ref = cpu(x)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    ref_dx = cpu.backward(g)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, gpu(xd), ref)
    assert_matches(cp, gpu.backward(gd), ref_dx)
