"""The loss kernels (foldconv.cuda.loss) against the CPU path, in Numba's CUDA simulator
(or on the GPU where there is one): cross-entropy and NLL with class-index targets, every
option (class weights, ignore_index, label smoothing, reductions, K-d, unbatched, empty
batches), their gradients, and the nn loss layers; plus the gradient against PyTorch
float64 autograd and finite differences of the kernels' own loss."""

import itertools

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from foldconv import nn  # noqa: E402
from foldconv.cuda import loss as cuda_loss  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402
from foldconv.functional.loss import (  # noqa: E402
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
    nll_loss,
    nll_loss_backward,
)
from tests.gradcheck import numerical_grad, rel_err  # noqa: E402

# (C,) unbatched, (N, C), K-dimensional and empty batches.
SHAPES = [(5,), (6, 4), (3, 5, 2), (2, 3, 2, 3), (0, 4), (2, 3, 0)]
IGNORE = -3
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _classes(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def _per_row(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _problem(seed, shape, weighted, ignored, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    c = _classes(shape)
    target = np.asarray(rng.integers(0, c, _per_row(shape)))
    if ignored and target.size:
        target.reshape(-1)[::2] = IGNORE
    weight = (rng.random(c) + 0.1).astype(dtype) if weighted else None
    return x, target, weight, (IGNORE if ignored else -100)


def _grad_output(rng, shape, reduction):
    return rng.standard_normal(_per_row(shape)) if reduction == "none" else 1.7


def _close(got, ref, dtype):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(got[~finite], ref[~finite])  # nan and inf where the CPU's are
    assert rel_err(got[finite], ref[finite]) <= TOL[dtype]


def _both(f, *args, **kw):
    """f on the CPU path and on the GPU path (the kernels)."""
    ref = f(*args, **kw)
    with gpu_path_on_cpu():
        got = f(*args, **kw)
    return got, ref


CE_CASES = list(
    itertools.product(SHAPES, [False, True], [False, True], ["mean", "sum", "none"], [0.0, 0.3])
)


@pytest.mark.parametrize("shape,weighted,ignored,reduction,eps", CE_CASES)
def test_cross_entropy_matches_cpu(shape, weighted, ignored, reduction, eps):
    x, t, w, ii = _problem(0, shape, weighted, ignored)
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=eps)
    _close(*_both(cross_entropy, x, t, **kw), np.float64)
    go = _grad_output(np.random.default_rng(1), shape, reduction)
    _close(*_both(cross_entropy_backward, x, t, grad_output=go, **kw), np.float64)


NLL_CASES = list(itertools.product(SHAPES, [False, True], [False, True], ["mean", "sum", "none"]))


@pytest.mark.parametrize("shape,weighted,ignored,reduction", NLL_CASES)
def test_nll_loss_matches_cpu(shape, weighted, ignored, reduction):
    x, t, w, ii = _problem(2, shape, weighted, ignored)
    kw = dict(weight=w, ignore_index=ii, reduction=reduction)
    _close(*_both(nll_loss, x, t, **kw), np.float64)
    go = _grad_output(np.random.default_rng(3), shape, reduction)
    _close(*_both(nll_loss_backward, x, t, grad_output=go, **kw), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lower_precision_matches_cpu(dtype, reduction):
    x, t, w, ii = _problem(4, (7, 6), True, True, dtype)
    tol = np.float32 if dtype == np.float32 else np.float64
    for eps in (0.0, 0.2):
        kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=eps)
        got, ref = _both(cross_entropy, x, t, **kw)
        if dtype == np.float16:  # both round the float32 result to float16
            np.testing.assert_allclose(got, ref, rtol=1e-3)
        else:
            _close(got, ref, tol)
        got, ref = _both(cross_entropy_backward, x, t, **kw, grad_output=_grad_output(
            np.random.default_rng(5), (7, 6), reduction
        ))  # fmt: skip
        if dtype == np.float16:
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
        else:
            _close(got, ref, tol)


def test_huge_logits_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    t = np.array([0, 0])
    got, ref = _both(cross_entropy, x, t, reduction="none")
    np.testing.assert_allclose(got, [0.0, 2e4], rtol=1e-12)
    _close(got, ref, np.float64)
    _close(*_both(cross_entropy_backward, x, t), np.float64)


def test_partial_sums_over_many_rows(monkeypatch):
    # Chunks of 4 rows: 30 rows take two partial passes (30 -> 8 -> 2) before the last sum.
    monkeypatch.setattr(cuda_loss, "CHUNK", 4)
    x, t, w, ii = _problem(6, (3, 4, 10), True, True)
    for reduction in ("mean", "sum"):
        kw = dict(weight=w, ignore_index=ii, reduction=reduction, label_smoothing=0.1)
        _close(*_both(cross_entropy, x, t, **kw), np.float64)
        _close(*_both(cross_entropy_backward, x, t, **kw), np.float64)
        _close(*_both(nll_loss, x, t, weight=w, ignore_index=ii, reduction=reduction), np.float64)


def test_every_target_ignored_gives_nan_and_zero_gradient():
    x = np.random.default_rng(7).standard_normal((3, 4))
    t = np.full(3, -100)
    for f, b in ((cross_entropy, cross_entropy_backward), (nll_loss, nll_loss_backward)):
        with gpu_path_on_cpu():
            assert np.isnan(f(x, t))
            np.testing.assert_array_equal(b(x, t), np.zeros_like(x))
            assert f(x, t, reduction="sum") == 0


def test_zero_weights_divide_as_the_cpu_path():
    # W = 0 with rows that count: the CPU path's nan / inf, entry for entry.
    x = np.random.default_rng(8).standard_normal((3, 4))
    t = np.array([1, 1, 2])
    w = np.array([1.0, 0.0, 0.0, 1.0])
    for eps in (0.0, 0.2):
        _close(*_both(cross_entropy, x, t, weight=w, label_smoothing=eps), np.float64)
        _close(*_both(cross_entropy_backward, x, t, weight=w, label_smoothing=eps), np.float64)
    _close(*_both(nll_loss_backward, x, t, weight=w), np.float64)


@pytest.mark.parametrize("go", [2.5, np.float32(2.5), np.array(2.5), np.array([2.5])])
def test_grad_output_kinds(go):
    x, t, _, _ = _problem(9, (4, 3), False, False)
    _close(*_both(cross_entropy_backward, x, t, grad_output=go), np.float64)
    _close(*_both(nll_loss_backward, x, t, grad_output=go, reduction="sum"), np.float64)


def test_errors_match_the_cpu_path():
    x = np.zeros((2, 3))
    cases = [
        (np.array([0, 3]), ValueError, r"target: expected class indices in \[0, 2\].*got 3"),
        (np.array([-1, 0]), ValueError, r"target: .*got -1"),
        (np.array([0.5, 1.0]), TypeError, "target: expected integer class indices"),
        (np.array([0, 1, 2]), ValueError, r"target: expected shape \(2,\)"),
    ]
    with gpu_path_on_cpu():
        for f in (cross_entropy, nll_loss, cross_entropy_backward, nll_loss_backward):
            for t, err, match in cases:
                if f in (nll_loss, nll_loss_backward) and err is TypeError:
                    match = "target: expected integer class indices, got"
                with pytest.raises(err, match=match):
                    f(x, t)
        with pytest.raises(ValueError, match="weight: expected shape"):
            cross_entropy(x, np.array([0, 1]), weight=np.ones(2))
        with pytest.raises(ValueError, match=r"grad_output: expected shape \(2,\)"):
            cross_entropy_backward(x, np.array([0, 1]), reduction="none", grad_output=1.0)
        with pytest.raises(ValueError, match="grad_output: expected a scalar"):
            nll_loss_backward(x, np.array([0, 1]), grad_output=np.ones(2))
        # An index equal to ignore_index is skipped, even out of range.
        assert np.isfinite(cross_entropy(x, np.array([0, 7]), ignore_index=7))


def test_probability_targets_and_mse_on_the_gpu_path():
    # Array code on every path: the GPU path must take it unchanged.
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 3, 2))
    q = rng.random((4, 3, 2))
    for reduction in ("mean", "sum", "none"):
        kw = dict(reduction=reduction, label_smoothing=0.1, weight=rng.random(3))
        _close(*_both(cross_entropy, x, q, **kw), np.float64)
        go = rng.standard_normal((4, 2)) if reduction == "none" else 0.5
        _close(*_both(cross_entropy_backward, x, q, grad_output=go, **kw), np.float64)
        _close(*_both(mse_loss, x, q, reduction=reduction), np.float64)
        go = rng.standard_normal(x.shape) if reduction == "none" else 0.5
        _close(*_both(mse_loss_backward, x, q, reduction=reduction, grad_output=go), np.float64)


