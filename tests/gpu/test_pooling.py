"""Pooling on CuPy arrays (a real GPU) against the CPU path: every public function and
backward on the cases of tests/gpu_kernels/test_pooling.py, each run twice on the GPU with
bitwise equal results; and the nn layers' forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv.functional as F
import foldconv.nn as nn
from tests.gpu.conftest import to_cpu
from tests.gpu_kernels.test_pooling import (
    _ADAPTIVE_AVG,
    _ADAPTIVE_MAX,
    _AVG,
    ADAPTIVE_CASES,
    AVG_CASES,
    DTYPES,
    MAX_CASES,
    _avg_args,
    _data,
    _max_args,
    assert_close,
)


def _on(cp, a):
    return cp.asarray(a) if isinstance(a, np.ndarray) else a


def _results(out):
    return [to_cpu(o) for o in out] if isinstance(out, tuple) else [to_cpu(out)]


def assert_bitwise_equal(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def gpu_vs_cpu(cp, fn, *args, **kwargs):
    """Run fn on NumPy arrays (CPU path) and twice on CuPy copies (GPU path); check the two
    GPU runs are bitwise equal and that results stay CuPy arrays. Returns (cpu, gpu) lists
    of NumPy arrays."""
    want = _results(fn(*args, **kwargs))
    runs = []
    for _ in range(2):
        out = fn(*[_on(cp, a) for a in args], **{k: _on(cp, v) for k, v in kwargs.items()})
        for o in out if isinstance(out, tuple) else (out,):
            assert isinstance(o, cp.ndarray)
        runs.append(_results(out))
    for a, b in zip(*runs, strict=True):
        assert_bitwise_equal(a, b)
    return want, runs[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_pool_forward_and_backward(cp, name, ties, dtype):
    shape, kw = _max_args(MAX_CASES[name])
    x = _data(shape, dtype, 1, ties)
    for mode in (False, True, "argmax"):
        want, got = gpu_vs_cpu(cp, F.max_pool, x, return_indices=mode, **kw)
        assert_close(got[0], want[0])
        if mode is not False:
            np.testing.assert_array_equal(got[1], want[1])
            assert got[1].dtype == want[1].dtype
    _, flat = F.max_pool(x, return_indices=True, **kw)
    y, argmax = F.max_pool(x, return_indices="argmax", **kw)
    g = _data(y.shape, dtype, 2)
    want, got = gpu_vs_cpu(cp, F.max_pool_backward, g, argmax, shape, **kw)
    assert_close(got[0], want[0])
    want, got = gpu_vs_cpu(cp, F.max_pool_backward, g, flat, shape, indices_kind="flat", **kw)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_and_minus_inf(cp, dtype):
    x = _data((1, 2, 6, 6), dtype, 4)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = np.nan
    x[0, 1, :2, :2] = -np.inf
    kw = dict(kernel_size=3, stride=2, padding=1, dims=2)
    want, got = gpu_vs_cpu(cp, F.max_pool, x, return_indices=True, **kw)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    y, argmax = F.max_pool(x, return_indices="argmax", **kw)
    want, got = gpu_vs_cpu(cp, F.max_pool_backward, _data(y.shape, dtype, 5), argmax, x.shape, **kw)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_pool_forward_and_backward(cp, name, dtype):
    shape, dims, kw = _avg_args(AVG_CASES[name])
    forward, backward = _AVG[dims]
    x = _data(shape, dtype, 8)
    want, got = gpu_vs_cpu(cp, forward, x, **kw)
    assert_close(got[0], want[0])
    g = _data(want[0].shape, dtype, 9)
    want, got = gpu_vs_cpu(cp, backward, g, shape, **kw)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_avg_pool_forward_and_backward(cp, name, dtype):
    shape, out = ADAPTIVE_CASES[name]
    forward, backward = _ADAPTIVE_AVG[len(out)]
    x = _data(shape, dtype, 10)
    want, got = gpu_vs_cpu(cp, forward, x, out)
    assert_close(got[0], want[0])
    g = _data(want[0].shape, dtype, 11)
    want, got = gpu_vs_cpu(cp, backward, g, shape)
    assert_close(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_max_pool_forward_and_backward(cp, name, ties, dtype):
    shape, out = ADAPTIVE_CASES[name]
    forward, backward = _ADAPTIVE_MAX[len(out)]
    x = _data(shape, dtype, 12, ties)
    want, got = gpu_vs_cpu(cp, forward, x, out, return_indices=True)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    g = _data(want[0].shape, dtype, 13)
    want, got = gpu_vs_cpu(cp, backward, g, want[1], shape)
    assert_close(got[0], want[0])


def test_adaptive_max_backward_rejects_an_index_outside_its_bin(cp):
    x = _data((1, 1, 6, 6), np.float64, 15)
    y, idx = F.adaptive_max_pool2d(x, 2, return_indices=True)
    idx[0, 0, 0, 0] = 35
    with pytest.raises(ValueError, match="indices: expected each output"):
        F.adaptive_max_pool2d_backward(cp.asarray(np.ones_like(y)), cp.asarray(idx), x.shape)


# -- layers ----------------------------------------------------------------------------------
LAYERS = {
    "MaxPool2d_train": (lambda: nn.MaxPool2d(3, 2), True),
    "MaxPool2d_eval": (lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), False),
    "MaxPool2d_indices": (lambda: nn.MaxPool2d(3, 2, return_indices=True), True),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), True),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((6, 4)), True),
    "AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d((6, 4)), True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_forward_and_backward_on_cupy(cp, name, dtype):
    make, training = LAYERS[name]
    x = _data((2, 3, 13, 11), dtype, 16, ties=name.startswith("MaxPool"))
    runs = []
    for xs in (x, cp.asarray(x), cp.asarray(x)):
        layer = make().train(training)
        y = layer(xs)
        y = y[0] if isinstance(y, tuple) else y
        g = _data(y.shape, dtype, 17)
        gx = layer.backward(_on(cp, g) if isinstance(xs, cp.ndarray) else g)
        runs.append((to_cpu(y), to_cpu(gx)))
    for got in runs[1:]:
        assert_close(got[0], runs[0][0])
        assert_close(got[1], runs[0][1])
    assert_bitwise_equal(runs[1][0], runs[2][0])
    assert_bitwise_equal(runs[1][1], runs[2][1])
