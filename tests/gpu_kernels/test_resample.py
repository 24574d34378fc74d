"""interpolate and its backward on the GPU path (in Numba's CUDA simulator without a GPU)
against the CPU path: every mode is one gather kernel per axis there, the backward's
scatter included (foldconv.cuda.axis_map)."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import foldconv.functional as fc  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402

RTOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}


def _close(got, ref):
    """Same shape and dtype, and equal to rtol relative to the largest magnitude."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    rtol = RTOL[ref.dtype.type]
    scale = float(np.max(np.abs(ref.astype(np.float64)))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


CASES = [
    ((2, 3, 5), dict(scale_factor=2, mode="nearest")),
    ((1, 2, 7), dict(size=3, mode="nearest")),
    ((1, 2, 4, 5), dict(scale_factor=2, mode="nearest")),  # torch's 2-d halving shortcut
    ((1, 2, 4, 5), dict(size=(3, 8), mode="nearest")),
    ((1, 2, 4, 5), dict(scale_factor=(1.7, 0.6), mode="nearest-exact")),
    ((1, 1, 2, 3, 4), dict(size=(3, 3, 5), mode="nearest")),
    ((2, 2, 5), dict(size=8, mode="linear", align_corners=False)),
    ((2, 2, 5), dict(scale_factor=0.5, mode="linear", align_corners=True)),
    ((1, 2, 4, 3), dict(size=(7, 2), mode="bilinear", align_corners=True)),
    ((1, 2, 4, 3), dict(scale_factor=1.5, mode="bilinear", align_corners=False)),
    ((1, 2, 4, 3), dict(size=(1, 5), mode="bilinear", align_corners=True)),  # one output
    ((1, 2, 4, 3), dict(scale_factor=2.5, mode="bilinear", recompute_scale_factor=True)),
    ((0, 2, 4, 3), dict(scale_factor=2, mode="bilinear")),  # empty batch
    ((1, 1, 3, 2, 4), dict(size=(4, 2, 3), mode="trilinear", align_corners=False)),
    ((1, 1, 3, 2, 4), dict(scale_factor=(0.7, 2.0, 1.0), mode="trilinear", align_corners=True)),
]


@pytest.mark.parametrize("shape, kw", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_interpolate_and_backward_match_the_cpu_path(shape, kw, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    ref = fc.interpolate(x, **kw)
    with gpu_path_on_cpu():
        got = fc.interpolate(x, **kw)
    _close(got, ref)
    g = rng.standard_normal(ref.shape).astype(dtype)
    ref = fc.interpolate_backward(g, shape, **kw)
    with gpu_path_on_cpu():
        got = fc.interpolate_backward(g, shape, **kw)
    _close(got, ref)


def test_float16_computes_in_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float16)
    kw = dict(size=(5, 7), mode="bilinear", align_corners=False)
    ref = fc.interpolate(x, **kw)
    with gpu_path_on_cpu():
        got = fc.interpolate(x, **kw)
    _close(got, ref)
    g = rng.standard_normal(ref.shape).astype(np.float16)
    ref = fc.interpolate_backward(g, x.shape, **kw)
    with gpu_path_on_cpu():
        got = fc.interpolate_backward(g, x.shape, **kw)
    _close(got, ref)
