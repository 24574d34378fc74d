"""Local response normalisation on CuPy arrays (a real GPU) against the CPU path, on the
cases of tests/gpu_kernels/test_lrn.py, each GPU run twice with bitwise equal results; and
the LocalResponseNorm layer's forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv.nn as nn
from foldconv.functional import local_response_norm, local_response_norm_backward
from tests.gpu.conftest import to_cpu
from tests.gpu.test_pooling import assert_bitwise_equal, gpu_vs_cpu
from tests.gpu_kernels.test_lrn import LRN_CASES, _data
from tests.gpu_kernels.test_pooling import DTYPES, assert_close


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LRN_CASES))
def test_lrn_forward_and_backward(cp, name, dtype):
    shape, size, alpha, beta, k = LRN_CASES[name]
    x = _data(shape, dtype, 1, scale=2.0)
    g = _data(shape, dtype, 2)
    want, got = gpu_vs_cpu(cp, local_response_norm, x, size, alpha, beta, k)
    assert_close(got[0], want[0])
    y, cache = local_response_norm(x, size, alpha, beta, k, return_cache=True)
    want, got = gpu_vs_cpu(cp, local_response_norm_backward, g, x, size, alpha, beta, k)
    assert_close(got[0], want[0])
    # the cache as the GPU forward makes it
    y_g, cache_g = local_response_norm(cp.asarray(x), size, alpha, beta, k, return_cache=True)
    assert_close(to_cpu(y_g), y)
    assert_close(to_cpu(cache_g[0]), cache[0])
    assert_close(to_cpu(cache_g[1]), cache[1])
    gx = local_response_norm_backward(cp.asarray(g), cp.asarray(x), size, alpha, beta, k, cache_g)
    assert_close(to_cpu(gx), want[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_forward_and_backward_on_cupy(cp, dtype):
    x = _data((2, 8, 7, 6), dtype, 3, scale=3.0)
    g = _data(x.shape, dtype, 4)
    runs = []
    for on_gpu in (False, True, True):
        layer = nn.LocalResponseNorm(5, alpha=5e-2, beta=0.75, k=2.0)
        xs, gs = (cp.asarray(x), cp.asarray(g)) if on_gpu else (x, g)
        y = layer(xs)
        gx = layer.backward(gs)
        runs.append((to_cpu(y), to_cpu(gx)))
    for got in runs[1:]:
        assert_close(got[0], runs[0][0])
        assert_close(got[1], runs[0][1])
    assert_bitwise_equal(runs[1][0], runs[2][0])
    assert_bitwise_equal(runs[1][1], runs[2][1])
    assert np.isfinite(runs[1][1]).all()
