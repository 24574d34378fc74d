"""Local response normalisation's GPU path (foldconv.cuda.lrn) against the CPU path, in
Numba's CUDA simulator: forward, cache and backward (with and without the cache), one
kernel launch each. The cases are shared with tests/gpu/test_lrn.py (CuPy on a real GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from foldconv.functional import local_response_norm, local_response_norm_backward  # noqa: E402
from tests.gpu_kernels.test_pooling import DTYPES, assert_close, both_paths  # noqa: E402

# (shape, size, alpha, beta, k)
LRN_CASES = {
    "alexnet": ((2, 7, 3, 4), 5, 5e-4, 0.75, 2.0),
    "strong": ((2, 6, 3, 3), 3, 1.5, 0.9, 1.0),
    "size_even": ((2, 7, 3, 2), 4, 0.3, 0.6, 1.5),
    "size_1": ((1, 4, 2, 3), 1, 0.5, 0.75, 1.0),
    "size_over_channels": ((2, 3, 4), 12, 0.8, 1.2, 0.7),
    "3d_input": ((2, 5, 6), 3, 0.2, 0.75, 1.0),
    "5d_input": ((1, 6, 2, 2, 3), 5, 0.4, 0.5, 1.0),
    "empty_batch": ((0, 4, 3, 3), 5, 1e-2, 0.75, 1.0),
}


def _data(shape, dtype, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _single(launches, empty):
    assert len(launches) == (0 if empty else 1), launches


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LRN_CASES))
def test_lrn_forward_and_backward(name, dtype):
    shape, size, alpha, beta, k = LRN_CASES[name]
    x = _data(shape, dtype, 1, scale=2.0)
    g = _data(shape, dtype, 2)
    empty = x.size == 0
    want, got, launches = both_paths(local_response_norm, x, size, alpha, beta, k)
    _single(launches, empty)
    assert_close(got, want)
    want, got, launches = both_paths(
        local_response_norm, x, size, alpha, beta, k, return_cache=True
    )
    _single(launches, empty)
    assert_close(got[0], want[0])
    assert_close(got[1][0], want[1][0])
    assert_close(got[1][1], want[1][1])
    cache = want[1]
    want, got, launches = both_paths(local_response_norm_backward, g, x, size, alpha, beta, k)
    _single(launches, empty)
    assert_close(got, want)
    want_c, got_c, launches = both_paths(
        local_response_norm_backward, g, x, size, alpha, beta, k, cache=cache
    )
    _single(launches, empty)
    assert_close(got_c, want_c)
    assert_close(got_c, want)


def test_lrn_float16_is_computed_in_float32():
    x = _data((2, 6, 3, 3), np.float16, 3)
    g = _data((2, 6, 3, 3), np.float16, 4)
    want, got, _ = both_paths(local_response_norm, x, 5, 0.5, 0.75, 1.0)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3)
    want, got, _ = both_paths(local_response_norm_backward, g, x, 5, 0.5, 0.75, 1.0)
    assert got.dtype == np.float16
    np.testing.assert_allclose(
        got.astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3
    )
