"""Dropout on the GPU path: the device receives the host's keep-bits and scales them
itself, and the mask is the CPU path's bit for bit for the same generator state."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv.cuda.testing import gpu_path_on_cpu


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_mask_is_the_cpu_paths_bit_for_bit(p, dtype):
    ref = fc.dropout_mask((4, 33), p, np.random.default_rng(7), dtype=dtype)
    with gpu_path_on_cpu():
        got = fc.dropout_mask((4, 33), p, np.random.default_rng(7), dtype=dtype)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(
    "f, shape",
    [
        (fc.dropout, (3, 5, 4)),
        (fc.dropout, (0, 4)),
        (fc.dropout1d, (2, 3, 5)),
        (fc.dropout1d, (3, 5)),
        (fc.dropout2d, (2, 3, 4, 4)),
        (fc.dropout3d, (2, 3, 2, 2, 2)),
        (fc.dropout3d, (3, 2, 2, 2)),
    ],
)
def test_forward_and_backward_match_the_cpu_path(f, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    backward = fc.dropout_backward if f is fc.dropout else fc.channel_dropout_backward
    y_ref, m_ref = f(x, 0.4, True, rng=np.random.default_rng(5))
    with gpu_path_on_cpu():
        y, m = f(x, 0.4, True, rng=np.random.default_rng(5))
        dx = backward(g, m)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, backward(g, m_ref))
