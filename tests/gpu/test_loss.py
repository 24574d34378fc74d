"""Losses on CuPy arrays (the kernels of foldconv.cuda.loss for class-index targets, array
code otherwise) against the CPU path on the same values, run twice bit for bit; the nn
loss layers on the GPU; errors as on the CPU."""

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
from tests.gpu.conftest import to_cpu
from tests.gradcheck import rel_err

# Unbatched, (N, C), K-d, empty; 300 and 20000 rows take a pass of partial sums
# (foldconv.cuda.loss.CHUNK = 256 rows) before the last sum.
SHAPES = [(5,), (6, 4), (3, 5, 2), (2, 3, 2, 3), (0, 4), (300, 10), (5, 4, 40, 100)]
# (weighted, ignored, label smoothing)
OPTIONS = [(False, False, 0.0), (True, True, 0.0), (True, False, 0.3), (False, True, 0.3)]
IGNORE = -3
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def _classes(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def _per_row(shape):
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def _problem(seed, shape, weighted, ignored, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    c = _classes(shape)
    t = np.asarray(rng.integers(0, c, _per_row(shape)))
    if ignored and t.size:
        t.reshape(-1)[::2] = IGNORE
    w = (rng.random(c) + 0.1).astype(dtype) if weighted else None
    return x, t, w, (IGNORE if ignored else -100)


def _on_gpu(cp, *arrays):
    return [None if a is None else cp.asarray(a) for a in arrays]


def _close(got, ref):
    """got (CuPy) equals ref (NumPy, the CPU path) within the dtype's tolerance; nan and
    inf where ref has them."""
    assert type(got).__module__.split(".")[0] == "cupy"
    got = to_cpu(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(got[~finite], ref[~finite])
    assert rel_err(got[finite], ref[finite]) <= TOL[ref.dtype]


def _twice_equal(f):
    a, b = to_cpu(f()), to_cpu(f())
    np.testing.assert_array_equal(a, b)  # bitwise, nan included


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,ignored,eps", OPTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_matches_cpu(cp, shape, weighted, ignored, eps, reduction, dtype):
    x, t, w, ii = _problem(0, shape, weighted, ignored, dtype)
    go = np.random.default_rng(1).standard_normal(t.shape) if reduction == "none" else 1.7
    kw = dict(ignore_index=ii, reduction=reduction, label_smoothing=eps)
    ref = cross_entropy(x, t, weight=w, **kw)
    ref_grad = cross_entropy_backward(x, t, weight=w, grad_output=go, **kw)
    xd, td, wd = _on_gpu(cp, x, t, w)
    god = cp.asarray(go) if reduction == "none" else go
    _close(cross_entropy(xd, td, weight=wd, **kw), ref)
    _close(cross_entropy_backward(xd, td, weight=wd, grad_output=god, **kw), ref_grad)
    _twice_equal(lambda: cross_entropy(xd, td, weight=wd, **kw))
    _twice_equal(lambda: cross_entropy_backward(xd, td, weight=wd, grad_output=god, **kw))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,ignored", [(False, False), (True, True)])
@pytest.mark.parametrize("shape", SHAPES)
def test_nll_loss_matches_cpu(cp, shape, weighted, ignored, reduction, dtype):
    x, t, w, ii = _problem(2, shape, weighted, ignored, dtype)
    go = np.random.default_rng(3).standard_normal(t.shape) if reduction == "none" else 0.6
    kw = dict(ignore_index=ii, reduction=reduction)
    ref = nll_loss(x, t, weight=w, **kw)
    ref_grad = nll_loss_backward(x, t, weight=w, grad_output=go, **kw)
    xd, td, wd = _on_gpu(cp, x, t, w)
    god = cp.asarray(go) if reduction == "none" else go
    _close(nll_loss(xd, td, weight=wd, **kw), ref)
    _close(nll_loss_backward(xd, td, weight=wd, grad_output=god, **kw), ref_grad)
    _twice_equal(lambda: nll_loss_backward(xd, td, weight=wd, grad_output=god, **kw))


def test_loss_is_a_0d_device_array(cp):
    x, t, _, _ = _problem(4, (8, 5), False, False, np.float32)
    loss = cross_entropy(cp.asarray(x), cp.asarray(t))
    assert type(loss).__module__.split(".")[0] == "cupy"
    assert loss.shape == () and loss.dtype == np.float32
    assert abs(float(loss) - float(cross_entropy(x, t))) <= 1e-5 * abs(float(loss))


def test_float16_input(cp):
    x, t, w, ii = _problem(5, (7, 6), True, True, np.float16)
    kw = dict(weight=w, ignore_index=ii, label_smoothing=0.1)
    xd, td, wd = _on_gpu(cp, x, t, w)
    got = cross_entropy(xd, td, **{**kw, "weight": wd})
    assert got.dtype == np.float16
    np.testing.assert_allclose(to_cpu(got), cross_entropy(x, t, **kw), rtol=1e-3)
    got = cross_entropy_backward(xd, td, **{**kw, "weight": wd})
    assert got.dtype == np.float16
    np.testing.assert_allclose(
        to_cpu(got), cross_entropy_backward(x, t, **kw), rtol=1e-3, atol=1e-3
    )


def test_every_target_ignored_and_zero_weights(cp):
    x = np.random.default_rng(6).standard_normal((3, 4))
    xd = cp.asarray(x)
    t = np.full(3, -100)
    assert np.isnan(float(cross_entropy(xd, cp.asarray(t))))
    _close(cross_entropy_backward(xd, cp.asarray(t)), np.zeros_like(x))
    t, w = np.array([1, 1, 2]), np.array([1.0, 0.0, 0.0, 1.0])
    for eps in (0.0, 0.2):
        kw = dict(label_smoothing=eps)
        _close(
            cross_entropy(xd, cp.asarray(t), weight=cp.asarray(w), **kw),
            cross_entropy(x, t, w, **kw),
        )
        _close(
            cross_entropy_backward(xd, cp.asarray(t), weight=cp.asarray(w), **kw),
            cross_entropy_backward(x, t, w, **kw),
        )


def test_grad_output_kinds(cp):
    x, t, _, _ = _problem(7, (4, 3), False, False, np.float64)
    xd, td = _on_gpu(cp, x, t)
    ref = cross_entropy_backward(x, t, grad_output=2.5)
    for go in (2.5, np.float32(2.5), cp.asarray(2.5), cp.asarray([2.5])):
        _close(cross_entropy_backward(xd, td, grad_output=go), ref)


def test_errors(cp):
    xd = cp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 2\].*got 3"):
        cross_entropy(xd, cp.asarray([0, 3]))
    with pytest.raises(ValueError, match=r"target: .*got -1"):
        nll_loss(xd, cp.asarray([-1, 0]))
    with pytest.raises(TypeError, match="a mix of both"):
        cross_entropy(xd, np.array([0, 1]))
    with pytest.raises(TypeError, match="a mix of both"):
        cross_entropy(xd, cp.asarray([0, 1]), weight=np.ones(3))
    with pytest.raises(TypeError, match="a mix of both"):
        mse_loss(xd, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(2,\)"):
        cross_entropy_backward(xd, cp.asarray([0, 1]), reduction="none", grad_output=1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets_and_mse(cp, reduction):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    q = rng.random((4, 3, 2)).astype(np.float32)
    w = rng.random(3).astype(np.float32)
    xd, qd, wd = _on_gpu(cp, x, q, w)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    go = rng.standard_normal((4, 2)) if reduction == "none" else 0.5
    god = cp.asarray(go) if reduction == "none" else go
    _close(cross_entropy(xd, qd, weight=wd, **kw), cross_entropy(x, q, weight=w, **kw))
    _close(
        cross_entropy_backward(xd, qd, weight=wd, grad_output=god, **kw),
        cross_entropy_backward(x, q, weight=w, grad_output=go, **kw),
    )
    _close(mse_loss(xd, qd, reduction=reduction), mse_loss(x, q, reduction=reduction))
    go = rng.standard_normal(x.shape) if reduction == "none" else 0.5
    god = cp.asarray(go) if reduction == "none" else go
    _close(
        mse_loss_backward(xd, qd, reduction=reduction, grad_output=god),
        mse_loss_backward(x, q, reduction=reduction, grad_output=go),
    )
    _twice_equal(lambda: mse_loss(xd, qd, reduction=reduction))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_layers(cp, reduction):
    rng = np.random.default_rng(9)
    x, t, w, ii = _problem(10, (5, 4, 3), True, True, np.float32)
    go = rng.standard_normal(t.shape) if reduction == "none" else 0.8
    god = cp.asarray(go) if reduction == "none" else go
    makers = [
        lambda: nn.CrossEntropyLoss(weight=w, ignore_index=ii, reduction=reduction),
        lambda: nn.CrossEntropyLoss(ignore_index=ii, reduction=reduction, label_smoothing=0.2),
        lambda: nn.NLLLoss(weight=w, ignore_index=ii, reduction=reduction),
    ]
    xd, td = _on_gpu(cp, x, t)
    for make in makers:
        ref_layer = make()
        ref = ref_layer(x, t), ref_layer.backward(go)
        layer = make().to("cuda")  # the class weight buffer moves with it
        got = layer(xd, td), layer.backward(god)
        for a, b in zip(got, ref, strict=True):
            _close(a, b)
    y = rng.standard_normal(x.shape).astype(np.float32)
    go = rng.standard_normal(x.shape) if reduction == "none" else 0.8
    god = cp.asarray(go) if reduction == "none" else go
    ref_layer, layer = nn.MSELoss(reduction=reduction), nn.MSELoss(reduction=reduction)
    ref = ref_layer(x, y), ref_layer.backward(go)
    got = layer(xd, cp.asarray(y)), layer.backward(god)
    for a, b in zip(got, ref, strict=True):
        _close(a, b)
