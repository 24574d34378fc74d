"""Max, average and adaptive average pooling: PyTorch oracle, finite differences, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import foldconv
from foldconv.functional import pooling as P
from foldconv.functional.pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool,
    max_pool_backward,
)
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module", params=[True, False], ids=["compiled", "numpy"])
def path(request):
    """Max pooling on the compiled kernels (where Numba is installed) and on the NumPy path."""
    previous = foldconv.set_compiled(request.param)
    yield request.param
    foldconv.set_compiled(previous)


@pytest.fixture
def numpy_path():
    """The NumPy path, for tests of its own internals."""
    previous = foldconv.set_compiled(False)
    yield
    foldconv.set_compiled(previous)


def _t(torch, a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _windows_hit_input(n, o, k, s, p, d):
    """Every window has at least one tap inside the input (else PyTorch's index is junk)."""
    return all(any(0 <= i * s - p + t * d < n for t in range(k)) for i in range(o))


# -- max pooling vs PyTorch ----------------------------------------------------------------
@st.composite
def max_pool_cases(draw):
    nd = draw(st.integers(1, 3))
    kmax = 4 if nd < 3 else 3
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
    stride = draw(st.none() | st.tuples(*[st.integers(1, 3)] * nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    sizes = []
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        least = max(1, d * (k - 1) + 1 - 2 * p)
        sizes.append(draw(st.integers(least, least + (6 if nd < 3 else 3))))
    unbatched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if unbatched else (draw(st.integers(1, 2)), 2)
    return nd, lead + tuple(sizes), kernel, stride, padding, dilation, ceil_mode


@given(case=max_pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_max_pool_matches_torch(torch, path, case, seed):
    nd, shape, kernel, stride, padding, dilation, ceil_mode = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    args = (kernel, stride, padding, dilation, ceil_mode)
    y, argmax = max_pool(x, *args, return_indices="argmax")
    out = y.shape[-nd:]
    st_ = stride or kernel
    for n, o, k, s, p, d in zip(shape[-nd:], out, kernel, st_, padding, dilation, strict=True):
        assume(_windows_hit_input(n, o, k, s, p, d))

    tf = getattr(torch.nn.functional, f"max_pool{nd}d")
    xt = _t(torch, x, grad=True)
    yt, it = tf(xt, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))

    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    y2, flat = max_pool(x, *args, return_indices=True)
    np.testing.assert_array_equal(flat, it.numpy())
    np.testing.assert_array_equal(y2, y)
    gx = max_pool_backward(g, argmax, shape, *args)
    assert gx.shape == shape
    assert rel_err(gx, xt.grad.numpy()) <= TOL
    gx_flat = max_pool_backward(g, flat, shape, *args, indices_kind="flat")
    assert rel_err(gx_flat, xt.grad.numpy()) <= TOL


def test_max_pool_ties_follow_torch(torch, path):
    """Many equal values: the first maximum in row-major window order must win, as in torch."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, 3, 9, 10)).astype(np.float64)
    for kernel, stride, padding in [((3, 3), 2, 1), ((2, 3), (1, 2), (1, 0)), ((2, 2), 1, 0)]:
        xt = _t(torch, x, grad=True)
        yt, it = torch.nn.functional.max_pool2d(
            xt, kernel, stride, padding, return_indices=True, ceil_mode=True
        )
        g = rng.standard_normal(tuple(yt.shape))
        yt.backward(_t(torch, g))
        y, flat = max_pool(x, kernel, stride, padding, ceil_mode=True, return_indices=True)
        np.testing.assert_array_equal(flat, it.numpy())
        _, argmax = max_pool(x, kernel, stride, padding, ceil_mode=True, return_indices="argmax")
        gx = max_pool_backward(g, argmax, x.shape, kernel, stride, padding, ceil_mode=True)
        assert rel_err(gx, xt.grad.numpy()) <= TOL


def test_max_pool_nan_propagates_like_torch(torch, path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 7, 7))
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 5, 5] = np.nan
    xt = _t(torch, x, grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, 3, 2, return_indices=True)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))
    y, flat = max_pool(x, 3, 2, return_indices=True, dims=2)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt.detach().numpy()))
    np.testing.assert_array_equal(flat, it.numpy())
    _, argmax = max_pool(x, 3, 2, return_indices="argmax", dims=2)
    gx = max_pool_backward(g, argmax, x.shape, 3, 2, dims=2)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=0, atol=1e-12)


def test_alexnet_overlapping_pool_matches_torch(torch, path):
    """AlexNet's pool1 geometry (3x3, stride 2) in float64, batched over several planes."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 55, 55))
    xt = _t(torch, x, grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))
    y, argmax = max_pool(x, (3, 3), 2, return_indices="argmax")
    assert y.shape == (2, 8, 27, 27)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = max_pool_backward(g, argmax, x.shape, (3, 3), 2)
    assert rel_err(gx, xt.grad.numpy()) <= TOL


@pytest.mark.parametrize("group_bytes", [8 * 30, 8 * 30 * 5])
def test_max_pool_backward_paths_agree(monkeypatch, numpy_path, group_bytes):
    """bincount scatter (any plane grouping) == the tap loop used on CuPy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5, 6))
    kernel, stride, padding = (3, 2), (1, 2), (1, 1)
    y, argmax = max_pool(x, kernel, stride, padding, return_indices="argmax")
    g = rng.standard_normal(y.shape)
    ref = max_pool_backward(g, argmax, x.shape, kernel, stride, padding)
    monkeypatch.setattr(P, "_BINCOUNT_BYTES", group_bytes)  # 1 or 5 padded planes per group
    grouped = max_pool_backward(g, argmax, x.shape, kernel, stride, padding)
    np.testing.assert_allclose(grouped, ref, rtol=0, atol=1e-14)
    monkeypatch.setattr(P, "_use_bincount", lambda xp: False)
    looped = max_pool_backward(g, argmax, x.shape, kernel, stride, padding)
    np.testing.assert_allclose(looped, ref, rtol=0, atol=1e-14)
    assert np.abs(ref).sum() > 0


def test_plane_blocking_changes_nothing(monkeypatch, numpy_path):
    """Cache blocking over (N, C) planes, one plane per block, gives the same numbers."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 9, 8))
    runs = []
    for block_bytes in (P._BLOCK_BYTES, 1):
        monkeypatch.setattr(P, "_BLOCK_BYTES", block_bytes)
        y, argmax = max_pool(x, (3, 3), 2, 1, ceil_mode=True, return_indices="argmax")
        g = rng.standard_normal(y.shape) if not runs else runs[0][-1]
        y2, argmax2 = max_pool(x, (2, 2), return_indices="argmax")  # disjoint: tap path
        a = avg_pool2d(x, 3, 2, 1, ceil_mode=True)
        runs.append(
            (
                y,
                argmax,
                max_pool(x, (3, 3), 2, 1, ceil_mode=True),
                max_pool_backward(g[..., :4, :4], argmax2, x.shape, (2, 2)),
                a,
                avg_pool2d_backward(g[..., :5, :5], x.shape, 3, 2, 1, ceil_mode=True),
                g,
            )
        )
    for one, other in zip(*runs, strict=True):
        np.testing.assert_array_equal(one, other)


# -- average pooling vs PyTorch -------------------------------------------------------------
@st.composite
def avg_pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    sizes = tuple(
        draw(st.integers(max(1, k - 2 * p), k - 2 * p + 7))
        for k, p in zip(kernel, padding, strict=True)
    )
    ceil_mode = draw(st.booleans())
    count_include_pad = draw(st.booleans())
    divisor_override = draw(st.none() | st.integers(1, 7))
    unbatched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if unbatched else (2, draw(st.integers(1, 3)))
    return (
        lead + sizes,
        (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override),
    )


@given(case=avg_pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_avg_pool2d_matches_torch(torch, case, seed):
    shape, args = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    xt = _t(torch, x, grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, *args)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))
    y = avg_pool2d(x, *args)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = avg_pool2d_backward(g, shape, *args)
    assert gx.shape == shape
    assert rel_err(gx, xt.grad.numpy()) <= TOL


def test_avg_pool2d_ceil_window_past_padding_divisor(torch):
    """A ceil_mode window running past the right padding: torch divides by the clipped size."""
    x = np.arange(1.0, 1.0 + 2 * 6 * 6).reshape(1, 2, 6, 6)
    for cip in (True, False):
        ref = torch.nn.functional.avg_pool2d(_t(torch, x), 3, 2, 1, True, cip).numpy()
        got = avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=cip)
        assert got.shape == ref.shape == (1, 2, 4, 4)
        assert rel_err(got, ref) <= TOL


