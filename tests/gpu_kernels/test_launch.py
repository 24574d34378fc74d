"""The kernel launcher: grid-stride kernels cover every work item, in the simulator on
NumPy arrays (CI) and on the GPU where there is one."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from numba import cuda  # noqa: E402

from foldconv.cuda import kernel, simulated  # noqa: E402
from foldconv.cuda.launch import launch_config  # noqa: E402


@kernel
def _affine(n, x, alpha, beta, out):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = alpha * x[i] + beta


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100])
def test_grid_stride_loop_covers_every_item(n):
    x = np.arange(n, dtype=np.float32)
    out = np.full(n, np.nan, np.float32)
    _affine(n, n, x, np.float32(2), np.float32(1), out)
    np.testing.assert_array_equal(out, 2 * x + 1)


def test_nothing_to_do_launches_nothing():
    out = np.zeros(0, np.float64)
    _affine(0, 0, out, 1.0, 1.0, out)  # a zero-size grid would be a CUDA error


def test_launch_config():
    blocks, threads = launch_config(10**9)
    assert blocks >= 1 and threads >= 1
    if simulated():  # the simulator runs each thread as a Python thread: keep it small
        assert blocks * threads <= 64
