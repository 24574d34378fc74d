"""im2col with the compiled unfold and fold (algorithm='im2col_compiled') against the
seed's direct sums, PyTorch and finite differences; its independence of the thread count;
special values; the empty batch; and its thread settings (BLAS on one thread under the
pool's blocks)."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import (
    _args,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    dispatch,
    im2col_compiled,
    threads,
)
from tests.functional.conv_cases import at_thread_counts, finite_difference_errors, torch_conv
from tests.gradcheck import rel_err

pytest.importorskip("numba")

CASES = [  # n, c_in, c_out, size, kernel, stride, dilation, padding, groups
    (3, 1, 6, (12, 12), (5, 5), (1, 1), (1, 1), 2, 1),  # LeNet's conv1, smaller
    (11, 6, 16, (9, 9), (5, 5), (1, 1), (1, 1), 0, 1),  # LeNet's conv2: two blocks
    (2, 4, 6, (7, 6), (3, 3), (1, 1), (2, 1), ((2, 1), (1, 1)), 2),  # groups, dilation
    (3, 3, 5, (9, 8), (3, 3), (2, 3), (1, 1), 1, 1),  # strides, one per dimension
    (2, 6, 3, (6, 6), (3, 3), (1, 1), (1, 1), 1, 3),  # one output channel per group
    (5, 2, 3, (7, 5), (1, 1), (1, 1), (1, 1), 0, 1),  # 1x1
    (2, 3, 4, (17,), (5,), (3,), (2,), 3, 1),  # 1-d, strided and dilated
    (2, 2, 4, (5, 4, 6), (2, 3, 2), (1, 2, 1), (1, 1, 2), 1, 2),  # 3-d, groups
    (2, 2, 2, (3, 3), (3, 3), (1, 1), (1, 1), 4, 1),  # padding wider than the kernel
    (1, 1, 1, (1, 1), (1, 1), (1, 1), (1, 1), 0, 1),  # one pixel
]


def _data(rng, case, dtype=np.float64):
    n, c, o, size, kernel, stride, dilation, padding, groups = case
    x = rng.standard_normal((n, c) + size).astype(dtype)
    w = rng.standard_normal((o, c // groups) + kernel).astype(dtype)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w, opts


@pytest.mark.parametrize("case", CASES)
def test_matches_the_direct_sums(case):
    rng = np.random.default_rng(len(case[3]) * 13 + case[1])
    x, w, opts = _data(rng, case)
    y = conv(x, w, **opts, algorithm="im2col_compiled")
    assert rel_err(y, conv(x, w, **opts, algorithm="direct")) <= 1e-12
    dy = rng.standard_normal(y.shape)
    got = conv_backward(dy, x, w, **opts, algorithm="im2col_compiled")
    ref = conv_backward(dy, x, w, **opts, algorithm="direct")
    for a, b in zip(got, ref, strict=True):
        assert a.shape == b.shape
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch(case, dtype, tol):
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, w, opts = _data(rng, case, dtype)
    y_ref, dx_ref, dw_ref, dy = torch_conv(x, w, rng, **opts)
    y = conv(x, w, **opts, algorithm="im2col_compiled")
    dx, dw, _ = conv_backward(dy, x, w, **opts, algorithm="im2col_compiled")
    assert y.dtype == dx.dtype == dw.dtype == dtype
    assert rel_err(y, y_ref) <= tol
    assert rel_err(dx, dx_ref) <= tol
    assert rel_err(dw, dw_ref) <= tol


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3], CASES[6], CASES[7]])
def test_gradients_pass_finite_differences(case):
    rng = np.random.default_rng(3)
    x, w, opts = _data(rng, case)
    err_x, err_w = finite_difference_errors(x, w, opts, "im2col_compiled", rng)
    assert err_x < 1e-7
    assert err_w < 1e-7


def test_results_do_not_depend_on_the_thread_count_or_the_run():
    # 21 samples: three blocks, the last one partial; groups, to cover the group slices.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((21, 16, 10, 10)).astype(np.float32)

    def run():
        y = conv(x, w, groups=2, algorithm="im2col_compiled")
        return (y,) + conv_backward(dy, x, w, groups=2, algorithm="im2col_compiled")[:2]

    runs = at_thread_counts(run)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a, b)


def test_blocks_follow_the_geometry_not_the_thread_count():
    def blocks(x_shape, w_shape, padding=0, groups=1, itemsize=4):
        g = _args.conv_geometry(x_shape, w_shape, 1, padding, 1, groups, "zeros")
        return [len(range(*span)) for span in im2col_compiled._blocks(g, itemsize)]

    lenet_c2 = ((128, 6, 14, 14), (16, 6, 5, 5))  # 60 KB of columns a sample
    alexnet_c2 = ((16, 96, 27, 27), (256, 48, 5, 5), 2, 2)  # 3.5 MB a sample
    for n in (1, 2, 3):
        foldconv.set_num_threads(n)
        try:
            assert blocks(*lenet_c2) == [8] * 16
            assert blocks(*alexnet_c2) == [1] * 16
            # 590 KB a sample: at most 7 a block, so a batch of 8 as two even blocks.
            assert blocks((8, 64, 16, 16), (64, 64, 3, 3), 1) == [4, 4]
            assert blocks((8, 64, 16, 16), (64, 64, 3, 3), 1, itemsize=8) == [3, 3, 2]
            assert blocks((0, 6, 14, 14), (16, 6, 5, 5)) == []
        finally:
            foldconv.set_num_threads(None)


def test_one_sample_blocks_match_the_direct_sums_at_any_thread_count(monkeypatch):
    # Blocks of one sample (what a large layer gets), forced on a small one.
    monkeypatch.setattr(im2col_compiled, "_BLOCK_BYTES", 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4, 9, 9))
    w = rng.standard_normal((6, 2, 3, 3))
    dy = rng.standard_normal((5, 6, 9, 9))
    opts = dict(padding=1, groups=2)
    g = _args.conv_geometry(x.shape, w.shape, 1, 1, 1, 2, "zeros")
    assert im2col_compiled.blocks(g, 8) == 5

    def run():
        y = conv(x, w, **opts, algorithm="im2col_compiled")
        return (y,) + conv_backward(dy, x, w, **opts, algorithm="im2col_compiled")[:2]

    runs = at_thread_counts(run)
    ref = (conv(x, w, **opts, algorithm="direct"),) + conv_backward(
        dy, x, w, **opts, algorithm="direct"
    )[:2]
    for a, b in zip(runs[0], ref, strict=True):
        assert rel_err(a, b) <= 1e-12
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a, b)


def test_blas_runs_on_one_thread_under_the_blocks():
    # The kernel's GEMMs run on foldconv's pool, one per block: BLAS's own threads would
    # oversubscribe the cores. A pass large enough to get all threads otherwise
    # (threads.SMALL_GEMM_MACS) still gets one.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = foldconv.get_num_threads()
    adaptive = threads.set_adaptive(False)
    try:
        foldconv.set_num_threads(2)
        x = np.ones((128, 6, 14, 14), dtype=np.float32)
        w = np.ones((16, 6, 5, 5), dtype=np.float32)
        g = _args.conv_geometry(x.shape, w.shape, 1, 0, 1, 1, "zeros")
        assert dispatch._macs(g) >= threads.SMALL_GEMM_MACS
        conv(x, w, algorithm="im2col")
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 2 for i in blas)
        conv(x, w, algorithm="im2col_compiled")
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in blas)
    finally:
        foldconv.set_num_threads(before)
        threads.set_adaptive(adaptive)


def test_special_values_reach_what_reads_them_only():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    # Stride 2 without padding never reads the last row and column: an inf there must
    # not reach any output or gradient (a NaN from 0 · inf would).
    x[1, 0, 8, 8] = np.inf
    x[2, 1, 4, 4] = np.nan
    y = conv(x, w, stride=2, algorithm="im2col_compiled")
    ref = conv(x, w, stride=2, algorithm="direct")
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    assert np.array_equal(np.isinf(y), np.isinf(ref))
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv_backward(dy, x, w, stride=2, algorithm="im2col_compiled")
    dx_ref, dw_ref, _ = conv_backward(dy, x, w, stride=2, algorithm="direct")
    assert np.array_equal(np.isnan(dw), np.isnan(dw_ref))
    assert np.array_equal(np.isnan(dx), np.isnan(dx_ref))
    w2 = w.copy()
    w2[0, 1, 2, 2] = np.inf
    dx2 = conv_backward(dy, x, w2, stride=2, algorithm="im2col_compiled")[0]
    dx2_ref = conv_backward(dy, x, w2, stride=2, algorithm="direct")[0]
    assert np.array_equal(np.isnan(dx2), np.isnan(dx2_ref))
    assert np.array_equal(np.isinf(dx2), np.isinf(dx2_ref))


def test_padding_modes_views_and_bias():
    rng = np.random.default_rng(12)
    base = rng.standard_normal((3, 2, 6, 7))
    x = base.transpose(0, 1, 3, 2)  # a view with swapped strides
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        opts = dict(padding=(1, 2), padding_mode=mode)
        y = conv(x, w, b, **opts, algorithm="im2col_compiled")
        assert rel_err(y, conv(x, w, b, **opts, algorithm="direct")) <= 1e-12
        dy = rng.standard_normal(y.shape)
        got = conv_backward(dy, x, w, **opts, algorithm="im2col_compiled")
        want = conv_backward(dy, x, w, **opts, algorithm="direct")
        for a, c in zip(got, want, strict=True):
            assert rel_err(a, c) <= 1e-12


def test_transposed_convolution():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))  # (C_in, C_out/G, *K) for a transposed conv
    opts = dict(stride=2, padding=1, output_padding=1)
    ref = conv_transpose(x, w, **opts, algorithm="direct")
    y = conv_transpose(x, w, **opts, algorithm="im2col_compiled")
    assert rel_err(y, ref) <= 1e-12
    dy = rng.standard_normal(y.shape)
    got = conv_transpose_backward(dy, x, w, **opts, algorithm="im2col_compiled")
    want = conv_transpose_backward(dy, x, w, **opts, algorithm="direct")
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_empty_batch():
    w = np.ones((16, 6, 5, 5), dtype=np.float32)
    x = np.zeros((0, 6, 14, 14), dtype=np.float32)
    y = conv(x, w, algorithm="im2col_compiled")
    assert y.shape == (0, 16, 10, 10)
    dx, dw, db = conv_backward(y, x, w, algorithm="im2col_compiled")
    assert dx.shape == x.shape and np.array_equal(dw, np.zeros_like(w))
    assert np.array_equal(db, np.zeros(16, dtype=np.float32))


def test_needs_numba_and_the_compiled_switch():
    x = np.ones((1, 6, 14, 14), dtype=np.float32)
    w = np.ones((16, 6, 5, 5), dtype=np.float32)
    previous = foldconv.set_compiled(False)
    try:
        with pytest.raises(ValueError, match="im2col_compiled.*Numba"):
            conv(x, w, algorithm="im2col_compiled")
    finally:
        foldconv.set_compiled(previous)


def test_a_block_too_large_for_the_workspace_is_refused_by_name():
    g = _args.conv_geometry((8, 64, 64, 64), (64, 64, 3, 3), 1, 1, 1, 1, "zeros")
    limit = foldconv.get_workspace_limit()
    try:
        foldconv.set_workspace_limit(im2col_compiled.scratch_bytes(g, 4) - 1)
        assert not im2col_compiled.supports(g, 4)
        x = np.ones((8, 64, 64, 64), dtype=np.float32)
        w = np.ones((64, 64, 3, 3), dtype=np.float32)
        with pytest.raises(ValueError, match="'im2col_compiled' does not support"):
            conv(x, w, padding=1, algorithm="im2col_compiled")
    finally:
        foldconv.set_workspace_limit(limit)
