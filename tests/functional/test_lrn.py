"""Local response normalisation: PyTorch oracle, finite differences, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foldconv.functional import lrn as L
from foldconv.functional.lrn import local_response_norm, local_response_norm_backward
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@given(
    channels=st.integers(1, 9),
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    size=st.integers(1, 12),
    alpha=st.floats(1e-4, 2.0),
    beta=st.floats(0.1, 1.5),
    k=st.floats(0.5, 3.0),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_lrn_matches_torch(torch, channels, spatial, size, alpha, beta, k, scale, seed):
    rng = np.random.default_rng(seed)
    shape = (2, channels, *spatial)
    x = rng.standard_normal(shape) * scale
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    g = rng.standard_normal(shape)
    yt.backward(torch.tensor(g))

    y, cache = local_response_norm(x, size, alpha, beta, k, return_cache=True)
    assert y.shape == shape
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = local_response_norm_backward(g, x, size, alpha, beta, k, cache=cache)
    assert rel_err(gx, xt.grad.numpy()) <= TOL
    gx2 = local_response_norm_backward(g, x, size, alpha, beta, k)  # scale recomputed
    np.testing.assert_array_equal(gx2, gx)


def test_lrn_alexnet_paper_setting_matches_torch(torch):
    """AlexNet's n=5, k=2, beta=0.75 and alpha=1e-4 (5e-4 in PyTorch's convention)."""
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((2, 96, 7, 7))) * 20
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, 5, 5e-4, 0.75, 2.0)
    g = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(g))
    y = local_response_norm(x, 5, 5e-4, 0.75, 2.0)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = local_response_norm_backward(g, x, 5, 5e-4, 0.75, 2.0)
    assert rel_err(gx, xt.grad.numpy()) <= TOL


def test_lrn_matches_its_definition():
    """y_c = x_c (k + alpha/n * sum_{j=c-n//2}^{c+(n-1)//2} x_j^2)^-beta, computed naively."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 3))
    for n in (1, 2, 4, 5, 9):
        alpha, beta, k = 0.3, 0.6, 1.5
        ref = np.empty_like(x)
        for c in range(x.shape[1]):
            lo, hi = max(0, c - n // 2), min(x.shape[1], c + (n - 1) // 2 + 1)
            s = k + alpha / n * np.sum(x[:, lo:hi] ** 2, axis=1)
            ref[:, c] = x[:, c] * s**-beta
        assert rel_err(local_response_norm(x, n, alpha, beta, k), ref) <= 1e-13


def test_window_sum_mirrors():
    """The forward window [c-b, c+a] and the backward's mirrored one [c-a, c+b] are transposes."""
    rng = np.random.default_rng(2)
    for before, after in [(2, 2), (2, 1), (0, 3), (4, 0)]:
        u = rng.standard_normal((1, 6, 2))
        v = rng.standard_normal((1, 6, 2))
        lhs = np.sum(L._window_sum(u, before, after) * v)
        rhs = np.sum(u * L._window_sum(v, after, before))
        assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1)


@pytest.mark.parametrize(
    "shape, size, alpha, beta, k",
    [
        ((2, 6, 3, 2), 5, 0.5, 0.75, 2.0),
        ((1, 4, 5), 2, 1.0, 0.5, 1.0),
        ((2, 3, 2, 2, 2), 6, 2.0, 1.2, 0.7),
    ],
)
def test_lrn_finite_differences(shape, size, alpha, beta, k):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape)
    analytic = local_response_norm_backward(w, x, size, alpha, beta, k)

    def f(z):
        return float(np.sum(local_response_norm(z, size, alpha, beta, k) * w))

    assert rel_err(analytic, numerical_grad(f, x)) <= 1e-7
    assert directional_check(f, x, analytic, rng) <= 1e-7


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_lrn_keeps_dtype(dtype):
    rng = np.random.default_rng(4)
    x64 = rng.standard_normal((2, 8, 4, 4))
    x = x64.astype(dtype)
    y = local_response_norm(x, 5, 1e-2, 0.75, 2.0)
    assert y.dtype == dtype
    gx = local_response_norm_backward(np.ones_like(x), x, 5, 1e-2, 0.75, 2.0)
    assert gx.dtype == dtype
    tol = {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-15}[dtype]
    ref = local_response_norm(x.astype(np.float64), 5, 1e-2, 0.75, 2.0)
    assert rel_err(y, ref) <= tol


X = np.ones((2, 4, 3, 3))


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: local_response_norm(X, 0), ValueError, "size"),
        (lambda: local_response_norm(X, -2), ValueError, "size"),
        (lambda: local_response_norm(X, 2.5), TypeError, "size"),
        (lambda: local_response_norm(X, True), TypeError, "size"),
        (lambda: local_response_norm(X, 3, alpha="a"), TypeError, "alpha"),
        (lambda: local_response_norm(X, 3, beta=None), TypeError, "beta"),
        (lambda: local_response_norm(X, 3, k=[1.0]), TypeError, "k"),
        (lambda: local_response_norm(np.ones((4, 3)), 3), ValueError, "x"),
        (lambda: local_response_norm(X.astype(np.int32), 3), TypeError, "x"),
        (lambda: local_response_norm(X.astype(np.complex128), 3), TypeError, "x"),
        (lambda: local_response_norm_backward(np.ones((2, 4, 3)), X, 3), ValueError, "grad_output"),
        (lambda: local_response_norm_backward(X.astype(np.int64), X, 3), TypeError, "grad_output"),
        (
            lambda: local_response_norm_backward(X, X, 3, cache=(X, np.ones(3))),
            ValueError,
            "cache",
        ),
    ],
)
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=rf"^{name}:"):
        call()
