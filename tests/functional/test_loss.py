"""Cross-entropy and MSE: finite differences (no torch) and PyTorch float64 autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foldconv.functional.loss import (
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
)
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10
CE_SHAPES = [(6, 4), (3, 5, 2), (2, 3, 2, 3)]


def _ce_problem(rng, shape):
    logits = rng.standard_normal(shape) * 3
    target = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    return logits, target


# ---------------------------------------------------------------------------------------
# Finite differences and direct definitions (no torch)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_backward_finite_differences(shape, reduction, smoothing):
    rng = np.random.default_rng(0)
    logits, target = _ce_problem(rng, shape)
    grad = cross_entropy_backward(
        logits, target, reduction=reduction, label_smoothing=smoothing, grad_output=1.7
    )
    numeric = numerical_grad(
        lambda v: (
            1.7 * float(cross_entropy(v, target, reduction=reduction, label_smoothing=smoothing))
        ),
        logits,
    )
    assert rel_err(grad, numeric) < 1e-8


def test_cross_entropy_none_reduction_backward_finite_differences():
    rng = np.random.default_rng(1)
    logits, target = _ce_problem(rng, (3, 4, 2))
    go = rng.standard_normal(target.shape)
    grad = cross_entropy_backward(
        logits, target, reduction="none", label_smoothing=0.1, grad_output=go
    )
    numeric = numerical_grad(
        lambda v: float(
            np.sum(cross_entropy(v, target, reduction="none", label_smoothing=0.1) * go)
        ),
        logits,
    )
    assert rel_err(grad, numeric) < 1e-8


def test_cross_entropy_matches_its_definition():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    target = np.array([2, 0])
    eps = 0.3
    total = 0.0
    for z, t in zip(logits, target, strict=True):
        logp = z - math.log(sum(math.exp(v) for v in z))
        total += -(1 - eps) * logp[t] - eps / 3 * logp.sum()
    loss = cross_entropy(logits, target, reduction="mean", label_smoothing=eps)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float64
    assert abs(float(loss) - total / 2) < 1e-15
    assert (
        abs(float(cross_entropy(logits, target, reduction="sum", label_smoothing=eps)) - total)
        < 1e-14
    )


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 0.0, 1e4]])
    target = np.array([0, 0])
    loss = cross_entropy(logits, target, reduction="none")
    np.testing.assert_allclose(loss, [0.0, 2e4], rtol=1e-15)
    grad = cross_entropy_backward(logits, target, reduction="sum")
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]], atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_losses_keep_dtype(dtype):
    rng = np.random.default_rng(2)
    logits, target = _ce_problem(rng, (5, 3))
    logits = logits.astype(dtype)
    assert cross_entropy(logits, target).dtype == dtype
    assert cross_entropy_backward(logits, target).dtype == dtype
    a, b = logits, (logits * 0.5).astype(dtype)
    assert mse_loss(a, b).dtype == dtype and mse_loss_backward(a, b).dtype == dtype


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_backward_finite_differences(reduction):
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    go = rng.standard_normal(x.shape) if reduction == "none" else 0.6
    grad = mse_loss_backward(x, t, reduction=reduction, grad_output=go)
    numeric = numerical_grad(lambda v: float(np.sum(mse_loss(v, t, reduction=reduction) * go)), x)
    assert rel_err(grad, numeric) < 1e-8
    np.testing.assert_allclose(
        mse_loss(x, t, reduction=reduction),
        {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction]((x - t) ** 2),
        rtol=1e-14,
    )


def test_cross_entropy_validation():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"^target: expected class indices in \[0, 2\].*got 3"):
        cross_entropy(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"^target: expected class indices in \[0, 2\].*got -1"):
        cross_entropy_backward(logits, np.array([0, -1, 2, 1]))
    with pytest.raises(
        TypeError,
        match=r"^target: expected integer class indices or class probabilities, got dtype f",
    ):
        cross_entropy(logits, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"^target: expected shape \(4,\).*got \(3,\)"):
        cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^input: expected shape \(C,\), \(N, C\)"):
        cross_entropy(np.zeros(()), np.array(1))
    with pytest.raises(TypeError, match=r"^input: expected a float16, float32 or float64"):
        cross_entropy(np.zeros((4, 3), dtype=int), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"^reduction: expected 'mean', 'sum' or 'none'"):
        cross_entropy(logits, np.array([0, 1, 2, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"^label_smoothing: expected a float in \[0, 1\]"):
        cross_entropy(logits, np.array([0, 1, 2, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"^grad_output: expected a scalar"):
        cross_entropy_backward(logits, np.array([0, 1, 2, 1]), grad_output=np.ones(4))


def test_mse_validation():
    with pytest.raises(ValueError, match=r"^target: expected the shape of input \(2, 3\)"):
        mse_loss(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"^target: expected a float16, float32 or float64"):
        mse_loss(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"^grad_output: expected shape \(3,\)"):
        mse_loss_backward(np.zeros(3), np.ones(3), reduction="none", grad_output=np.ones(2))


# ---------------------------------------------------------------------------------------
# PyTorch float64 autograd
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_matches_torch(torch, shape, reduction, smoothing):
    rng = np.random.default_rng(4)
    logits, target = _ce_problem(rng, shape)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        lt, torch.tensor(target), reduction=reduction, label_smoothing=smoothing
    )
    go = rng.standard_normal(target.shape) if reduction == "none" else 2.5
    ref.backward(torch.tensor(go, dtype=torch.float64))
    loss = cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)
    grad = cross_entropy_backward(
        logits, target, reduction=reduction, label_smoothing=smoothing, grad_output=go
    )
    assert rel_err(loss, ref.detach().numpy()) <= TOL
    assert rel_err(grad, lt.grad.numpy()) <= TOL


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(torch, reduction):
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3))
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t, requires_grad=True)
    ref = torch.nn.functional.mse_loss(xt, tt, reduction=reduction)
    go = rng.standard_normal(x.shape) if reduction == "none" else 0.7
    ref.backward(torch.tensor(go, dtype=torch.float64))
    assert rel_err(mse_loss(x, t, reduction=reduction), ref.detach().numpy()) <= TOL
    grad = mse_loss_backward(x, t, reduction=reduction, grad_output=go)
    assert rel_err(grad, xt.grad.numpy()) <= TOL
    assert rel_err(-grad, tt.grad.numpy()) <= TOL  # symmetric in (input, target)
