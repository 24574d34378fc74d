"""Padding on the GPU path (in Numba's CUDA simulator without a GPU) against the CPU path:
the adjoint of reflect, replicate and circular padding is a gather kernel there
(foldconv.cuda.axis_map), for the convolution's padding modes and for ``pad``."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import foldconv.functional as fc  # noqa: E402
from foldconv.cuda import axis_map  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402
from foldconv.functional.padding import apply_pad, pad_adjoint  # noqa: E402

RTOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}


def _close(got, ref):
    """Same shape and dtype, and equal to rtol relative to the largest magnitude."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    rtol = RTOL[ref.dtype.type]
    scale = float(np.max(np.abs(ref.astype(np.float64)))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def _both(f, *args):
    """f(*args) on the CPU path and on the GPU path."""
    ref = f(*args)
    with gpu_path_on_cpu():
        got = f(*args)
    return got, ref


def test_tables_are_the_map_and_its_transpose():
    rng = np.random.default_rng(0)
    n_in, n_out = 5, 7
    idx0 = rng.integers(-1, n_in, n_out)
    idx1 = rng.integers(0, n_in, n_out)
    w1 = rng.standard_normal(n_out)
    taps = [(idx0, None), (idx1, w1)]
    dense = np.zeros((n_out, n_in))
    for o in range(n_out):
        if idx0[o] >= 0:
            dense[o, idx0[o]] += 1
        dense[o, idx1[o]] += w1[o]
    for table, matrix in (
        (axis_map.forward_table(n_in, n_out, taps), dense),
        (axis_map.adjoint_table(n_in, n_out, taps), dense.T),
    ):
        ptr, src, w = table
        rebuilt = np.zeros_like(matrix)
        for r in range(matrix.shape[0]):
            for k in range(ptr[r], ptr[r + 1]):
                rebuilt[r, src[k]] += w[k]
        np.testing.assert_allclose(rebuilt, matrix, rtol=0, atol=1e-15)
    x = rng.standard_normal((2, n_in, 3))
    table = axis_map.device_table(
        np, ("test", 0), np.float64, lambda: axis_map.forward_table(n_in, n_out, taps)
    )
    np.testing.assert_allclose(
        axis_map.apply(np, x, 1, n_out, table), np.einsum("oi,aib->aob", dense, x), atol=1e-14
    )


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "shape, pads",
    [
        ((2, 3, 6), ((2, 3),)),
        ((1, 2, 4, 5), ((1, 2), (3, 0))),
        ((0, 2, 4, 5), ((1, 1), (2, 2))),  # empty batch
        ((1, 1, 3, 4, 2), ((1, 2), (0, 0), (1, 1))),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_convolution_padding_and_its_adjoint(mode, shape, pads, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    got, ref = _both(apply_pad, x, pads, mode)
    _close(got, ref)
    g = rng.standard_normal(ref.shape).astype(dtype)
    got, ref = _both(pad_adjoint, g, shape[2:], pads, mode)
    _close(got, ref)


@pytest.mark.parametrize(
    "mode, shape, pad",
    [
        ("constant", (2, 3, 5), (1, 2)),
        ("constant", (2, 3, 4, 5), (-1, 2, 3, -2)),  # negative values crop
        ("constant", (3, 4), (2, 1, 0, 3)),
        ("reflect", (2, 3, 5), (4, 1)),
        ("reflect", (3, 4, 5), (1, 2, 3, 0)),  # unbatched
        ("reflect", (1, 2, 3, 4, 5), (1, 1, 2, 0, 0, 2)),
        ("replicate", (2, 2, 3), (5, 4)),  # a border longer than the input
        ("replicate", (0, 2, 3, 4), (1, 2, 2, 1)),  # empty batch
        ("replicate", (1, 1, 2, 3, 2), (2, 1, 0, 1, 3, 2)),
        ("circular", (2, 3, 4), (4, 2)),
        ("circular", (1, 2, 5, 4), (-1, 2, 1, -2)),  # crop, then wrap the rest
        ("circular", (1, 2, 4), (-2, -2)),  # nothing left: the gradient is all zeros
        ("circular", (1, 1, 2, 3, 4), (1, 1, 3, 0, 2, 1)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_pad_and_pad_backward(mode, shape, pad, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    got, ref = _both(fc.pad, x, pad, mode)
    _close(got, ref)
    g = rng.standard_normal(ref.shape).astype(dtype)
    got, ref = _both(fc.pad_backward, g, shape, pad, mode)
    _close(got, ref)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad_pairs_form(mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 4, 3))
    pairs = ((1, 2), (2, 1))
    got, ref = _both(fc.pad, x, pairs, mode)
    _close(got, ref)
    g = rng.standard_normal(ref.shape)
    got, ref = _both(fc.pad_backward, g, x.shape, pairs, mode)
    _close(got, ref)
