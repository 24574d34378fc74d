"""Pooling's GPU path (foldconv.cuda.pooling) against the CPU path, in Numba's CUDA simulator.

Inside ``gpu_path_on_cpu()`` the public functions run their numba-cuda kernels on NumPy
arrays; outside, the CPU path. Forwards and backwards must agree (float64 <= 1e-10,
float32 <= 1e-5 relative, max-pool indices equal) and each must be one kernel launch.
The case lists are shared with tests/gpu/test_pooling.py (CuPy on a real GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import foldconv.functional as F  # noqa: E402
from foldconv.cuda import launch  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = [np.float64, np.float32]

# (shape, kernel_size, stride, padding, dilation, ceil_mode); the rank is len(kernel_size)
MAX_CASES = {
    "alexnet_3x3_s2": ((2, 3, 13, 13), (3, 3), (2, 2), 0, 1, False),
    "padding": ((2, 2, 7, 8), (3, 3), (2, 2), 1, 1, False),
    "dilation": ((1, 2, 9, 9), (3, 3), (1, 1), 1, 2, False),
    "ceil_mode": ((2, 2, 8, 8), (3, 3), (2, 2), 0, 1, True),
    "ceil_mode_padding": ((1, 2, 7, 6), (2, 2), (2, 2), 1, 1, True),
    "rect_stride_none": ((2, 2, 6, 9), (2, 3), None, 0, 1, False),
    "1d": ((2, 3, 11), (3,), (2,), 1, 1, False),
    "1d_dilation_ceil": ((2, 2, 10), (3,), (2,), 1, 2, True),
    "3d": ((1, 2, 5, 6, 5), (2, 3, 2), (2, 1, 2), (1, 1, 0), (2, 1, 2), True),
    "unbatched": ((3, 9, 9), (3, 3), (2, 2), 1, 1, False),
    "empty_batch": ((0, 3, 9, 9), (3, 3), (2, 2), 0, 1, False),
    "over_256_taps": ((1, 2, 18, 17), (17, 16), (1, 1), 0, 1, False),  # uint16 argmax
}

# (shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = {
    "alexnet_3x3_s2": ((2, 3, 13, 13), 3, 2, 0, False, True, None),
    "padding_include": ((2, 2, 7, 8), 3, 2, 1, False, True, None),
    "padding_exclude": ((2, 2, 7, 8), 3, 2, 1, False, False, None),
    "ceil_mode": ((2, 2, 8, 7), (3, 2), (2, 2), (1, 1), True, True, None),
    "ceil_mode_exclude": ((2, 2, 8, 7), (3, 2), (2, 2), (1, 1), True, False, None),
    "divisor_override": ((2, 2, 7, 7), 3, 2, 1, False, True, 5),
    "1d": ((2, 3, 11), (3,), (2,), (1,), True, False, None),
    "3d": ((1, 2, 5, 6, 5), (2, 3, 2), (2, 1, 2), (1, 1, 0), True, False, 7),
    "unbatched": ((3, 9, 9), 3, 2, 1, False, True, None),
    "empty_batch": ((0, 3, 9, 9), 3, 2, 0, False, True, None),
}

# (shape, output_size); the rank is len(output_size)
ADAPTIVE_CASES = {
    "1d_non_divisible": ((2, 3, 10), (4,)),
    "2d_non_divisible": ((2, 3, 7, 9), (3, 4)),
    "2d_none_keeps_size": ((2, 2, 7, 5), (4, None)),
    "2d_upsampling": ((1, 2, 3, 4), (5, 7)),
    "2d_global": ((2, 4, 6, 6), (1, 1)),
    "3d": ((1, 2, 5, 4, 3), (2, 3, 2)),
    "unbatched": ((3, 7, 9), (3, 4)),
    "empty_batch": ((0, 3, 7, 9), (3, 4)),
    "empty_output": ((2, 3, 7, 9), (0, 4)),
    "unbatched_zero_channels": ((0, 7, 9), (3, 4)),
}


def assert_close(got, want, dtype=None):
    """Same shape and dtype; NaNs in the same places; elsewhere within TOL (relative to the
    largest magnitude of ``want``)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    got, want = got[~nan], want[~nan]
    if want.size:
        tol = TOL[np.dtype(dtype or want.dtype)]
        scale = max(float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)), 1e-30)
        finite = np.isfinite(want)
        np.testing.assert_array_equal(got[~finite], want[~finite])
        err = float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))
        assert err <= tol * scale, f"max error {err:.3g} > {tol:g} * {scale:.3g}"


