"""BatchNorm3d and GroupNorm layers: torch.nn float64 (train and eval, parameter
gradients, running statistics) and float64 finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _pair(torch, cls, args, kwargs, seed):
    ours = getattr(nn, cls)(*args, dtype=np.float64, **kwargs)
    theirs = getattr(torch.nn, cls)(*args, **kwargs).double()
    rng = np.random.default_rng(seed)
    if ours.weight is not None:
        ours.weight.data[...] = rng.standard_normal(ours.weight.shape)
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(ours.weight.data))
    if ours.bias is not None:
        ours.bias.data[...] = rng.standard_normal(ours.bias.shape)
        with torch.no_grad():
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    return ours, theirs


def _step(torch, ours, theirs, x, g):
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(g))
    y = ours(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_err(y, yt.detach().numpy()) <= TOL
    assert rel_err(ours.backward(g), xt.grad.numpy()) <= TOL
    for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert rel_err(p.grad, tp.grad.numpy()) <= TOL, name  # accumulated over steps
    for name, value in ours.state_dict().items():
        ref = theirs.state_dict()[name].numpy()
        if value.dtype.kind == "i":
            assert int(value) == int(ref)
        else:
            assert rel_err(value, ref) <= TOL, name


CASES = [
    ("BatchNorm3d", (3,), {}, (4, 3, 2, 3, 2)),
    ("BatchNorm3d", (2,), {"momentum": None, "eps": 1e-3}, (3, 2, 2, 2, 3)),
    ("BatchNorm3d", (2,), {"affine": False, "track_running_stats": False}, (2, 2, 3, 2, 2)),
    ("BatchNorm3d", (2,), {"bias": False}, (2, 2, 2, 2, 2)),
    ("GroupNorm", (2, 6), {}, (3, 6, 4)),
    ("GroupNorm", (3, 3), {"eps": 1e-3}, (2, 3, 2, 3)),
    ("GroupNorm", (1, 4), {"affine": False}, (2, 4, 2, 2, 2)),
    ("GroupNorm", (1, 4), {"bias": False}, (5, 4)),
]


@pytest.mark.parametrize("cls, args, kwargs, shape", CASES)
def test_layers_train_then_eval_match_torch(torch, cls, args, kwargs, shape):
    ours, theirs = _pair(torch, cls, args, kwargs, 0)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(1)
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        _step(torch, ours, theirs, x, rng.standard_normal(shape))
    ours.eval()
    theirs.eval()
    for _ in range(2):
        _step(torch, ours, theirs, rng.standard_normal(shape) * 2, rng.standard_normal(shape))


@pytest.mark.parametrize("cls, args, kwargs, shape", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_layers_finite_differences(cls, args, kwargs, shape, training):
    rng = np.random.default_rng(2)
    layer = getattr(nn, cls)(*args, dtype=np.float64, **kwargs)
    if not training and getattr(layer, "running_mean", None) is not None:
        layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)
    layer.train(training)
    momentum = getattr(layer, "momentum", None)
    if hasattr(layer, "momentum"):
        layer.momentum = 0.0  # keep the running statistics fixed across the evaluations
    x = rng.standard_normal(shape)
    r = rng.standard_normal(shape)
    layer(x)
    analytic = layer.backward(r)
    params = [(n, p, p.grad.copy()) for n, p in layer.named_parameters()]

    def loss():
        return float(np.sum(layer(x) * r))

    assert rel_err(analytic, numerical_grad(lambda v: float(np.sum(layer(v) * r)), x)) < 1e-7
    for name, p, grad in params:
        keep = p.data

        def at(v, p=p):
            p.data = v
            return loss()

        assert rel_err(grad, numerical_grad(at, keep)) < 1e-7, name
        p.data = keep
    layer.momentum = momentum


def test_batchnorm3d_checks_rank_and_channels():
    with pytest.raises(
        ValueError, match=r"^x: expected shape \(N, C, D, H, W\), got \(2, 3, 4, 4\)"
    ):
        nn.BatchNorm3d(3)(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"^x: expected 3 channels along axis 1"):
        nn.BatchNorm3d(3)(np.zeros((2, 4, 2, 2, 2), np.float32))


def test_groupnorm_construction_and_input_checks(torch):
    with pytest.raises(ValueError, match=r"^num_groups: expected a positive int dividing"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"^num_groups: expected a positive int dividing"):
        nn.GroupNorm(0, 4)
    with pytest.raises(TypeError, match=r"^num_channels: expected a non-negative int"):
        nn.GroupNorm(2, 4.0)
    with pytest.raises(ValueError, match=r"^x: expected 4 channels along axis 1"):
        nn.GroupNorm(2, 4)(np.zeros((2, 6)))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
        nn.GroupNorm(2, 4).backward(np.zeros((2, 4)))
    # without weights torch normalises any channel count its groups divide; so do we
    x = np.random.default_rng(3).standard_normal((2, 6, 3))
    ours = nn.GroupNorm(2, 4, affine=False)
    ref = torch.nn.GroupNorm(2, 4, affine=False)(torch.tensor(x)).numpy()
    assert rel_err(ours(x), ref) <= TOL
    layer = nn.GroupNorm(2, 4)
    layer.weight.data[...] = 3
    layer.reset_parameters()
    assert np.all(layer.weight.data == 1) and np.all(layer.bias.data == 0)
