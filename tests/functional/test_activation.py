"""Activations, erf and softmax: finite differences (no torch) and PyTorch float64 autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foldconv.functional.activation import (
    erf,
    erfc,
    gelu,
    gelu_backward,
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    log_softmax_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10


def _away_from_zero(rng, shape, margin=1e-2):
    """Random normals with |x| >= margin, so finite differences never straddle a kink."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.copysign(margin, x) + x, x)


# Each entry: forward(x), backward(dy, x, y) using whichever array the backward takes.
ELEMENTWISE = {
    "relu": (relu, lambda g, x, y: relu_backward(g, y)),
    "leaky_relu": (
        lambda x: leaky_relu(x, 0.2),
        lambda g, x, y: leaky_relu_backward(g, x, 0.2),
    ),
    "leaky_relu_negative_slope": (
        lambda x: leaky_relu(x, -0.3),
        lambda g, x, y: leaky_relu_backward(g, x, -0.3),
    ),
    "tanh": (tanh, lambda g, x, y: tanh_backward(g, y)),
    "sigmoid": (sigmoid, lambda g, x, y: sigmoid_backward(g, y)),
    "gelu": (gelu, lambda g, x, y: gelu_backward(g, x)),
    "gelu_tanh": (
        lambda x: gelu(x, "tanh"),
        lambda g, x, y: gelu_backward(g, x, "tanh"),
    ),
}


# ---------------------------------------------------------------------------------------
# erf / erfc against the standard library (no torch)
# ---------------------------------------------------------------------------------------
def test_erf_max_error_on_dense_grid():
    x = np.concatenate(
        [
            np.linspace(-7.0, 7.0, 140_001),
            np.logspace(-300, 0.5, 2_000),
            -np.logspace(-300, 0.5, 2_000),
            np.linspace(2.45, 2.55, 10_001),  # around the series/fraction switch
        ]
    )
    ref = np.array([math.erf(v) for v in x])
    got = erf(x)
    relative = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
    assert relative.max() < 4e-15, (relative.max(), x[relative.argmax()])


def test_erfc_max_error_on_dense_grid():
    # erfc is tested in relative terms down to 1e-300 (x ~ 26); for x in (0, 2.5) it is
    # 1 - erf, whose absolute error ~1e-16 becomes ~3e-13 relative at erfc(2.5) = 4e-4.
    x = np.linspace(-6.0, 26.0, 160_001)
    ref = np.array([math.erfc(v) for v in x])
    got = erfc(x)
    relative = np.abs(got - ref) / ref
    assert relative.max() < 5e-13, (relative.max(), x[relative.argmax()])
    tail = x >= 2.5
    assert relative[tail].max() < 5e-15


def test_erf_special_values_and_symmetry():
    x = np.array([-np.inf, -40.0, -0.0, 0.0, 40.0, np.inf, np.nan])
    got = erf(x)
    np.testing.assert_array_equal(got[:6], [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])
    assert np.isnan(got[6])
    np.testing.assert_array_equal(erfc(np.array([-np.inf, np.inf])), [2.0, 0.0])
    assert np.isnan(erfc(np.array([np.nan]))[0])
    z = np.random.default_rng(0).standard_normal(1000) * 3
    np.testing.assert_array_equal(erf(-z), -erf(z))


def test_erfc_mid_range_absolute_error():
    x = np.linspace(-2.0, 2.0, 40_001)
    ref = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(erfc(x) - ref)) < 2e-15


def test_gelu_is_accurate_in_the_negative_tail():
    # x * Phi(x) with Phi from erfc: no cancellation, so even tiny outputs keep their digits
    # (PyTorch's x/2 (1 + erf(x/sqrt 2)) loses them there: only checked against torch
    # relative to the largest magnitude).
    x = np.linspace(-37.0, -0.5, 7_001)
    ref = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    nonzero = ref != 0
    got = gelu(x)
    assert np.max(np.abs(got[nonzero] - ref[nonzero]) / np.abs(ref[nonzero])) < 5e-13


def test_erf_of_0d_and_lists():
    assert erf(np.array(0.5)).shape == ()
    np.testing.assert_allclose(erf(np.array(0.5)), math.erf(0.5), rtol=1e-15)
    np.testing.assert_allclose(erf([0.5, -1.0]), [math.erf(0.5), math.erf(-1.0)], rtol=1e-15)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float16, 2e-3)])
def test_erf_low_precision_dtypes(dtype, tol):
    x = np.linspace(-5, 5, 2001).astype(dtype)
    got = erf(x)
    assert got.dtype == dtype
    ref = np.array([math.erf(float(v)) for v in x])
    assert np.max(np.abs(got.astype(np.float64) - ref)) < tol


