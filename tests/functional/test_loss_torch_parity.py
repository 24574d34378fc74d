"""Cross-entropy, NLL and MSE with PyTorch's full signatures: class weights, ignore_index,
label smoothing, class-probability targets, K-d and unbatched inputs, empty batches, the
deprecated size_average / reduce; each against PyTorch float64 autograd and float64
finite differences."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from foldconv import nn
from foldconv.functional.loss import (
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
    nll_loss,
    nll_loss_backward,
)
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10
# (C,) unbatched, (N, C), K-dimensional (N, C, d1[, d2]) and empty batches.
SHAPES = [(5,), (6, 4), (3, 5, 2), (2, 3, 2, 3), (0, 4), (0, 3, 2)]
IGNORE = -3


def _classes(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def _per_row(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _problem(seed, shape, soft, weighted, ignored):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    c = _classes(shape)
    if soft:
        target = rng.random(shape)
    else:
        target = rng.integers(0, c, _per_row(shape))
        if ignored and target.size:
            target.reshape(-1)[::2] = IGNORE
    weight = rng.random(c) + 0.1 if weighted else None
    return x, target, weight, (IGNORE if ignored else -100)


CE_CASES = [
    (shape, soft, weighted, ignored, reduction, eps)
    for shape, soft, weighted, ignored, reduction, eps in itertools.product(
        SHAPES, [False, True], [False, True], [False, True], ["mean", "sum", "none"], [0.0, 0.3]
    )
    if not (soft and ignored)  # ignore_index applies to class indices only
]


def _same_loss(ours, ref):
    ref = np.asarray(ref)
    if np.isnan(ref).any():  # 'mean' over nothing: nan, as in PyTorch
        assert np.isnan(ours).all() and np.shape(ours) == ref.shape
    else:
        assert rel_err(ours, ref) <= TOL


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("shape,soft,weighted,ignored,reduction,eps", CE_CASES)
def test_cross_entropy_matches_torch(torch, shape, soft, weighted, ignored, reduction, eps):
    x, target, weight, ii = _problem(0, shape, soft, weighted, ignored)
    xt = torch.tensor(x, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight)
    ref = torch.nn.functional.cross_entropy(
        xt, torch.tensor(target), wt, None, ii, None, reduction, eps
    )
    go = np.random.default_rng(1).standard_normal(_per_row(shape)) if reduction == "none" else 1.3
    ref.backward(torch.tensor(go, dtype=torch.float64))
    _same_loss(cross_entropy(x, target, weight, None, ii, None, reduction, eps), ref.detach())
    grad = cross_entropy_backward(x, target, weight, None, ii, None, reduction, eps, go)
    assert rel_err(grad, xt.grad.numpy()) <= TOL
    # The module, with PyTorch's positional order.
    crit = nn.CrossEntropyLoss(weight, None, ii, None, reduction, eps)
    _same_loss(crit(x, target), ref.detach())
    assert rel_err(crit.backward(go), xt.grad.numpy()) <= TOL


@pytest.mark.parametrize(
    "shape,weighted,ignored,reduction",
    list(itertools.product(SHAPES, [False, True], [False, True], ["mean", "sum", "none"])),
)
def test_nll_loss_matches_torch(torch, shape, weighted, ignored, reduction):
    x, target, weight, ii = _problem(2, shape, False, weighted, ignored)
    xt = torch.tensor(x, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight)
    ref = torch.nn.functional.nll_loss(xt, torch.tensor(target), wt, None, ii, None, reduction)
    go = np.random.default_rng(3).standard_normal(_per_row(shape)) if reduction == "none" else 0.7
    ref.backward(torch.tensor(go, dtype=torch.float64))
    _same_loss(nll_loss(x, target, weight, None, ii, None, reduction), ref.detach())
    grad = nll_loss_backward(x, target, weight, None, ii, None, reduction, go)
    assert rel_err(grad, xt.grad.numpy()) <= TOL
    crit = nn.NLLLoss(weight, None, ii, None, reduction)
    _same_loss(crit(x, target), ref.detach())
    assert rel_err(crit.backward(go), xt.grad.numpy()) <= TOL


def test_every_target_ignored_gives_nan_and_zero_gradient(torch):
    x = np.random.default_rng(4).standard_normal((3, 4))
    target = np.full(3, -100)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(target), label_smoothing=0.2)
    ref.backward()
    assert np.isnan(float(cross_entropy(x, target, label_smoothing=0.2)))
    grad = cross_entropy_backward(x, target, label_smoothing=0.2)
    np.testing.assert_array_equal(grad, xt.grad.numpy())
    np.testing.assert_array_equal(grad, 0.0)


# ---------------------------------------------------------------------------------------
# Finite differences (no torch)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,soft,weighted,ignored,reduction,eps",
    # (an unbatched ignored target ignores everything: nan, tested below)
    [c for c in CE_CASES if c[0] == (3, 5, 2) or (c[0] == (5,) and not c[3])],
)
def test_cross_entropy_backward_finite_differences(shape, soft, weighted, ignored, reduction, eps):
    x, target, weight, ii = _problem(5, shape, soft, weighted, ignored)
    go = np.random.default_rng(6).standard_normal(_per_row(shape)) if reduction == "none" else 1.7
    args = (weight, None, ii, None, reduction, eps)
    grad = cross_entropy_backward(x, target, *args, go)
    numeric = numerical_grad(lambda v: float(np.sum(cross_entropy(v, target, *args) * go)), x)
    assert rel_err(grad, numeric) < 1e-8


@pytest.mark.parametrize("weighted,ignored", [(False, False), (True, True)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_backward_finite_differences(weighted, ignored, reduction):
    x, target, weight, ii = _problem(7, (4, 3, 2), False, weighted, ignored)
    go = np.random.default_rng(8).standard_normal(target.shape) if reduction == "none" else 0.9
    args = (weight, None, ii, None, reduction)
    grad = nll_loss_backward(x, target, *args, go)
    numeric = numerical_grad(lambda v: float(np.sum(nll_loss(v, target, *args) * go)), x)
    assert rel_err(grad, numeric) < 1e-8


def test_weighted_mean_is_pytorchs_formula():
    # mean = Σ_i w[t_i] (-(1-e) l[i,t_i] - (e/C) Σ_c w_c l[i,c] / w[t_i]) / Σ_i w[t_i],
    # written out for two rows, one of them ignored.
    x = np.array([[1.0, 2.0, 0.5], [0.1, -0.3, 0.2], [2.0, 0.0, -1.0]])
    target = np.array([2, -100, 0])
    w = np.array([0.5, 2.0, 3.0])
    e = 0.25
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    nll = -(w[2] * logp[0, 2] + w[0] * logp[2, 0])
    smooth = -((w * logp[0]).sum() + (w * logp[2]).sum())
    expected = ((1 - e) * nll + e / 3 * smooth) / (w[2] + w[0])
    got = float(cross_entropy(x, target, w, reduction="mean", label_smoothing=e))
    assert abs(got - expected) < 1e-14


# ---------------------------------------------------------------------------------------
# The deprecated size_average / reduce, MSE's signature, errors
# ---------------------------------------------------------------------------------------
LEGACY = [(None, None), (True, None), (False, None), (None, False), (True, True), (False, True)]


@pytest.mark.parametrize("size_average,reduce", LEGACY)
def test_size_average_and_reduce_map_as_in_torch(torch, size_average, reduce):
    rng = np.random.default_rng(9)
    x, target = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    y = rng.standard_normal((4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_ce = torch.nn.CrossEntropyLoss(None, size_average, -100, reduce)(
            torch.tensor(x), torch.tensor(target)
        )
        ref_nll = torch.nn.NLLLoss(None, size_average, -100, reduce)(
            torch.tensor(x), torch.tensor(target)
        )
        ref_mse = torch.nn.MSELoss(size_average, reduce)(torch.tensor(x), torch.tensor(y))
    legacy = size_average is not None or reduce is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = [
            nn.CrossEntropyLoss(None, size_average, -100, reduce)(x, target),
            nn.NLLLoss(None, size_average, -100, reduce)(x, target),
            nn.MSELoss(size_average, reduce)(x, y),
            cross_entropy(x, target, None, size_average, -100, reduce),
            nll_loss(x, target, None, size_average, -100, reduce),
            mse_loss(x, y, size_average, reduce),
        ]
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == (6 if legacy else 0)
    for got, ref in zip(ours, [ref_ce, ref_nll, ref_mse] * 2, strict=True):
        assert rel_err(got, ref.numpy()) <= TOL


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (0, 3)])
def test_mse_weight_and_empty_input_match_torch(torch, reduction, shape):
    rng = np.random.default_rng(10)
    x, y, w = rng.standard_normal(shape), rng.standard_normal(shape), rng.random(shape)
    go = rng.standard_normal(shape) if reduction == "none" else 0.8
    for weight in (None, w):
        xt = torch.tensor(x, requires_grad=True)
        wt = None if weight is None else torch.tensor(weight)
        ref = torch.nn.functional.mse_loss(xt, torch.tensor(y), reduction=reduction, weight=wt)
        ref.backward(torch.tensor(go, dtype=torch.float64))
        _same_loss(mse_loss(x, y, reduction=reduction, weight=weight), ref.detach())
        grad = mse_loss_backward(x, y, reduction=reduction, weight=weight, grad_output=go)
        assert rel_err(grad, xt.grad.numpy()) <= TOL
        if weight is not None and shape[0]:
            numeric = numerical_grad(
                lambda v, wgt=weight: float(
                    np.sum(mse_loss(v, y, reduction=reduction, weight=wgt) * go)
                ),
                x,
            )
            assert rel_err(grad, numeric) < 1e-8


def test_class_loss_errors_name_the_argument():
    x = np.zeros((4, 3))
    t = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"^weight: expected shape \(3,\)"):
        cross_entropy(x, t, weight=np.ones(4))
    with pytest.raises(ValueError, match=r"^weight: expected a 1-d array"):
        nn.CrossEntropyLoss(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"^ignore_index: not supported with class-prob"):
        cross_entropy(x, np.full((4, 3), 1 / 3), ignore_index=1)
    with pytest.raises(TypeError, match=r"^target: expected a float array of class prob"):
        cross_entropy(x, np.ones((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^target: expected shape \(4,\)"):
        nll_loss(x, np.full((4, 3), 1 / 3).astype(np.int64))
    with pytest.raises(TypeError, match=r"^target: expected integer class indices, got"):
        nll_loss(x, np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"^target: expected class indices in \[0, 2\]"):
        nll_loss(x, np.array([0, 1, 3, -100]))
    with pytest.raises(ValueError, match=r"^input: expected at least one class"):
        cross_entropy(np.zeros((4, 0)), t)
    with pytest.raises(TypeError, match=r"^ignore_index: expected an int"):
        nn.NLLLoss(ignore_index=1.5)
    with pytest.raises(TypeError, match=r"^reduce: expected a bool or None"):
        nn.MSELoss(reduce="sum")
    with pytest.raises(ValueError, match=r"^weight: expected the shape of input"):
        mse_loss(x, x, weight=np.ones(3))
    with pytest.raises(ValueError, match=r"^grad_output: expected shape \(4,\)"):
        cross_entropy_backward(x, t, reduction="none", grad_output=np.ones(3))


def test_loss_weight_is_a_buffer(torch):
    w = np.array([1.0, 2.0, 0.5])
    ours = nn.CrossEntropyLoss(w).state_dict()
    theirs = torch.nn.CrossEntropyLoss(torch.tensor(w)).state_dict()
    assert list(ours) == list(theirs) == ["weight"]
    assert list(nn.NLLLoss().state_dict()) == list(torch.nn.NLLLoss().state_dict()) == []