# -- adaptive average pooling vs PyTorch ----------------------------------------------------
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    oh=st.none() | st.integers(1, 12),
    ow=st.none() | st.integers(1, 12),
    as_int=st.booleans(),
    unbatched=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_adaptive_avg_pool2d_matches_torch(torch, h, w, oh, ow, as_int, unbatched, seed):
    rng = np.random.default_rng(seed)
    shape = ((3,) if unbatched else (2, 3)) + (h, w)
    x = rng.standard_normal(shape)
    size = (oh if oh is not None else 5) if as_int else (oh, ow)
    xt = _t(torch, x, grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, size)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))
    y = adaptive_avg_pool2d(x, size)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = adaptive_avg_pool2d_backward(g, shape, size)
    assert rel_err(gx, xt.grad.numpy()) <= TOL
    gx2 = adaptive_avg_pool2d_backward(g, shape)  # output size taken from grad_output
    assert rel_err(gx2, xt.grad.numpy()) <= TOL


# -- finite differences (no torch) ------------------------------------------------------------
def _distinct(shape, rng):
    """Values 0.1 apart in random order: no ties, so max pooling is smooth at x."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation, ceil_mode",
    [
        ((2, 2, 9), (3,), 2, 1, 1, True),
        ((1, 2, 7, 6), (3, 3), (2, 2), 1, 1, False),
        ((2, 1, 6, 7), (2, 3), (1, 2), (1, 1), (2, 1), True),
        ((1, 1, 4, 5, 4), (2, 2, 3), 2, (1, 0, 1), 1, True),
        ((2, 6, 5), (2, 2), 2, 0, 1, False),  # unbatched 2-d
    ],
)
def test_max_pool_finite_differences(path, shape, kernel, stride, padding, dilation, ceil_mode):
    rng = np.random.default_rng(4)
    x = _distinct(shape, rng)
    args = (kernel, stride, padding, dilation, ceil_mode)
    y, argmax = max_pool(x, *args, return_indices="argmax")
    w = rng.standard_normal(y.shape)
    analytic = max_pool_backward(w, argmax, shape, *args)
    numeric = numerical_grad(lambda z: float(np.sum(max_pool(z, *args) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7
    assert np.count_nonzero(analytic) > 0


@pytest.mark.parametrize(
    "shape, args",
    [
        ((2, 2, 7, 6), (3, 2, 1, True, True, None)),
        ((1, 2, 7, 6), (3, 2, 1, True, False, None)),
        ((2, 5, 6), ((2, 3), (1, 2), (1, 1), False, True, 4)),
    ],
)
def test_avg_pool2d_finite_differences(shape, args):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    y = avg_pool2d(x, *args)
    w = rng.standard_normal(y.shape)
    analytic = avg_pool2d_backward(w, shape, *args)
    numeric = numerical_grad(lambda z: float(np.sum(avg_pool2d(z, *args) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7


@pytest.mark.parametrize("shape, size", [((2, 2, 7, 5), (3, 2)), ((2, 5, 6), (4, None))])
def test_adaptive_avg_pool2d_finite_differences(shape, size):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    y = adaptive_avg_pool2d(x, size)
    w = rng.standard_normal(y.shape)
    analytic = adaptive_avg_pool2d_backward(w, shape, size)
    numeric = numerical_grad(lambda z: float(np.sum(adaptive_avg_pool2d(z, size) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7


def test_adaptive_bins_cover_input_as_torch_defines():
    """Bins [floor(i n/o), ceil((i+1) n/o)) cover every input index and are ordered."""
    for n in range(1, 15):
        for o in range(1, 15):
            member, lengths = P._adaptive_bins(n, o)
            assert member.any(axis=0).all()
            starts = member.argmax(axis=1)
            assert np.all(np.diff(starts) >= 0)
            np.testing.assert_array_equal(member.sum(axis=1), lengths)


# -- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_are_kept(path, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    y, argmax = max_pool(x, 3, 2, 1, return_indices="argmax", dims=2)
    assert y.dtype == dtype
    assert argmax.dtype == np.uint8
    g = np.ones(y.shape, dtype)
    assert max_pool_backward(g, argmax, x.shape, 3, 2, 1, dims=2).dtype == dtype
    a = avg_pool2d(x, 2)
    assert a.dtype == dtype
    assert avg_pool2d_backward(np.ones(a.shape, dtype), x.shape, 2).dtype == dtype
    b = adaptive_avg_pool2d(x, 3)
    assert b.dtype == dtype
    assert adaptive_avg_pool2d_backward(np.ones(b.shape, dtype), x.shape, 3).dtype == dtype
    np.testing.assert_allclose(
        y.astype(np.float64), max_pool(x.astype(np.float64), 3, 2, 1, dims=2), rtol=0, atol=0
    )


def test_int_kernel_needs_dims_and_large_kernels_widen_argmax():
    x = np.random.default_rng(8).standard_normal((1, 1, 20, 20))
    with pytest.raises(ValueError, match=r"^dims:"):
        max_pool(x, 2)
    np.testing.assert_array_equal(max_pool(x, 2, dims=2), max_pool(x, (2, 2)))
    y, argmax = max_pool(x, (17, 17), 1, return_indices="argmax")
    assert argmax.dtype == np.uint16
    assert y[0, 0, 0, 0] == x[0, 0, :17, :17].max()


# -- bad input ----------------------------------------------------------------------------------
X4 = np.zeros((1, 2, 6, 6))


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: max_pool(X4, (0, 2)), ValueError, "kernel_size"),
        (lambda: max_pool(X4, (2, 2), stride=(1, 0)), ValueError, "stride"),
        (lambda: max_pool(X4, (2, 2), stride=(1, -1)), ValueError, "stride"),
        (lambda: max_pool(X4, (3, 3), padding=2), ValueError, "padding"),
        (lambda: max_pool(X4, (3, 3), padding=-1), ValueError, "padding"),
        (lambda: max_pool(X4, (3, 3), dilation=0), ValueError, "dilation"),
        (lambda: max_pool(X4, (2.0, 2)), TypeError, "kernel_size"),
        (lambda: max_pool(np.zeros((6, 6)), (2, 2)), ValueError, "x"),
        (lambda: max_pool(np.zeros((6,)), (2,)), ValueError, "x"),
        (lambda: max_pool(X4, (7, 7)), ValueError, "x"),
        (lambda: max_pool(X4.astype(np.int32), (2, 2)), TypeError, "x"),
        (lambda: max_pool(X4.astype(bool), (2, 2)), TypeError, "x"),
        (lambda: max_pool(X4, (2, 2), return_indices="yes"), ValueError, "return_indices"),
        (lambda: max_pool(X4, 2, dims=4), ValueError, "dims"),
        (
            lambda: max_pool_backward(
                np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 3, 3), np.uint8), X4.shape, (2, 2)
            ),
            ValueError,
            "grad_output",
        ),
        (
            lambda: max_pool_backward(
                np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 2, 2), np.uint8), X4.shape, (2, 2)
            ),
            ValueError,
            "indices",
        ),
        (
            lambda: max_pool_backward(
                np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), X4.shape, (2, 2)
            ),
            TypeError,
            "indices",
        ),
        (
            lambda: max_pool_backward(
                np.zeros((1, 2, 3, 3)),
                np.zeros((1, 2, 3, 3), np.int64),
                X4.shape,
                (2, 2),
                indices_kind="flat",
            ),
            ValueError,
            "indices",
        ),
        (
            lambda: max_pool_backward(
                np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3), np.uint8), (2, 6, 6, 6, 6), (2, 2)
            ),
            ValueError,
            "input_shape",
        ),
        (lambda: avg_pool2d(X4, 0), ValueError, "kernel_size"),
        (lambda: avg_pool2d(X4, 3, 0), ValueError, "stride"),
        (lambda: avg_pool2d(X4, 3, 1, 2), ValueError, "padding"),
        (lambda: avg_pool2d(X4, 7), ValueError, "x"),
        (lambda: avg_pool2d(X4, 2, divisor_override=0), ValueError, "divisor_override"),
        (lambda: avg_pool2d(X4, 2, divisor_override=1.5), TypeError, "divisor_override"),
        (lambda: avg_pool2d(np.zeros((6, 6)), 2), ValueError, "x"),
        (lambda: avg_pool2d(X4.astype(np.int64), 2), TypeError, "x"),
        (
            lambda: avg_pool2d_backward(np.zeros((1, 2, 2, 2)), X4.shape, 2),
            ValueError,
            "grad_output",
        ),
        (lambda: adaptive_avg_pool2d(X4, None), TypeError, "output_size"),
        (lambda: adaptive_avg_pool2d(X4, (2,)), ValueError, "output_size"),
        (lambda: adaptive_avg_pool2d(X4, (2, -1)), ValueError, "output_size"),
        (lambda: adaptive_avg_pool2d(X4, (2, 2, 2)), ValueError, "output_size"),
        (lambda: adaptive_avg_pool2d(X4, 2.5), TypeError, "output_size"),
        (lambda: adaptive_avg_pool2d(np.zeros((6, 6)), 2), ValueError, "x"),
        (lambda: adaptive_avg_pool2d(X4.astype(np.int8), 2), TypeError, "x"),
        (
            lambda: adaptive_avg_pool2d_backward(np.zeros((1, 2, 3, 3)), X4.shape, 2),
            ValueError,
            "grad_output",
        ),
    ],
)
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=rf"^{name}:"):
        call()
