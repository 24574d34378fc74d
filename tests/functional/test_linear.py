"""linear / flatten: finite differences (no torch) and PyTorch float64 autograd."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv.functional.linear import flatten, flatten_backward, linear, linear_backward
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10


def _problem(rng, lead=(4,), fin=5, fout=3):
    x = rng.standard_normal(lead + (fin,))
    w = rng.standard_normal((fout, fin))
    b = rng.standard_normal(fout)
    g = rng.standard_normal(lead + (fout,))
    return x, w, b, g


# ---------------------------------------------------------------------------------------
# Finite differences (no torch)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(4,), (2, 3), ()])
def test_linear_backward_finite_differences(lead):
    rng = np.random.default_rng(0)
    x, w, b, g = _problem(rng, lead)
    dx, dw, db = linear_backward(g, x, w)
    assert rel_err(dx, numerical_grad(lambda v: float(np.sum(linear(v, w, b) * g)), x)) < 1e-8
    assert rel_err(dw, numerical_grad(lambda v: float(np.sum(linear(x, v, b) * g)), w)) < 1e-8
    assert rel_err(db, numerical_grad(lambda v: float(np.sum(linear(x, w, v) * g)), b)) < 1e-8


def test_linear_large_directional():
    rng = np.random.default_rng(1)
    x, w, b, g = _problem(rng, (16,), 64, 32)
    dx, dw, db = linear_backward(g, x, w)
    assert directional_check(lambda v: float(np.sum(linear(v, w, b) * g)), x, dx, rng) < 1e-7
    assert directional_check(lambda v: float(np.sum(linear(x, v, b) * g)), w, dw, rng) < 1e-7


def test_linear_without_bias():
    rng = np.random.default_rng(2)
    x, w, _, g = _problem(rng)
    np.testing.assert_allclose(linear(x, w), x @ w.T, rtol=1e-14)
    _, _, db = linear_backward(g, x, w, need_bias_grad=False)
    assert db is None


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_linear_keeps_input_dtype(dtype):
    rng = np.random.default_rng(3)
    x, w, b, g = _problem(rng)
    x = x.astype(dtype)
    y = linear(x, w.astype(np.float32), b.astype(np.float32))
    assert y.dtype == dtype
    dx, dw, db = linear_backward(g.astype(dtype), x, w.astype(np.float32))
    assert dx.dtype == dtype and dw.dtype == np.float32 and db.dtype == np.float32


def test_linear_validation_messages():
    w = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"^x: expected shape \(\*, 5\).*got \(4, 6\)"):
        linear(np.zeros((4, 6)), w)
    with pytest.raises(ValueError, match=r"^x: expected shape \(\*, 5\), got a 0-d"):
        linear(np.zeros(()), w)
    with pytest.raises(ValueError, match=r"^bias: expected shape \(3,\), got \(4,\)"):
        linear(np.zeros((2, 5)), w, np.zeros(4))
    with pytest.raises(ValueError, match=r"^weight: expected a 2-d array"):
        linear(np.zeros((2, 5)), np.zeros(5))
    with pytest.raises(TypeError, match=r"^x: expected a float16, float32 or float64 array"):
        linear(np.zeros((2, 5), dtype=np.int64), w)
    with pytest.raises(ValueError, match=r"^grad_output: expected shape \(2, 3\), got \(2, 4\)"):
        linear_backward(np.zeros((2, 4)), np.zeros((2, 5)), w)


@pytest.mark.parametrize(
    "shape, start, end, expected",
    [
        ((2, 3, 4, 5), 1, -1, (2, 60)),
        ((2, 3, 4, 5), 0, -1, (120,)),
        ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
        ((2, 3, 4, 5), -2, -1, (2, 3, 20)),
        ((2, 3), 1, 1, (2, 3)),
        ((7,), 0, 0, (7,)),
    ],
)
def test_flatten_shapes_and_backward(shape, start, end, expected):
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    y = flatten(x, start, end)
    assert y.shape == expected
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))
    g = np.random.default_rng(0).standard_normal(expected)
    dx = flatten_backward(g, shape)
    assert dx.shape == shape
    np.testing.assert_array_equal(dx.reshape(-1), g.reshape(-1))


def test_flatten_validation():
    with pytest.raises(ValueError, match=r"^start_dim: expected an int in \[-2, 1\].*got 2"):
        flatten(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"^start_dim: expected a dimension not after end_dim"):
        flatten(np.zeros((2, 3, 4)), 2, 1)
    with pytest.raises(ValueError, match=r"^grad_output: expected 24 elements"):
        flatten_backward(np.zeros(23), (2, 3, 4))


# ---------------------------------------------------------------------------------------
# PyTorch float64 autograd
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("lead", [(8,), (2, 3, 4), ()])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(torch, lead, with_bias):
    rng = np.random.default_rng(4)
    x, w, b, g = _problem(rng, lead, 7, 6)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if with_bias else None
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(g))
    y = linear(x, w, b if with_bias else None)
    dx, dw, db = linear_backward(g, x, w, need_bias_grad=with_bias)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    assert rel_err(dx, xt.grad.numpy()) <= TOL
    assert rel_err(dw, wt.grad.numpy()) <= TOL
    if with_bias:
        assert rel_err(db, bt.grad.numpy()) <= TOL


@pytest.mark.parametrize("start, end", [(1, -1), (0, 2), (2, 3), (-3, -2)])
def test_flatten_matches_torch(torch, start, end):
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 5))
    ref = torch.flatten(torch.tensor(x), start, end).numpy()
    y = flatten(x, start, end)
    assert y.shape == ref.shape
    assert rel_err(y, ref) == 0.0


@pytest.mark.parametrize("lead", [(3,), (2, 2), (1,), (0,)])
def test_linear_with_few_rows_matches_torch_and_is_contiguous(torch, lead):
    # Rows at most out_features / 4 take the (W x^T)^T form (one fewer GEMM layout).
    rng = np.random.default_rng(6)
    for dtype, tol in ((np.float64, TOL), (np.float32, 1e-5)):
        x, w, b, g = (a.astype(dtype) for a in _problem(rng, lead, 33, 40))
        y = linear(x, w, b)
        ref = torch.nn.functional.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b))
        assert y.shape == lead + (40,) and y.dtype == dtype
        assert y.flags["C_CONTIGUOUS"]
        assert rel_err(y, ref.numpy()) <= tol