def test_kernel_gradient_matches_finite_differences():
    x, t, w, ii = _problem(11, (3, 4, 2), True, True)
    kw = dict(weight=w, ignore_index=ii, label_smoothing=0.2)
    with gpu_path_on_cpu():
        grad = cross_entropy_backward(x, t, grad_output=1.3, **kw)
        numeric = numerical_grad(lambda v: 1.3 * float(cross_entropy(v, t, **kw)), x)
        assert rel_err(grad, numeric) < 1e-8
        grad = nll_loss_backward(x, t, weight=w, ignore_index=ii)
        numeric = numerical_grad(lambda v: float(nll_loss(v, t, weight=w, ignore_index=ii)), x)
        assert rel_err(grad, numeric) < 1e-8


@pytest.mark.parametrize("shape", [(3, 5, 2), (4, 6), (5,)])
def test_kernel_gradient_matches_torch(shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, t, w, ii = _problem(12, shape, True, len(shape) > 1)  # unbatched: its one target counts
    go = np.random.default_rng(13).standard_normal(t.shape)
    cases = [("mean", 0.0), ("mean", 0.25), ("sum", 0.1), ("none", 0.2)]
    for (reduction, eps), nll in itertools.product(cases, [False, True]):
        if nll and eps:
            continue
        kw = dict(weight=w, ignore_index=ii, reduction=reduction)
        tkw = dict(kw, weight=torch.tensor(w))
        if not nll:
            kw["label_smoothing"] = tkw["label_smoothing"] = eps
        f, f_back, tf = (
            (nll_loss, nll_loss_backward, F.nll_loss)
            if nll
            else (cross_entropy, cross_entropy_backward, F.cross_entropy)
        )
        xt = torch.tensor(x, requires_grad=True)
        ref = tf(xt, torch.tensor(t), **tkw)
        g = go if reduction == "none" else 1.0
        ref.backward(torch.tensor(g))
        with gpu_path_on_cpu():
            assert rel_err(f(x, t, **kw), ref.detach().numpy()) <= 1e-10
            assert rel_err(f_back(x, t, grad_output=g, **kw), xt.grad.numpy()) <= 1e-10


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_layers_match_cpu(reduction):
    rng = np.random.default_rng(13)
    x, t, w, ii = _problem(14, (5, 4, 3), True, True)
    go = rng.standard_normal(t.shape) if reduction == "none" else 0.8
    layers = [
        lambda: nn.CrossEntropyLoss(weight=w, ignore_index=ii, reduction=reduction),
        lambda: nn.CrossEntropyLoss(ignore_index=ii, reduction=reduction, label_smoothing=0.15),
        lambda: nn.NLLLoss(weight=w, ignore_index=ii, reduction=reduction),
    ]
    for make in layers:
        ref_layer = make()
        ref = ref_layer(x, t), ref_layer.backward(go)
        layer = make()
        with gpu_path_on_cpu():
            got = layer(x, t), layer.backward(go)
        for a, b in zip(got, ref, strict=True):
            _close(a, b, np.float64)
    y = rng.standard_normal(x.shape)
    ref_layer, layer = nn.MSELoss(reduction=reduction), nn.MSELoss(reduction=reduction)
    go = rng.standard_normal(x.shape) if reduction == "none" else 0.8
    ref = ref_layer(x, y), ref_layer.backward(go)
    with gpu_path_on_cpu():
        got = layer(x, y), layer.backward(go)
    for a, b in zip(got, ref, strict=True):
        _close(a, b, np.float64)


def test_runs_are_bitwise_equal():
    x, t, w, ii = _problem(15, (6, 5, 2), True, True, np.float32)
    kw = dict(weight=w, ignore_index=ii, label_smoothing=0.1)
    with gpu_path_on_cpu():
        a = cross_entropy(x, t, **kw), cross_entropy_backward(x, t, **kw)
        b = cross_entropy(x, t, **kw), cross_entropy_backward(x, t, **kw)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_target_dtypes_and_an_ignore_index_among_the_classes(dtype):
    x = np.random.default_rng(16).standard_normal((6, 4, 2))
    t = np.random.default_rng(17).integers(0, 4, (6, 2)).astype(dtype)
    for f in (cross_entropy, cross_entropy_backward, nll_loss, nll_loss_backward):
        _close(*_both(f, x, t, ignore_index=2), np.float64)
