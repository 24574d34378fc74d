"""Batch and group normalisation on CuPy arrays against the CPU path, run to run bit for
bit, and the layers on the GPU: their running statistics stay CuPy arrays on the device."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gpu._funcs import assert_bitwise_repeatable, assert_matches, on_gpu
from tests.gpu.conftest import to_cpu


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 7), (2, 3, 5, 4), (2, 2, 3, 2, 3), (0, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_norm(cp, shape, training, affine, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm_d, rv_d, xd, gd, wd, bd = on_gpu(cp, rm, rv, x, g, w, b)
    y, mean, invstd = fc.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5)
    yd, mean_d, invstd_d = fc.batch_norm_forward(xd, rm_d, rv_d, wd, bd, training, 0.1, 1e-5)
    for got, ref in ((yd, y), (mean_d, mean), (invstd_d, invstd), (rm_d, rm), (rv_d, rv)):
        assert_matches(cp, got, ref)
    ref = fc.batch_norm_backward(g, x, mean, invstd, w, training)
    got = fc.batch_norm_backward(gd, xd, mean_d, invstd_d, wd, training)
    for a, r in zip(got, ref, strict=True):
        assert_matches(cp, a, r)
    assert_bitwise_repeatable(
        cp, lambda: fc.batch_norm_backward(gd, xd, mean_d, invstd_d, wd, training)
    )
    assert_bitwise_repeatable(
        cp, lambda: fc.batch_norm_forward(xd, None, None, wd, bd, True, 0.1, 1e-5)
    )


@pytest.mark.parametrize(
    "shape, groups", [((4, 6), 3), ((2, 6, 5), 2), ((2, 4, 3, 5), 4), ((3, 4, 2, 2, 3), 1)]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_group_norm(cp, shape, groups, affine, dtype):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    xd, gd, wd, bd = on_gpu(cp, x, g, w, b)
    ref = fc.group_norm_forward(x, groups, w, b, 1e-5)
    got = fc.group_norm_forward(xd, groups, wd, bd, 1e-5)
    for a, r in zip(got, ref, strict=True):
        assert_matches(cp, a, r)
    _, mean, invstd = ref
    _, mean_d, invstd_d = got
    ref = fc.group_norm_backward(g, x, mean, invstd, groups, w)
    got = fc.group_norm_backward(gd, xd, mean_d, invstd_d, groups, wd)
    for a, r in zip(got, ref, strict=True):
        assert_matches(cp, a, r)
    assert_bitwise_repeatable(
        cp, lambda: fc.group_norm_backward(gd, xd, mean_d, invstd_d, groups, wd)
    )


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.BatchNorm1d(5), (8, 5)),
        (lambda: nn.BatchNorm1d(3, momentum=None), (4, 3, 6)),
        (lambda: nn.BatchNorm2d(4), (3, 4, 5, 6)),
        (lambda: nn.BatchNorm2d(4, affine=False), (3, 4, 5, 6)),
        (lambda: nn.BatchNorm2d(4, track_running_stats=False), (3, 4, 5, 6)),
        (lambda: nn.BatchNorm3d(2), (2, 2, 3, 4, 3)),
        (lambda: nn.GroupNorm(2, 4), (3, 4, 5, 6)),
        (lambda: nn.GroupNorm(3, 6, affine=False), (2, 6, 7)),
    ],
)
def test_normalization_layers_train_and_eval(cp, layer, shape):
    rng = np.random.default_rng(2)
    cpu, gpu = layer(), layer().to("cuda")
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters(), strict=True):
        p_cpu.data[...] = rng.standard_normal(p_cpu.shape).astype(p_cpu.dtype)
        p_gpu.data[...] = cp.asarray(p_cpu.data)
    for step, training in enumerate((True, True, False)):
        cpu.train(training)
        gpu.train(training)
        x = (rng.standard_normal(shape) + step).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        ref = cpu(x)
        ref_dx = cpu.backward(g)
        xd, gd = on_gpu(cp, x, g)
        assert_matches(cp, gpu(xd), ref)
        assert_matches(cp, gpu.backward(gd), ref_dx)
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters(), strict=True):
        assert_matches(cp, p_gpu.grad, p_cpu.grad)
    for name, b_cpu in cpu.named_buffers():
        b_gpu = dict(gpu.named_buffers())[name]
        if b_cpu is None:
            continue
        assert isinstance(b_gpu, cp.ndarray), name  # running statistics stay on the device
        if b_cpu.dtype.kind == "f":
            assert_matches(cp, b_gpu, b_cpu)
        else:
            np.testing.assert_array_equal(to_cpu(b_gpu), b_cpu)
