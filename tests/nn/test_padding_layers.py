"""Padding layers (ZeroPad, ConstantPad, ReflectionPad, ReplicationPad, CircularPad, 1-3d)
against torch.nn in float64, finite differences, unbatched and empty batches, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10
KINDS = ("ZeroPad", "ConstantPad", "ReflectionPad", "ReplicationPad", "CircularPad")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _make(module, kind, dims, padding):
    cls = getattr(module, f"{kind}{dims}d")
    return cls(padding, -0.5) if kind == "ConstantPad" else cls(padding)


def _compare(torch, ours, theirs, x, rng):
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape))
    if yt.numel():
        yt.backward(torch.tensor(g))
    y = ours(x)
    assert y.shape == tuple(yt.shape) and y.dtype == x.dtype
    assert np.array_equal(y, yt.detach().numpy())
    gx = ours.backward(g)
    assert gx.shape == x.shape
    if x.size:
        assert rel_err(gx, xt.grad.numpy()) <= TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batch", [None, 0, 2])
def test_layers_match_torch(torch, kind, dims, batch):
    rng = np.random.default_rng(dims)
    spatial = (4, 3, 5)[:dims]
    shape = ((3,) if batch is None else (batch, 3)) + spatial
    x = rng.standard_normal(shape)
    paddings = [2, tuple(int(v) for v in rng.integers(0, 3, 2 * dims))]
    if kind in ("ZeroPad", "ConstantPad", "ReplicationPad"):
        paddings.append((1, -1) * dims)  # negative values crop
    for padding in paddings:
        ours = _make(nn, kind, dims, padding)
        theirs = _make(torch.nn, kind, dims, padding)
        _compare(torch, ours, theirs, x, rng)
        assert ours.padding == theirs.padding
        assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_finite_differences(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 3, 4))
    layer = _make(nn, kind, 2, (2, 1, 1, 2))
    g = rng.standard_normal(layer(x).shape)
    gx = layer.backward(g)
    numeric = numerical_grad(lambda v: float(np.sum(layer(v) * g)), x)
    assert rel_err(gx, numeric) <= 1e-8


def test_a_shorter_tuple_pads_only_the_last_dims_as_in_torch(torch):
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    _compare(torch, nn.ZeroPad2d((1, 2)), torch.nn.ZeroPad2d((1, 2)), x, np.random.default_rng(1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_circular_layers_check_the_rank_as_torch(torch, dims):
    x = np.zeros((1, 1, 1) + (3,) * dims)
    with pytest.raises(ValueError, match=rf"^input: expected {dims + 1}D or {dims + 2}D input"):
        getattr(nn, f"CircularPad{dims}d")(1)(x)
    with pytest.raises(ValueError, match="expected"):
        getattr(torch.nn, f"CircularPad{dims}d")(1)(torch.tensor(x))


def test_reflection_padding_as_large_as_the_input_is_an_error(torch):
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="^pad: reflect padding must be less than the size"):
        nn.ReflectionPad1d(3)(x)
    with pytest.raises(RuntimeError):
        torch.nn.ReflectionPad1d(3)(torch.tensor(x))


def test_bad_construction_and_backward_before_forward():
    with pytest.raises(TypeError, match="^padding: expected an int or a tuple of 4 ints"):
        nn.ZeroPad2d(1.5)
    with pytest.raises(TypeError, match="^value: expected a float"):
        nn.ConstantPad1d(1, "0")
    with pytest.raises(RuntimeError, match="backward"):
        nn.ReplicationPad2d(1).backward(np.zeros((1, 1, 3, 3)))


def test_float32_is_kept():
    x = np.ones((2, 3, 4), dtype=np.float32)
    layer = nn.ReflectionPad1d((1, 2))
    assert layer(x).dtype == np.float32
    assert layer.backward(np.ones((2, 3, 7), np.float32)).dtype == np.float32


@pytest.mark.parametrize(
    ("layer", "order"),
    [
        (nn.ReflectionPad1d, "(left, right)"),
        (nn.ReflectionPad2d, "(left, right, top, bottom)"),
        (nn.ConstantPad3d, "(left, right, top, bottom, front, back)"),
    ],
)
def test_a_bad_padding_names_the_order_of_its_dimensions(layer, order):
    args = (1.5, 0.0) if layer is nn.ConstantPad3d else (1.5,)
    with pytest.raises(TypeError, match=re.escape(f"ints {order}, got 1.5")):
        layer(*args)
