"""The compiled ReLU against PyTorch (special values included), the NumPy path and the
thread count; the NumPy path's special values against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import activation_compiled, relu, relu_backward, threads

SPECIAL_X = [np.nan, -1.0, 0.0, -0.0, 2.0, -3.0, np.inf, -np.inf, 1e-40, -1e-40]
SPECIAL_DY = [1.0, np.inf, np.nan, 4.0, -5.0, np.nan, 7.0, -np.inf, 2.0, 3.0]


def _torch_relu(x, dy):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("compiled_on", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_match_torch(compiled_on, dtype):
    if compiled_on:
        pytest.importorskip("numba")
    x = np.array(SPECIAL_X, dtype=dtype)
    dy = np.array(SPECIAL_DY, dtype=dtype)
    y_ref, dx_ref = _torch_relu(x, dy)
    before = foldconv.set_compiled(compiled_on)
    try:
        assert activation_compiled.applies(x) == compiled_on
        y = relu(x)
        dx = relu_backward(dy, y)
    finally:
        foldconv.set_compiled(before)
    assert y.dtype == dx.dtype == dtype
    # NaN passes the forward; an inf or NaN dy where y <= 0 gives 0; a NaN y passes dy.
    assert np.array_equal(y, y_ref, equal_nan=True)
    assert np.array_equal(dx, dx_ref, equal_nan=True)
    if compiled_on:  # -0.0 stays -0.0, as PyTorch's clamp_min keeps it
        assert np.array_equal(np.signbit(y), np.signbit(y_ref))


def test_compiled_matches_the_numpy_path_at_any_thread_count():
    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    # Over two chunks of the pool's work, the last one partial; a non-contiguous view.
    n = 2 * activation_compiled._CHUNK + 123
    x = rng.standard_normal(2 * n).astype(np.float32)[::2].reshape(-1, 1)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    before = foldconv.set_compiled(False)
    try:
        y_np = relu(x)
        dx_np = relu_backward(dy, y_np)
    finally:
        foldconv.set_compiled(before)
    budget = foldconv.get_num_threads()
    adaptive = threads.set_adaptive(False)
    try:
        for n_threads in (1, 2, 3):
            foldconv.set_num_threads(n_threads)
            y = relu(x)
            dx = relu_backward(dy, y)
            assert y.shape == x.shape and dx.shape == x.shape
            assert np.array_equal(y, y_np) and np.array_equal(dx, dx_np)
    finally:
        foldconv.set_num_threads(budget)
        threads.set_adaptive(adaptive)


def test_empty_and_zero_dimensional():
    for a in (np.zeros((0, 3), np.float32), np.float64(-2.0) * np.ones(())):
        y = relu(a)
        assert y.shape == a.shape
        assert relu_backward(np.ones_like(a), y).shape == a.shape
