"""erf, erfc and the exact GELU on the GPU path (one element-wise kernel each; Numba's CUDA
simulator without a GPU) against the CPU path's series and continued fraction."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import foldconv.functional as fc  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402

RTOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}


def _close(got, ref, rtol=None):
    """Same shape and dtype, NaN where the CPU path has NaN, and equal to rtol relative to
    the largest finite magnitude (infinities must match exactly)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    rtol = RTOL[ref.dtype.type] if rtol is None else rtol
    finite = np.isfinite(ref)
    scale = float(np.max(np.abs(ref[finite].astype(np.float64)))) if finite.any() else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def _inputs(dtype, shape=(5, 11)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3
    flat = x.reshape(-1)
    # Both sides of the series/fraction split at |x| = 2 (and at 2 sqrt 2 for GELU's
    # erfc(-x / sqrt 2)), zeros, the far tails, infinities and NaN.
    special = [0.0, -0.0, 1.999, 2.0, 2.001, -2.83, 2.83, 6.0, -6.0, 12.0, -30.0]
    special += [np.inf, -np.inf, np.nan]
    flat[: len(special)] = special
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("f", [fc.erf, fc.erfc, fc.gelu])
def test_elementwise_matches_the_cpu_path(f, dtype):
    x = _inputs(dtype)
    with np.errstate(invalid="ignore"):
        ref = f(x)
        with gpu_path_on_cpu():
            got = f(x)
    _close(got, ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_gelu_backward_matches_the_cpu_path(dtype):
    x = _inputs(dtype)
    g = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    with np.errstate(invalid="ignore"):
        ref = fc.gelu_backward(g, x)
        with gpu_path_on_cpu():
            got = fc.gelu_backward(g, x)
    _close(got, ref)


def test_mixed_dtypes_and_strides():
    """dy in float64 with x in float32 gives float64 (as on the CPU) of float32 accuracy
    (the CPU path evaluates GELU' in x's dtype, the GPU path in float64); views are copied."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]
    g = rng.standard_normal((6, 4))
    ref = fc.gelu_backward(g, x)
    with gpu_path_on_cpu():
        got = fc.gelu_backward(g, x)
    _close(got, ref, rtol=RTOL[np.float32])
    ref = fc.gelu(x.T)
    with gpu_path_on_cpu():
        got = fc.gelu(x.T)
    _close(got, ref)


@pytest.mark.parametrize("shape", [(), (0, 3)])
def test_zero_d_and_empty(shape):
    x = np.full(shape, 0.7)
    for f in (fc.erf, fc.erfc, fc.gelu):
        ref = f(x)
        with gpu_path_on_cpu():
            got = f(x)
        _close(got, ref)
    ref = fc.gelu_backward(x, x)
    with gpu_path_on_cpu():
        got = fc.gelu_backward(x, x)
    _close(got, ref)
