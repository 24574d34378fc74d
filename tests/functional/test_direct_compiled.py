"""The compiled direct kernels (algorithm='direct_compiled') against the seed's direct
sums, PyTorch, finite differences and the im2col path; their independence of the thread
count; and the cost model's use of them."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv import _openblas_env
from foldconv.functional import (
    _args,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    direct_compiled,
    dispatch,
)
from tests.functional.conv_cases import at_thread_counts, finite_difference_errors, torch_conv
from tests.gradcheck import rel_err

pytest.importorskip("numba")

CASES = [  # n, c_in, c_out, size, kernel, dilation, padding, groups
    (3, 1, 6, (12, 12), (5, 5), (1, 1), 2, 1),  # LeNet's conv1, smaller
    (4, 6, 16, (9, 9), (5, 5), (1, 1), 0, 1),  # LeNet's conv2, smaller
    (2, 4, 6, (7, 6), (3, 3), (2, 1), ((2, 1), (1, 1)), 2),  # groups, dilation, asymmetric
    (3, 3, 5, (8, 7), (3, 3), (1, 1), 1, 1),  # odd C_out: a last channel without a pair
    (2, 6, 3, (6, 6), (3, 3), (1, 1), 1, 3),  # one output channel per group
    (2, 4, 10, (6, 7), (3, 3), (1, 1), 1, 2),  # 5 per group: four together, then one
    (2, 3, 4, (5, 9), (2, 4), (1, 2), ((0, 3), (2, 0)), 1),  # taps a multiple of 4
    (5, 2, 3, (7, 5), (1, 1), (1, 1), 0, 1),  # 1x1
    (2, 3, 4, (17,), (5,), (2,), 3, 1),  # 1-d
    (2, 2, 3, (5, 4, 6), (2, 3, 2), (1, 1, 2), 1, 1),  # 3-d
    (2, 2, 2, (3, 3), (3, 3), (1, 1), 4, 1),  # padding wider than the kernel
    (1, 1, 1, (1, 1), (1, 1), (1, 1), 0, 1),  # one pixel
]


def _data(rng, case, dtype=np.float64):
    n, c, o, size, kernel, dilation, padding, groups = case
    x = rng.standard_normal((n, c) + size).astype(dtype)
    w = rng.standard_normal((o, c // groups) + kernel).astype(dtype)
    opts = dict(padding=padding, dilation=dilation, groups=groups)
    return x, w, opts


@pytest.mark.parametrize("case", CASES)
def test_matches_direct_sums_and_im2col(case):
    rng = np.random.default_rng(len(case[3]) * 13 + case[1])
    x, w, opts = _data(rng, case)
    y = conv(x, w, **opts, algorithm="direct_compiled")
    assert rel_err(y, conv(x, w, **opts, algorithm="direct")) <= 1e-12
    assert rel_err(y, conv(x, w, **opts, algorithm="im2col")) <= 1e-12
    dy = rng.standard_normal(y.shape)
    got = conv_backward(dy, x, w, **opts, algorithm="direct_compiled")
    ref = conv_backward(dy, x, w, **opts, algorithm="direct")
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch(case, dtype, tol):
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, w, opts = _data(rng, case, dtype)
    y_ref, dx_ref, dw_ref, dy = torch_conv(x, w, rng, **opts)
    y = conv(x, w, **opts, algorithm="direct_compiled")
    dx, dw, _ = conv_backward(dy, x, w, **opts, algorithm="direct_compiled")
    assert y.dtype == dx.dtype == dw.dtype == dtype
    assert rel_err(y, y_ref) <= tol
    assert rel_err(dx, dx_ref) <= tol
    assert rel_err(dw, dw_ref) <= tol


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[7], CASES[8]])
def test_gradients_pass_finite_differences(case):
    rng = np.random.default_rng(3)
    x, w, opts = _data(rng, case)
    err_x, err_w = finite_difference_errors(x, w, opts, "direct_compiled", rng)
    assert err_x < 1e-7
    assert err_w < 1e-7


def test_results_do_not_depend_on_the_thread_count_or_the_run():
    # 21 samples: three blocks, the last one partial.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((21, 16, 10, 10)).astype(np.float32)

    def run():
        y = conv(x, w, algorithm="direct_compiled")
        return (y,) + conv_backward(dy, x, w, algorithm="direct_compiled")[:2]

    runs = at_thread_counts(run)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_placing_the_padding_itself_changes_no_bit(case, dtype):
    # padded=False (the kernels place the zero padding and crop dX; the forward adds the
    # bias) against the kernels on the caller's padded copy, then y += b and the crop.
    rng = np.random.default_rng(11)
    x, w, opts = _data(rng, case, dtype)
    pads = _args.parse_padding(opts["padding"], x.ndim - 2)
    g = _args.conv_geometry(x.shape, w.shape, 1, pads, opts["dilation"], opts["groups"], "zeros")
    assert direct_compiled.pads_itself(g)
    x_pad = np.pad(x, ((0, 0), (0, 0)) + tuple(pads))
    b = rng.standard_normal(w.shape[0]).astype(dtype)
    want = direct_compiled.forward(x_pad, w, g)
    want += b.reshape((1, -1) + (1,) * (x.ndim - 2))
    assert np.array_equal(direct_compiled.forward(x, w, g, padded=False, bias=b), want)
    y_plain = direct_compiled.forward(x, w, g, padded=False)
    assert np.array_equal(y_plain, direct_compiled.forward(x_pad, w, g))
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx_pad = direct_compiled.input_grad(dy, w, g)
    crop = (slice(None), slice(None)) + tuple(
        slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[2:], strict=True)
    )
    dx = direct_compiled.input_grad(dy, w, g, padded=False)
    assert dx.shape == x.shape and np.array_equal(dx, dx_pad[crop])
    dw = direct_compiled.weight_grad(dy, x, g, padded=False)
    assert np.array_equal(dw, direct_compiled.weight_grad(dy, x_pad, g))


def test_other_padding_modes_take_a_padded_copy():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 2, 7, 6))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    for mode in ("reflect", "replicate", "circular"):
        opts = dict(padding=(1, 2), padding_mode=mode)
        y = conv(x, w, b, **opts, algorithm="direct_compiled")
        assert rel_err(y, conv(x, w, b, **opts, algorithm="direct")) <= 1e-12
        dy = rng.standard_normal(y.shape)
        got = conv_backward(dy, x, w, **opts, algorithm="direct_compiled")
        want = conv_backward(dy, x, w, **opts, algorithm="direct")
        for a, c in zip(got, want, strict=True):
            assert rel_err(a, c) <= 1e-12


def test_non_contiguous_and_special_values():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4, 3, 9, 8))
    x = base.transpose(0, 1, 3, 2)  # a view with swapped strides
    w = rng.standard_normal((4, 3, 3, 3))
    y = conv(x, w, padding=1, algorithm="direct_compiled")
    assert rel_err(y, conv(np.ascontiguousarray(x), w, padding=1, algorithm="direct")) <= 1e-12
    # NaN and inf reach exactly the outputs (and weight gradients) that read them.
    x2 = np.ascontiguousarray(x)
    x2[1, 2, 4, 4] = np.nan
    x2[2, 0, 0, 0] = np.inf
    y2 = conv(x2, w, padding=1, algorithm="direct_compiled")
    ref = conv(x2, w, padding=1, algorithm="direct")
    assert np.array_equal(np.isnan(y2), np.isnan(ref))
    assert np.array_equal(np.isinf(y2), np.isinf(ref))
    dy = rng.standard_normal(y2.shape)
    dw = conv_backward(dy, x2, w, padding=1, algorithm="direct_compiled")[1]
    dw_ref = conv_backward(dy, x2, w, padding=1, algorithm="direct")[1]
    assert np.array_equal(np.isnan(dw), np.isnan(dw_ref))


def test_transposed_convolution_with_stride_one():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))  # (C_in, C_out/G, *K) for a transposed conv
    ref = conv_transpose(x, w, padding=1, algorithm="direct")
    y = conv_transpose(x, w, padding=1, algorithm="direct_compiled")
    assert rel_err(y, ref) <= 1e-12
    dy = rng.standard_normal(y.shape)
    got = conv_transpose_backward(dy, x, w, padding=1, algorithm="direct_compiled")
    want = conv_transpose_backward(dy, x, w, padding=1, algorithm="direct")
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_empty_batch():
    w = np.ones((6, 1, 5, 5), dtype=np.float32)
    x = np.zeros((0, 1, 28, 28), dtype=np.float32)
    y = conv(x, w, padding=2, algorithm="direct_compiled")
    assert y.shape == (0, 6, 28, 28)
    dx, dw, db = conv_backward(y, x, w, padding=2, algorithm="direct_compiled")
    assert dx.shape == x.shape and np.array_equal(dw, np.zeros_like(w))


def test_auto_uses_it_for_small_layers_only(monkeypatch):
    f32 = np.dtype(np.float32)
    monkeypatch.setattr(dispatch, "available_cores", lambda: 2)
    monkeypatch.setattr(_openblas_env, "workers_sleep", lambda: True)

    def geometry(n, c, o, size, k, s=1, p=0, groups=1):
        return _args.conv_geometry((n, c) + size, (o, c // groups, k, k), s, p, 1, groups, "zeros")

    lenet_c1 = geometry(128, 1, 6, (28, 28), 5, 1, 2)
    lenet_c2 = geometry(128, 6, 16, (14, 14), 5)
    for pass_ in dispatch.PASSES:
        assert dispatch.cost_model(pass_, lenet_c1, f32) == "direct_compiled"
        # 16 output channels: the input gradient is W_gᵀ·δ at the BLAS rate on a
        # block's columns, then a compiled fold (functional/im2col_compiled.py).
        want = "im2col_compiled" if pass_ == "input_grad" else "direct_compiled"
        assert dispatch.cost_model(pass_, lenet_c2, f32) == want
        # Strided, or too many weights per group: not this algorithm. (The strided
        # layer's batch of 8 is one block of samples: plain im2col; the larger layer's
        # two blocks of 4 run on the two cores.)
        assert dispatch.cost_model(pass_, geometry(8, 6, 16, (14, 14), 5, 2), f32) == "im2col"
        big = geometry(8, 64, 64, (16, 16), 3, 1, 1)
        assert 64 * 64 * 9 > direct_compiled.MAX_WEIGHTS_PER_GROUP
        assert dispatch.cost_model(pass_, big, f32) == "im2col_compiled"
    previous = foldconv.set_compiled(False)
    try:
        assert dispatch.cost_model("forward", lenet_c2, f32) == "im2col"
        x = np.ones((1, 6, 14, 14), dtype=np.float32)
        w = np.ones((16, 6, 5, 5), dtype=np.float32)
        with pytest.raises(ValueError, match="direct_compiled.*Numba"):
            conv(x, w, algorithm="direct_compiled")
    finally:
        foldconv.set_compiled(previous)


def test_rejects_a_strided_layer_by_name():
    x = np.ones((1, 2, 9, 9))
    w = np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="'direct_compiled' does not support"):
        conv(x, w, stride=2, algorithm="direct_compiled")


@pytest.mark.parametrize("algorithm", ["direct_compiled", "im2col"])
def test_infinities_give_the_gradients_of_the_true_sums(algorithm):
    # The flat range's positions that are not outputs carry δ = 0; an inf there must not
    # turn into 0 · inf = NaN (the weight gradient where the input has one, the input
    # gradient where the weight has one). PyTorch's results are the reference.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 8, 9))
    w = rng.standard_normal((3, 2, 3, 3))
    x[1, 0, 0, 0] = np.inf  # read by the flat range's extra positions at other taps
    w[0, 1, 2, 2] = -np.inf
    dy = rng.standard_normal((3, 3, 8, 9))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    torch.nn.functional.conv2d(xt, wt, padding=1).backward(torch.tensor(dy))
    dx, dw, _ = conv_backward(dy, x, w, padding=1, algorithm=algorithm)
    for got, want in ((dx, xt.grad.numpy()), (dw, wt.grad.numpy())):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isposinf(got), np.isposinf(want))
        finite = np.isfinite(want)
        assert rel_err(got[finite], want[finite]) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "c_in,c_out,groups",
    [(6, 16, 1), (1, 6, 1), (3, 5, 1), (4, 7, 1), (2, 3, 1), (8, 11, 1), (4, 12, 2), (6, 9, 3)],
)
def test_the_vector_kernels_give_the_sequential_sums_bit_for_bit(c_in, c_out, groups, dtype):
    # The correlation keeps its sums in vector registers (functional/simd.py), up to
    # eight output channels at a time (a group's last block may hold fewer): every
    # output is still Σ over (c_i, t) in order, a product rounded, then the sum rounded,
    # which NumPy computes here one tap at a time for all positions.
    rng = np.random.default_rng(c_in * 31 + c_out)
    x = rng.standard_normal((3, c_in, 9, 8)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, 3, 3)).astype(dtype)
    y = conv(x, w, padding=1, groups=groups, algorithm="direct_compiled")
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cog, cig = c_out // groups, c_in // groups
    want = np.zeros_like(y)
    for g in range(groups):
        out = want[:, g * cog : (g + 1) * cog]
        for c in range(cig):
            for kh in range(3):
                for kw in range(3):
                    tap = w[g * cog : (g + 1) * cog, c, kh, kw][None, :, None, None]
                    out += tap * xp[:, g * cig + c, kh : kh + 9, kw : kw + 8][:, None]
    assert np.array_equal(y, want)
    # The input gradient runs the same kernels (δ with the flipped kernel, eq. BX').
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = conv_backward(dy, x, w, padding=1, groups=groups, algorithm="direct_compiled")[0]
    ref = conv_backward(dy, x, w, padding=1, groups=groups, algorithm="direct")[0]
    assert rel_err(dx, ref) <= (1e-5 if dtype == np.float32 else 1e-12)


def test_vector_width_follows_the_host():
    from foldconv.functional import simd

    f32, f64 = simd.lanes(np.float32), simd.lanes(np.float64)
    assert f32 in (8, 16) and f64 == f32 // 2
    # Rows are rounded to whole vectors of either width.
    assert direct_compiled._LANES % f32 == 0 and direct_compiled._DOT_LANES % f32 == 0
