"""Dropout on CuPy arrays: the same mask as the CPU path for the same generator state,
bit for bit (the draws stay on the host; the device receives one byte per element), and
the dropout layers on the GPU."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gpu._funcs import on_gpu
from tests.gpu.conftest import to_cpu


def _equal(cp, got, ref):
    assert isinstance(got, cp.ndarray) and got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(to_cpu(got), ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("p", [0.3, 0.5, 1.0])
def test_mask_is_the_cpu_paths(cp, p, dtype):
    ref = fc.dropout_mask((128, 4096), p, np.random.default_rng(7), dtype=dtype)
    got = fc.dropout_mask((128, 4096), p, np.random.default_rng(7), dtype=dtype, xp=cp)
    _equal(cp, got, ref)


@pytest.mark.parametrize(
    "f, shape",
    [
        (fc.dropout, (3, 5, 4)),
        (fc.dropout, (0, 4)),
        (fc.dropout1d, (2, 3, 5)),
        (fc.dropout2d, (2, 3, 4, 4)),
        (fc.dropout3d, (2, 3, 2, 2, 2)),
    ],
)
def test_forward_and_backward(cp, f, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    backward = fc.dropout_backward if f is fc.dropout else fc.channel_dropout_backward
    y_ref, m_ref = f(x, 0.4, True, rng=np.random.default_rng(5))
    xd, gd = on_gpu(cp, x, g)
    y, m = f(xd, 0.4, True, rng=np.random.default_rng(5))
    _equal(cp, m, m_ref)
    _equal(cp, y, y_ref)
    _equal(cp, backward(gd, m), backward(g, m_ref))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.Dropout(0.5, rng=3), (128, 64)),
        (lambda: nn.Dropout(0.2, inplace=True, rng=3), (4, 9)),
        (lambda: nn.Dropout2d(0.5, rng=4), (2, 8, 3, 3)),
        (lambda: nn.Dropout3d(0.3, rng=5), (2, 4, 2, 3, 2)),
    ],
)
def test_dropout_layers_draw_the_cpu_layers_masks(cp, layer, shape):
    rng = np.random.default_rng(1)
    cpu, gpu = layer(), layer().to("cuda")
    for _ in range(2):  # the generator advances the same way on both
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        ref, ref_dx = cpu(x.copy()), cpu.backward(g)
        xd, gd = on_gpu(cp, x, g)
        _equal(cp, gpu(xd), ref)
        _equal(cp, gpu.backward(gd), ref_dx)
    cpu.eval()
    gpu.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    _equal(cp, gpu(cp.asarray(x)), cpu(x))
