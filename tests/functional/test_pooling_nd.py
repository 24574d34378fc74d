"""Average pooling 1-d/3-d, adaptive average 1-d/3-d and adaptive max 1-d/2-d/3-d:
PyTorch float64 oracle and float64 finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foldconv import functional as F
from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _t(torch, a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _distinct(shape, rng):
    """Values 0.1 apart in random order: no ties, so max pooling is smooth at x."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


# -- average pooling 1-d and 3-d -----------------------------------------------------------------
@st.composite
def avg_cases(draw):
    nd = draw(st.sampled_from([1, 3]))
    kmax = 4 if nd == 1 else 3
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
    stride = draw(st.none() | st.tuples(*[st.integers(1, 3)] * nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    # torch's avg_pool3d (only it) wants the kernel to fit the unpadded input
    sizes = tuple(
        draw(st.integers(max(1, k - 2 * p), k - 2 * p + 7) if nd == 1 else st.integers(k, k + 3))
        for k, p in zip(kernel, padding, strict=True)
    )
    ceil_mode = draw(st.booleans())
    count_include_pad = draw(st.booleans())
    divisor_override = None if nd == 1 else draw(st.none() | st.integers(1, 7))
    unbatched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if unbatched else (2, draw(st.integers(1, 3)))
    args = (kernel, stride, padding, ceil_mode, count_include_pad)
    if nd == 3:
        args += (divisor_override,)
    return nd, lead + sizes, args


@given(case=avg_cases(), seed=st.integers(0, 2**31 - 1))
def test_avg_pool_1d_3d_match_torch(torch, case, seed):
    nd, shape, args = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    xt = _t(torch, x, grad=True)
    yt = getattr(torch.nn.functional, f"avg_pool{nd}d")(xt, *args)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(torch, g))
    y = getattr(F, f"avg_pool{nd}d")(x, *args)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = getattr(F, f"avg_pool{nd}d_backward")(g, shape, *args)
    assert gx.shape == shape
    assert rel_err(gx, xt.grad.numpy()) <= TOL
    # the layer, with torch's positional order
    layer = getattr(nn, f"AvgPool{nd}d")(*args)
    assert rel_err(layer(x), yt.detach().numpy()) <= TOL
    assert rel_err(layer.backward(g), xt.grad.numpy()) <= TOL


@pytest.mark.parametrize(
    "nd, shape, args",
    [
        (1, (2, 2, 9), (3, 2, 1, True, False)),
        (1, (3, 7), ((2,), (1,), (1,), False, True)),
        (3, (1, 2, 4, 5, 4), ((2, 3, 2), (1, 2, 2), (1, 1, 0), True, True, None)),
        (3, (2, 3, 4, 3), (2, 1, 1, False, False, 5)),
    ],
)
def test_avg_pool_1d_3d_finite_differences(nd, shape, args):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    fwd = getattr(F, f"avg_pool{nd}d")
    y = fwd(x, *args)
    w = rng.standard_normal(y.shape)
    analytic = getattr(F, f"avg_pool{nd}d_backward")(w, shape, *args)
    numeric = numerical_grad(lambda z: float(np.sum(fwd(z, *args) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7


# -- adaptive pooling ------------------------------------------------------------------------------
@st.composite
def adaptive_cases(draw):
    nd = draw(st.integers(1, 3))
    smax = 9 if nd < 3 else 5
    sizes = tuple(draw(st.integers(1, smax)) for _ in range(nd))
    entries = st.integers(0, smax + 2) | (st.none() if nd > 1 else st.nothing())
    out = draw(st.integers(0, smax + 2) | st.tuples(*[entries] * nd))
    unbatched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if unbatched else (draw(st.integers(1, 2)), 2)
    return nd, lead + sizes, out


@given(case=adaptive_cases(), ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_adaptive_pools_match_torch(torch, case, ties, seed):
    nd, shape, out = case
    rng = np.random.default_rng(seed)
    # integers in 0..2 make many ties: the first maximum must win, as in torch
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    tf = torch.nn.functional
    for kind in ("avg", "max"):
        xt = _t(torch, x, grad=True)
        if kind == "max":
            yt, it = getattr(tf, f"adaptive_max_pool{nd}d")(xt, out, return_indices=True)
        else:
            yt = getattr(tf, f"adaptive_avg_pool{nd}d")(xt, out)
        g = rng.standard_normal(tuple(yt.shape))
        try:
            yt.backward(_t(torch, g))
            ref_gx = xt.grad.numpy()
        except RuntimeError:  # torch refuses an empty grad_output (output_size 0)
            assert yt.numel() == 0
            ref_gx = np.zeros(shape)
        if kind == "max":
            y, idx = getattr(F, f"adaptive_max_pool{nd}d")(x, out, return_indices=True)
            np.testing.assert_array_equal(idx, it.numpy())
            gx = getattr(F, f"adaptive_max_pool{nd}d_backward")(g, idx, shape)
            layer = getattr(nn, f"AdaptiveMaxPool{nd}d")(out, True)
            ly, lidx = layer(x)
            np.testing.assert_array_equal(lidx, it.numpy())
        else:
            y = getattr(F, f"adaptive_avg_pool{nd}d")(x, out)
            gx = getattr(F, f"adaptive_avg_pool{nd}d_backward")(g, shape, out)
            layer = getattr(nn, f"AdaptiveAvgPool{nd}d")(out)
            ly = layer(x)
        assert y.shape == tuple(yt.shape)
        assert rel_err(y, yt.detach().numpy()) <= TOL
        assert gx.shape == shape
        assert rel_err(gx, ref_gx) <= TOL
        np.testing.assert_array_equal(ly, y)
        np.testing.assert_array_equal(layer.backward(g), gx)


def test_adaptive_max_pool_nan_and_minus_inf_follow_torch(torch):
    """A NaN in a bin wins (the last one), an all -inf bin points at its first cell."""
    x = np.array([[[1.0, np.nan, 3.0, np.nan, 3.0, 1.0, 0.0], [-np.inf] * 7]])
    for out in (3, 4, 7):
        xt = _t(torch, x, grad=True)
        yt, it = torch.nn.functional.adaptive_max_pool1d(xt, out, return_indices=True)
        g = np.arange(1.0, 1.0 + yt.numel()).reshape(tuple(yt.shape))
        yt.backward(_t(torch, g))
        y, idx = F.adaptive_max_pool1d(x, out, return_indices=True)
        np.testing.assert_array_equal(y, yt.detach().numpy())  # NaNs in the same places
        np.testing.assert_array_equal(idx, it.numpy())
        gx = F.adaptive_max_pool1d_backward(g, idx, x.shape)
        np.testing.assert_array_equal(gx, xt.grad.numpy())


@pytest.mark.parametrize(
    "nd, shape, out",
    [
        (1, (2, 3, 7), 3),
        (1, (3, 5), 8),  # more outputs than inputs: bins overlap
        (2, (2, 2, 7, 5), (3, None)),
        (2, (2, 4, 3), (5, 2)),
        (3, (1, 2, 5, 4, 3), (2, 3, None)),
        (3, (2, 3, 3, 4), 2),
    ],
)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pools_finite_differences(kind, nd, shape, out):
    rng = np.random.default_rng(2)
    x = _distinct(shape, rng)
    fwd = getattr(F, f"adaptive_{kind}_pool{nd}d")
    if kind == "max":
        y, idx = fwd(x, out, True)
        w = rng.standard_normal(y.shape)
        analytic = getattr(F, f"adaptive_max_pool{nd}d_backward")(w, idx, shape)
    else:
        y = fwd(x, out)
        w = rng.standard_normal(y.shape)
        analytic = getattr(F, f"adaptive_avg_pool{nd}d_backward")(w, shape, out)
    numeric = numerical_grad(lambda z: float(np.sum(fwd(z, out) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7
    assert np.count_nonzero(analytic) > 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_new_pools_keep_dtype(dtype):
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 5, 4)).astype(dtype)
    for y, back in [
        (F.avg_pool3d(x, 2), lambda g: F.avg_pool3d_backward(g, x.shape, 2)),
        (F.adaptive_avg_pool3d(x, 3), lambda g: F.adaptive_avg_pool3d_backward(g, x.shape, 3)),
        (F.avg_pool1d(x[0, 0], 2), lambda g: F.avg_pool1d_backward(g, x[0, 0].shape, 2)),
    ]:
        assert y.dtype == dtype
        assert back(np.ones(y.shape, dtype)).dtype == dtype
    y, idx = F.adaptive_max_pool3d(x, 2, True)
    assert y.dtype == dtype and idx.dtype == np.int64
    assert F.adaptive_max_pool3d_backward(np.ones(y.shape, dtype), idx, x.shape).dtype == dtype


X3 = np.zeros((1, 2, 6))


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: F.avg_pool1d(X3, (2, 2)), ValueError, "kernel_size"),
        (lambda: F.avg_pool1d(X3, 3, padding=2), ValueError, "padding"),
        (lambda: F.avg_pool1d(X3, 7), ValueError, "x"),
        (lambda: F.avg_pool3d(X3, 2), ValueError, "x"),
        (lambda: F.avg_pool3d(np.zeros((1, 1, 3, 1, 3)), 2, padding=1), ValueError, "x"),
        (lambda: F.avg_pool3d(np.zeros((1, 1, 3, 3, 3)), 2, divisor_override=0), ValueError,
         "divisor_override"),
        (lambda: F.avg_pool1d_backward(np.zeros((1, 2, 2)), X3.shape, 2), ValueError,
         "grad_output"),
        (lambda: F.adaptive_avg_pool1d(X3, None), TypeError, "output_size"),
        (lambda: F.adaptive_avg_pool1d(X3, (None,)), TypeError, "output_size"),
        (lambda: F.adaptive_max_pool2d(np.zeros((1, 2, 3, 3)), (2, -1)), ValueError,
         "output_size"),
        (lambda: F.adaptive_max_pool3d(X3, 2), ValueError, "x"),
        (lambda: F.adaptive_max_pool1d(X3.astype(np.int32), 2), TypeError, "x"),
        (lambda: F.adaptive_max_pool1d_backward(np.zeros((1, 2, 2)), np.zeros((1, 2, 3), int),
                                                X3.shape), ValueError, "indices"),
        (lambda: F.adaptive_max_pool1d_backward(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)),
                                                X3.shape), TypeError, "indices"),
        (lambda: F.adaptive_max_pool1d_backward(np.zeros((1, 2, 2)),
                                                np.full((1, 2, 2), 6), X3.shape), ValueError,
         "indices"),
        (lambda: F.adaptive_max_pool1d_backward(np.zeros((1, 3, 2)), np.zeros((1, 3, 2), int),
                                                X3.shape), ValueError, "grad_output"),
        (lambda: F.adaptive_avg_pool3d_backward(np.zeros((1, 2, 2)), X3.shape, 2), ValueError,
         "input_shape"),
        (lambda: nn.AvgPool3d(2, padding=(1, 2, 1)), ValueError, "padding"),
        (lambda: nn.AdaptiveMaxPool1d((2, 2)), ValueError, "output_size"),
        (lambda: nn.AdaptiveAvgPool3d(2.5), TypeError, "output_size"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=rf"^{name}:"):
        call()
