"""Functional batch and group norm: finite differences (no torch) and PyTorch float64 autograd."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv.functional.normalization import (
    batch_norm,
    batch_norm_backward,
    batch_norm_forward,
    group_norm,
    group_norm_backward,
    group_norm_forward,
)
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10
SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 5), (2, 2, 3, 2, 2)]


def _params(rng, c):
    return rng.standard_normal(c), rng.standard_normal(c)


# ---------------------------------------------------------------------------------------
# Finite differences (no torch)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_finite_differences(shape, training):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    w, b = _params(rng, c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    g = rng.standard_normal(shape)

    def loss(xv, wv=w, bv=b):
        # Copies of the running stats: training updates them in place.
        y = batch_norm(xv, rm.copy(), rv.copy(), wv, bv, training=training, eps=1e-3)
        return float(np.sum(y * g))

    _, mean, invstd = batch_norm_forward(x, rm.copy(), rv.copy(), w, b, training, eps=1e-3)
    dx, dw, db = batch_norm_backward(g, x, mean, invstd, w, training)
    if x.size <= 60:
        assert rel_err(dx, numerical_grad(loss, x)) < 1e-7
    else:
        assert directional_check(loss, x, dx, rng) < 1e-7
    assert rel_err(dw, numerical_grad(lambda v: loss(x, v, b), w)) < 1e-7
    assert rel_err(db, numerical_grad(lambda v: loss(x, w, v), b)) < 1e-7


def test_batch_norm_training_output_is_normalised():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4, 3)) * np.array([1.0, 5.0, 0.1, 3.0])[None, :, None] + 7
    y = batch_norm(x, training=True, eps=1e-300)  # eps must be > 0 in training, as torch
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1.0, rtol=1e-12)


def test_batch_norm_updates_running_stats_in_place():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 4)) * 2 + 1
    rm, rv = np.zeros(3), np.ones(3)
    ids = id(rm), id(rv)
    batch_norm(x, rm, rv, training=True, momentum=0.25)
    n = 5 * 4
    mean = x.mean(axis=(0, 2))
    unbiased = x.var(axis=(0, 2)) * n / (n - 1)
    np.testing.assert_allclose(rm, 0.25 * mean, rtol=1e-14)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * unbiased, rtol=1e-14)
    assert (id(rm), id(rv)) == ids


def test_batch_norm_eval_uses_running_stats():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2, 2))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    w, b = _params(rng, 3)
    y = batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)
    cs = (1, 3, 1, 1)
    expected = (x - rm.reshape(cs)) / np.sqrt(rv.reshape(cs) + 1e-5) * w.reshape(cs) + b.reshape(cs)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_batch_norm_keeps_dtype(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5)).astype(dtype)
    y, mean, invstd = batch_norm_forward(x, None, None, np.ones(3, np.float32), None, True)
    assert y.dtype == dtype
    dx, dw, db = batch_norm_backward(np.ones_like(x), x, mean, invstd, np.ones(3, np.float32))
    assert dx.dtype == dtype and dw.dtype == np.float32 and db.dtype == np.float32


def test_batch_norm_validation():
    x = np.zeros((4, 3, 5))
    with pytest.raises(ValueError, match=r"^x: expected shape \(N, C\) or \(N, C, \*\), got"):
        batch_norm(np.zeros(3), training=True)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(3,\).*got \(4,\)"):
        batch_norm(x, weight=np.ones(4), training=True)
    with pytest.raises(ValueError, match=r"^running_mean: expected an array when training=False"):
        batch_norm(x, training=False)
    with pytest.raises(ValueError, match=r"^x: expected more than 1 value per channel"):
        batch_norm(np.zeros((1, 3)), training=True)
    with pytest.raises(TypeError, match=r"^x: expected a float16, float32 or float64"):
        batch_norm(np.zeros((4, 3), dtype=np.int32), training=True)


# ---------------------------------------------------------------------------------------
# PyTorch float64 autograd
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_torch(torch, shape, training, affine):
    rng = np.random.default_rng(5)
    c = shape[1]
    x = rng.standard_normal(shape) * 3 - 1
    w, b = _params(rng, c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    g = rng.standard_normal(shape)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True) if affine else None
    bt = torch.tensor(b, requires_grad=True) if affine else None
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training, 0.3, 1e-4)
    yt.backward(torch.tensor(g))

    rm2, rv2 = rm.copy(), rv.copy()
    wa, ba = (w, b) if affine else (None, None)
    y, mean, invstd = batch_norm_forward(x, rm2, rv2, wa, ba, training, 0.3, 1e-4)
    dx, dw, db = batch_norm_backward(g, x, mean, invstd, wa, training)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    assert rel_err(dx, xt.grad.numpy()) <= TOL
    assert rel_err(rm2, rmt.numpy()) <= TOL
    assert rel_err(rv2, rvt.numpy()) <= TOL
    if affine:
        assert rel_err(dw, wt.grad.numpy()) <= TOL
        assert rel_err(db, bt.grad.numpy()) <= TOL
    else:
        assert dw is None and db is None


# ---------------------------------------------------------------------------------------
# Group normalisation
# ---------------------------------------------------------------------------------------
GN_CASES = [((4, 6), 3), ((3, 4, 5), 2), ((2, 6, 3, 2), 3), ((2, 4, 2, 3, 2), 4), ((3, 5, 4), 1)]


@pytest.mark.parametrize("shape, groups", GN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(torch, shape, groups, affine):
    rng = np.random.default_rng(6)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    w, b = _params(rng, c)
    g = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True) if affine else None
    bt = torch.tensor(b, requires_grad=True) if affine else None
    yt = torch.nn.functional.group_norm(xt, groups, wt, bt, 1e-4)
    yt.backward(torch.tensor(g))
    wa, ba = (w, b) if affine else (None, None)
    y, mean, invstd = group_norm_forward(x, groups, wa, ba, 1e-4)
    assert mean.shape == invstd.shape == (shape[0], groups)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    assert rel_err(group_norm(x, groups, wa, ba, 1e-4), y) == 0
    dx, dw, db = group_norm_backward(g, x, mean, invstd, groups, wa)
    assert rel_err(dx, xt.grad.numpy()) <= TOL
    if affine:
        assert rel_err(dw, wt.grad.numpy()) <= TOL
        assert rel_err(db, bt.grad.numpy()) <= TOL
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("shape, groups", GN_CASES)
def test_group_norm_finite_differences(shape, groups):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    w, b = _params(rng, shape[1])
    r = rng.standard_normal(shape)

    def loss(xv, wv, bv):
        return float(np.sum(group_norm(xv, groups, wv, bv) * r))

    y, mean, invstd = group_norm_forward(x, groups, w, b)
    dx, dw, db = group_norm_backward(r, x, mean, invstd, groups, w)
    assert rel_err(dx, numerical_grad(lambda v: loss(v, w, b), x)) < 1e-7
    assert rel_err(dw, numerical_grad(lambda v: loss(x, v, b), w)) < 1e-7
    assert rel_err(db, numerical_grad(lambda v: loss(x, w, v), b)) < 1e-7


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_group_norm_keeps_dtype(dtype):
    x = np.random.default_rng(8).standard_normal((3, 4, 5)).astype(dtype)
    w = np.ones(4, dtype)
    y, mean, invstd = group_norm_forward(x, 2, w, np.zeros(4, dtype))
    assert y.dtype == dtype
    dx, dw, db = group_norm_backward(np.ones_like(x), x, mean, invstd, 2, w)
    assert dx.dtype == dw.dtype == db.dtype == dtype


def test_group_norm_validation():
    x = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"^num_groups: expected a positive int dividing"):
        group_norm(x, 3)
    with pytest.raises(ValueError, match=r"^num_groups: expected a positive int dividing"):
        group_norm(x, 0)
    with pytest.raises(TypeError, match=r"^num_groups: expected an int"):
        group_norm(x, 2.0)
    with pytest.raises(ValueError, match=r"^x: expected shape \(N, C\)"):
        group_norm(np.zeros(4), 2)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(4,\)"):
        group_norm(x, 2, np.ones(3))
    with pytest.raises(TypeError, match=r"^x: expected a float16"):
        group_norm(x.astype(np.int64), 2)
    y, mean, invstd = group_norm_forward(x, 2)
    with pytest.raises(ValueError, match=r"^grad_output: expected shape"):
        group_norm_backward(np.zeros((2, 4)), x, mean, invstd, 2)
    with pytest.raises(ValueError, match=r"^mean: expected shape \(2, 2\)"):
        group_norm_backward(x, x, mean[:, :1], invstd, 2)