# ---------------------------------------------------------------------------------------
# Finite differences (no torch)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_backward_finite_differences(name):
    fwd, bwd = ELEMENTWISE[name]
    rng = np.random.default_rng(1)
    x = _away_from_zero(rng, (3, 4)) * 2
    g = rng.standard_normal(x.shape)
    analytic = bwd(g, x, fwd(x))
    numeric = numerical_grad(lambda v: float(np.sum(fwd(v) * g)), x)
    assert rel_err(analytic, numeric) < 1e-8
    big = _away_from_zero(rng, (4, 5, 6)) * 3
    gb = rng.standard_normal(big.shape)
    worst = directional_check(
        lambda v: float(np.sum(fwd(v) * gb)), big, bwd(gb, big, fwd(big)), rng
    )
    assert worst < 1e-7


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax_backward_finite_differences(which, dim):
    fwd, bwd = {
        "softmax": (softmax, softmax_backward),
        "log_softmax": (log_softmax, log_softmax_backward),
    }[which]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 2)) * 2
    g = rng.standard_normal(x.shape)
    analytic = bwd(g, fwd(x, dim), dim)
    numeric = numerical_grad(lambda v: float(np.sum(fwd(v, dim) * g)), x)
    assert rel_err(analytic, numeric) < 1e-8


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_softmax_properties(shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 5
    y = softmax(x, dim)
    np.testing.assert_allclose(np.sum(y, axis=dim), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_softmax(x, dim)), y, rtol=1e-12, atol=1e-15)
    g = rng.standard_normal(shape)
    # The softmax Jacobian is symmetric and annihilates constant shifts along dim.
    dx = softmax_backward(g, y, dim)
    np.testing.assert_allclose(np.sum(dx, axis=dim), 0.0, atol=1e-12)
    # Saturated softmaxes have tiny directional derivatives: compare absolutely.
    v = rng.standard_normal(shape)
    h = 1e-6
    numeric = (np.sum(softmax(x + h * v, dim) * g) - np.sum(softmax(x - h * v, dim) * g)) / (2 * h)
    assert abs(numeric - np.sum(dx * v)) < 1e-8


def test_softmax_is_stable_for_huge_inputs():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1e308, -999.0]])
    y = softmax(x, 1)
    ly = log_softmax(x, 1)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ly[0]))
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    e = np.exp([-1.0, 0.0, -2.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(ly[0], np.log(e / e.sum()), rtol=1e-14)


def test_sigmoid_does_not_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = sigmoid(x)
    assert y[0] == 0.0 and y[2] == 0.5 and y[4] == 1.0
    np.testing.assert_allclose(y[1], math.exp(-50) / (1 + math.exp(-50)), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_elementwise_keep_dtype(name, dtype):
    fwd, bwd = ELEMENTWISE[name]
    x = np.linspace(-3, 3, 24).reshape(4, 6).astype(dtype)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert bwd(np.ones_like(x), x, y).dtype == dtype


@pytest.mark.parametrize(
    "fn", [relu, tanh, sigmoid, gelu, lambda x: softmax(x, 0), lambda x: leaky_relu(x)]
)
@pytest.mark.parametrize("bad", [np.arange(4), np.ones(3, dtype=bool), np.ones(2, complex)])
def test_non_float_input_is_type_error(fn, bad):
    with pytest.raises(TypeError, match=r"^x: expected a float16, float32 or float64"):
        fn(bad)


def test_bad_arguments_name_themselves():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"^dim: expected an int in \[-2, 1\].*got 2"):
        softmax(x, 2)
    with pytest.raises(ValueError, match=r"^approximate: expected 'none' or 'tanh'"):
        gelu(x, "erf")
    with pytest.raises(ValueError, match=r"^grad_output: expected the shape of y"):
        relu_backward(np.zeros((3, 2)), x)


# ---------------------------------------------------------------------------------------
# PyTorch float64 autograd
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_fns(torch):
    tf = torch.nn.functional
    return {
        "relu": tf.relu,
        "leaky_relu": lambda t: tf.leaky_relu(t, 0.2),
        "leaky_relu_negative_slope": lambda t: tf.leaky_relu(t, -0.3),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": tf.gelu,
        "gelu_tanh": lambda t: tf.gelu(t, approximate="tanh"),
    }


def _vs_torch(torch, tfn, x, g):
    xt = torch.tensor(x, requires_grad=True)
    yt = tfn(xt)
    yt.backward(torch.tensor(g))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_matches_torch(torch, name):
    fwd, bwd = ELEMENTWISE[name]
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [rng.standard_normal(500) * 4, np.linspace(-12, 12, 2401), [0.0, -0.0, 1e-300]]
    ).reshape(-1, 8)
    g = rng.standard_normal(x.shape)
    y_ref, dx_ref = _vs_torch(torch, _torch_fns(torch)[name], x, g)
    y = fwd(x)
    assert rel_err(y, y_ref) <= TOL
    assert rel_err(bwd(g, x, y), dx_ref) <= TOL


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax_matches_torch(torch, which, dim):
    fwd, bwd = {
        "softmax": (softmax, softmax_backward),
        "log_softmax": (log_softmax, log_softmax_backward),
    }[which]
    tfn = getattr(torch, which)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5, 6)) * 10
    g = rng.standard_normal(x.shape)
    y_ref, dx_ref = _vs_torch(torch, lambda t: tfn(t, dim), x, g)
    y = fwd(x, dim)
    assert rel_err(y, y_ref) <= TOL
    assert rel_err(bwd(g, y, dim), dx_ref) <= TOL
