"""Upsample, UpsamplingNearest2d and UpsamplingBilinear2d against torch.nn (float64),
finite differences, repr, empty batches."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _compare(torch, ours, theirs, x, rng):
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape))
    if yt.numel():
        yt.backward(torch.tensor(g))
    y = ours(x)
    assert y.shape == tuple(yt.shape) and y.dtype == x.dtype
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = ours.backward(g)
    assert gx.shape == x.shape
    if x.size:
        assert rel_err(gx, xt.grad.numpy()) <= TOL
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((2, 3, 5), {"scale_factor": 2}),
        ((2, 3, 5), {"size": 7, "mode": "linear"}),
        ((2, 3, 5), {"scale_factor": 1.5, "mode": "linear", "align_corners": True}),
        ((2, 2, 4, 5), {"size": (7, 3), "mode": "bilinear"}),
        ((2, 2, 4, 5), {"scale_factor": (1.5, 2.0), "mode": "nearest-exact"}),
        ((2, 2, 4, 5), {"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True}),
        ((1, 2, 3, 4, 2), {"scale_factor": 2, "mode": "trilinear", "align_corners": False}),
        ((1, 2, 3, 4, 2), {"size": (4, 2, 5)}),
        ((0, 2, 3, 3), {"scale_factor": 3, "mode": "bilinear"}),
    ],
)
def test_upsample_matches_torch(torch, shape, kwargs):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape)
    _compare(torch, nn.Upsample(**kwargs), torch.nn.Upsample(**kwargs), x, rng)


@pytest.mark.parametrize("name", ["UpsamplingNearest2d", "UpsamplingBilinear2d"])
@pytest.mark.parametrize("kwargs", [{"scale_factor": 2}, {"size": (5, 7)}])
def test_fixed_mode_forms_match_torch(torch, name, kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 4))
    _compare(torch, getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs), x, rng)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale_factor": 2.5},
        {"size": (4, 6), "mode": "bilinear"},
        {"scale_factor": 0.6, "mode": "bilinear", "align_corners": True},
        {"size": 3, "mode": "nearest-exact"},
    ],
)
def test_backward_matches_finite_differences(kwargs):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 3, 4))
    layer = nn.Upsample(**kwargs)
    g = rng.standard_normal(layer(x).shape)
    gx = layer.backward(g)
    numeric = numerical_grad(lambda v: float(np.sum(layer(v) * g)), x)
    assert rel_err(gx, numeric) <= 1e-8


def test_scale_factor_is_stored_as_torch_stores_it(torch):
    for sf in (2, (2, 3), 0, None):
        ours = nn.Upsample(size=4 if not sf else None, scale_factor=sf)
        theirs = torch.nn.Upsample(size=4 if not sf else None, scale_factor=sf)
        assert ours.scale_factor == theirs.scale_factor and repr(ours) == repr(theirs)


def test_backward_before_forward_and_bad_mode():
    with pytest.raises(RuntimeError, match="backward"):
        nn.Upsample(scale_factor=2).backward(np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="^mode: expected one of"):
        nn.Upsample(scale_factor=2, mode="cubic")(np.zeros((1, 1, 4)))