def both_paths(fn, *args, **kwargs):
    """(CPU path result, GPU path result, kernel launches on the GPU path)."""
    want = fn(*args, **kwargs)
    launches = []
    call = launch.Kernel.__call__

    def counting(self, n, *a):
        if n > 0:  # (a Kernel launches nothing for no work)
            launches.append(self.__name__)
        return call(self, n, *a)

    launch.Kernel.__call__ = counting
    try:
        with gpu_path_on_cpu():
            got = fn(*args, **kwargs)
    finally:
        launch.Kernel.__call__ = call
    return want, got, launches


def _data(shape, dtype, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many windows hold several equal maxima
        return rng.integers(-2, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _max_args(case):
    shape, kernel, stride, padding, dilation, ceil_mode = case
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    return shape, dict(kw, ceil_mode=ceil_mode, dims=len(kernel))


def _single(launches, empty):
    assert len(launches) == (0 if empty else 1), launches


# -- max pooling -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_pool_forward_and_backward(name, ties, dtype):
    shape, kw = _max_args(MAX_CASES[name])
    x = _data(shape, dtype, 1, ties)
    empty = x.size == 0
    for mode in (False, True, "argmax"):
        want, got, launches = both_paths(F.max_pool, x, return_indices=mode, **kw)
        _single(launches, empty)
        if mode is False:
            assert_close(got, want)
            continue
        assert_close(got[0], want[0])
        assert got[1].dtype == want[1].dtype
        np.testing.assert_array_equal(got[1], want[1])
    _, flat = F.max_pool(x, return_indices=True, **kw)
    y, argmax = F.max_pool(x, return_indices="argmax", **kw)
    g = _data(y.shape, dtype, 2)
    want, got, launches = both_paths(F.max_pool_backward, g, argmax, shape, **kw)
    _single(launches, empty)
    assert_close(got, want)
    want_f, got_f, _ = both_paths(F.max_pool_backward, g, flat, shape, indices_kind="flat", **kw)
    assert_close(got_f, want_f)
    assert_close(got_f, want)


def test_max_pool_per_rank_functions():
    x = _data((2, 3, 9, 8), np.float64, 3)
    want, got, _ = both_paths(F.max_pool2d, x, 3, 2, 1, 1, True, True)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    x1 = _data((2, 3, 9), np.float32, 3)
    want, got, _ = both_paths(F.max_pool1d, x1, 2, 1)
    assert_close(got, want)
    x3 = _data((1, 2, 4, 5, 4), np.float64, 3)
    want, got, _ = both_paths(F.max_pool3d, x3, 2, 2, 1, 1, True, True)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_nan_and_minus_inf_as_the_cpu_path(dtype):
    """A NaN wins its window (the last NaN); -inf windows beside padding keep tap 0."""
    x = _data((1, 2, 6, 6), dtype, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 1, :2, :2] = -np.inf
    kw = dict(kernel_size=3, stride=2, padding=1, dims=2)
    for mode in (False, True, "argmax"):
        want, got, _ = both_paths(F.max_pool, x, return_indices=mode, **kw)
        if mode is False:
            assert_close(got, want)
        else:
            assert_close(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    y, argmax = F.max_pool(x, return_indices="argmax", **kw)
    g = _data(y.shape, dtype, 5)
    want, got, _ = both_paths(F.max_pool_backward, g, argmax, x.shape, **kw)
    assert_close(got, want)


def test_max_pool_float16_is_computed_in_float32():
    x = _data((2, 2, 7, 7), np.float16, 6)
    want, got, _ = both_paths(F.max_pool, x, 3, 2, 1, dims=2, return_indices="argmax")
    assert got[0].dtype == np.float16
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_avg_and_adaptive_pools_of_float16_are_computed_in_float32():
    x = _data((2, 2, 7, 7), np.float16, 6)
    for fn, args in (
        (F.avg_pool2d, (3, 2, 1)),
        (F.adaptive_avg_pool2d, ((3, 4),)),
        (F.adaptive_max_pool2d, ((3, 4),)),
    ):
        want, got, _ = both_paths(fn, x, *args)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3)


def test_max_pool_backward_checks_flat_indices_on_the_gpu_path():
    x = _data((1, 1, 6, 6), np.float64, 7)
    y, flat = F.max_pool(x, 2, return_indices=True, dims=2)
    flat[0, 0, 0, 0] = 35  # not in window (0, 0)
    with gpu_path_on_cpu(), pytest.raises(ValueError, match="indices: expected positions inside"):
        F.max_pool_backward(np.ones_like(y), flat, x.shape, 2, dims=2, indices_kind="flat")


# -- average pooling -------------------------------------------------------------------------
_AVG = {1: (F.avg_pool1d, F.avg_pool1d_backward), 2: (F.avg_pool2d, F.avg_pool2d_backward)}
_AVG[3] = (F.avg_pool3d, F.avg_pool3d_backward)


def _avg_args(case):
    shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor = case
    dims = len(kernel) if isinstance(kernel, tuple) else len(shape) - 2
    kw = dict(
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    if divisor is not None:
        kw["divisor_override"] = divisor
    return shape, dims, kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_pool_forward_and_backward(name, dtype):
    shape, dims, kw = _avg_args(AVG_CASES[name])
    forward, backward = _AVG[dims]
    x = _data(shape, dtype, 8)
    empty = x.size == 0
    want, got, launches = both_paths(forward, x, **kw)
    _single(launches, empty)
    assert_close(got, want)
    g = _data(want.shape, dtype, 9)
    want, got, launches = both_paths(backward, g, shape, **kw)
    _single(launches, empty)
    assert_close(got, want)


# -- adaptive pooling ------------------------------------------------------------------------
_ADAPTIVE_AVG = {
    1: (F.adaptive_avg_pool1d, F.adaptive_avg_pool1d_backward),
    2: (F.adaptive_avg_pool2d, F.adaptive_avg_pool2d_backward),
    3: (F.adaptive_avg_pool3d, F.adaptive_avg_pool3d_backward),
}
_ADAPTIVE_MAX = {
    1: (F.adaptive_max_pool1d, F.adaptive_max_pool1d_backward),
    2: (F.adaptive_max_pool2d, F.adaptive_max_pool2d_backward),
    3: (F.adaptive_max_pool3d, F.adaptive_max_pool3d_backward),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_avg_pool_forward_and_backward(name, dtype):
    shape, out = ADAPTIVE_CASES[name]
    forward, backward = _ADAPTIVE_AVG[len(out)]
    x = _data(shape, dtype, 10)
    want, got, launches = both_paths(forward, x, out)
    _single(launches, want.size == 0)
    assert_close(got, want)
    g = _data(want.shape, dtype, 11)
    want, got, launches = both_paths(backward, g, shape)
    _single(launches, want.size == 0 or g.size == 0)
    assert_close(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_max_pool_forward_and_backward(name, ties, dtype):
    shape, out = ADAPTIVE_CASES[name]
    forward, backward = _ADAPTIVE_MAX[len(out)]
    x = _data(shape, dtype, 12, ties)
    want, got, launches = both_paths(forward, x, out, return_indices=True)
    _single(launches, want[0].size == 0)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    g = _data(want[0].shape, dtype, 13)
    want, got, launches = both_paths(backward, g, want[1], shape)
    _single(launches, g.size == 0)
    assert_close(got, want)


def test_adaptive_max_pool_nan_wins_as_the_cpu_path():
    x = _data((1, 2, 7, 9), np.float64, 14)
    x[0, 0, 2, 3] = x[0, 1, 5, 5] = x[0, 1, 5, 6] = np.nan
    want, got, _ = both_paths(F.adaptive_max_pool2d, x, (3, 4), return_indices=True)
    assert_close(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_adaptive_max_backward_rejects_an_index_outside_its_bin():
    x = _data((1, 1, 6, 6), np.float64, 15)
    y, idx = F.adaptive_max_pool2d(x, 2, return_indices=True)
    idx[0, 0, 0, 0] = 35  # inside the plane, but in bin (1, 1)
    with gpu_path_on_cpu(), pytest.raises(ValueError, match="indices: expected each output"):
        F.adaptive_max_pool2d_backward(np.ones_like(y), idx, x.shape)
