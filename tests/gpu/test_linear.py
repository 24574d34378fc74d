"""linear, flatten, pixel (un)shuffle on CuPy arrays against the CPU path (GEMMs through
cuBLAS, strict float32), run to run bit for bit, and their layers on the GPU."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gpu._funcs import assert_bitwise_repeatable, assert_matches, on_gpu


@pytest.mark.parametrize("lead", [(5,), (2, 3), (0,), ()])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_linear_and_backward(cp, lead, bias, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(lead + (7,)).astype(dtype)
    w = rng.standard_normal((4, 7)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype) if bias else None
    ref = fc.linear(x, w, b)
    g = rng.standard_normal(ref.shape).astype(dtype)
    ref_grads = fc.linear_backward(g, x, w, need_bias_grad=bias)
    xd, wd, bd, gd = on_gpu(cp, x, w, b, g)
    assert_matches(cp, fc.linear(xd, wd, bd), ref)
    for got, r in zip(fc.linear_backward(gd, xd, wd, need_bias_grad=bias), ref_grads, strict=True):
        assert_matches(cp, got, r)
    assert_bitwise_repeatable(cp, lambda: fc.linear_backward(gd, xd, wd, need_bias_grad=bias))


def test_alexnet_sized_linear(cp):
    """fc7's GEMMs, 128 x 4096 x 4096 in float32: strict float32 (no TF32) by default."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 4096)).astype(np.float32)
    w = (rng.standard_normal((4096, 4096)) / 64).astype(np.float32)
    b = rng.standard_normal(4096).astype(np.float32)
    g = rng.standard_normal((128, 4096)).astype(np.float32)
    ref = fc.linear(x, w, b)
    ref_grads = fc.linear_backward(g, x, w)
    xd, wd, bd, gd = on_gpu(cp, x, w, b, g)
    assert_matches(cp, fc.linear(xd, wd, bd), ref)
    for got, r in zip(fc.linear_backward(gd, xd, wd), ref_grads, strict=True):
        assert_matches(cp, got, r)
    assert_bitwise_repeatable(cp, lambda: fc.linear_backward(gd, xd, wd))


@pytest.mark.parametrize("r, shape", [(2, (2, 8, 3, 4)), (3, (9, 2, 2)), (1, (1, 3, 2, 2))])
def test_pixel_shuffle_and_unshuffle(cp, r, shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    (xd,) = on_gpu(cp, x)
    ref = fc.pixel_shuffle(x, r)
    assert_matches(cp, fc.pixel_shuffle(xd, r), ref)
    (yd,) = on_gpu(cp, ref)
    assert_matches(cp, fc.pixel_shuffle_backward(yd, r), fc.pixel_shuffle_backward(ref, r))
    ref = fc.pixel_unshuffle(ref, r)
    assert_matches(cp, fc.pixel_unshuffle(fc.pixel_shuffle(xd, r), r), ref)
    assert_matches(cp, fc.pixel_unshuffle_backward(xd, r), fc.pixel_unshuffle_backward(x, r))


def test_flatten(cp):
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    (xd,) = on_gpu(cp, x)
    y = fc.flatten(xd, 1, 2)
    assert_matches(cp, y, fc.flatten(x, 1, 2))
    assert_matches(cp, fc.flatten_backward(y, x.shape), x)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda **kw: nn.Linear(6, 3, rng=0, **kw), (4, 6)),
        (lambda **kw: nn.Linear(6, 3, bias=False, rng=0, **kw), (2, 5, 6)),
        (lambda **kw: nn.Flatten(), (2, 3, 2, 2)),
        (lambda **kw: nn.PixelShuffle(2), (2, 8, 3, 3)),
        (lambda **kw: nn.PixelUnshuffle(2), (2, 2, 4, 6)),
        (lambda **kw: nn.Identity(), (3, 4)),
    ],
)
def test_layers(cp, make, shape):
    rng = np.random.default_rng(4)
    cpu = make()
    gpu = make(device="cuda") if isinstance(cpu, nn.Linear) else make().to("cuda")
    x = rng.standard_normal(shape).astype(np.float32)
    ref = cpu(x)
    g = rng.standard_normal(ref.shape).astype(np.float32)
    ref_dx = cpu.backward(g)
    xd, gd = on_gpu(cp, x, g)
    assert_matches(cp, gpu(xd), ref)
    assert_matches(cp, gpu.backward(gd), ref_dx)
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters(), strict=True):
        assert isinstance(p_gpu.data, cp.ndarray)
        assert_matches(cp, p_gpu.grad, p_cpu.grad)
