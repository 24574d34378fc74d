"""PixelShuffle / PixelUnshuffle (layers and functional forms) and Identity against torch
in float64, finite differences, leading dims, empty inputs and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    "shape,r",
    [
        ((2, 8, 3, 3), 2),
        ((18, 2, 3), 3),
        ((2, 2, 4, 1, 5), 2),
        ((1, 5, 2, 2), 1),
        ((0, 4, 2, 3), 2),
    ],
)
def test_pixel_shuffle_matches_torch(torch, shape, r):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.PixelShuffle(r)(xt)
    g = rng.standard_normal(tuple(yt.shape))
    layer = nn.PixelShuffle(r)
    y = layer(x)
    assert y.shape == tuple(yt.shape) and np.array_equal(y, yt.detach().numpy())
    if x.size:  # torch's own backward fails on an empty batch (see below)
        yt.backward(torch.tensor(g))
        assert np.array_equal(layer.backward(g), xt.grad.numpy())
    assert layer.backward(g).shape == x.shape
    assert repr(layer) == repr(torch.nn.PixelShuffle(r))


@pytest.mark.parametrize(
    "shape,r", [((2, 2, 4, 6), 2), ((3, 6, 9), 3), ((2, 1, 3, 4, 4), 4), ((1, 2, 3, 5), 1)]
)
def test_pixel_unshuffle_matches_torch(torch, shape, r):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.PixelUnshuffle(r)(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    layer = nn.PixelUnshuffle(r)
    y = layer(x)
    assert y.shape == tuple(yt.shape) and np.array_equal(y, yt.detach().numpy())
    assert np.array_equal(layer.backward(g), xt.grad.numpy())
    assert repr(layer) == repr(torch.nn.PixelUnshuffle(r))


def test_unshuffle_inverts_shuffle_and_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 2, 3))
    assert np.array_equal(fc.pixel_unshuffle(fc.pixel_shuffle(x, 2), 2), x)
    g = rng.standard_normal((2, 2, 4, 6))
    numeric = numerical_grad(lambda v: float(np.sum(fc.pixel_shuffle(v, 2) * g)), x)
    assert rel_err(fc.pixel_shuffle_backward(g, 2), numeric) <= 1e-9
    numeric = numerical_grad(lambda v: float(np.sum(fc.pixel_unshuffle(v, 2) * x)), g)
    assert rel_err(fc.pixel_unshuffle_backward(x, 2), numeric) <= 1e-9


def test_empty_inputs_keep_the_documented_shapes():
    assert fc.pixel_shuffle(np.zeros((0, 8, 3, 3)), 2).shape == (0, 2, 6, 6)
    assert fc.pixel_shuffle(np.zeros((2, 0, 3, 3)), 2).shape == (2, 0, 6, 6)
    # torch 2.13 returns an empty input to pixel_unshuffle unchanged, (0, 2, 4, 4) here;
    # the documented shape (*, C r^2, H / r, W / r) is kept, so shuffle inverts it.
    assert fc.pixel_unshuffle(np.zeros((0, 2, 4, 4)), 2).shape == (0, 8, 2, 2)


@pytest.mark.parametrize(
    "fn,args,exc,start",
    [
        (fc.pixel_shuffle, (np.zeros((2, 6, 3, 3)), 2), ValueError, "input: expected channels"),
        (fc.pixel_shuffle, (np.zeros((8, 3)), 2), ValueError, "input: expected at least 3"),
        (fc.pixel_shuffle, (np.zeros((2, 8, 3, 3)), 0), ValueError, "upscale_factor: expected"),
        (fc.pixel_shuffle, (np.zeros((2, 8, 3, 3)), 2.0), TypeError, "upscale_factor: expected"),
        (fc.pixel_unshuffle, (np.zeros((2, 2, 5, 6)), 2), ValueError, "input: expected height"),
        (fc.pixel_unshuffle, (np.zeros((2, 2, 4, 5)), 2), ValueError, "input: expected height"),
        (fc.pixel_unshuffle, (np.zeros((2, 4)), 2), ValueError, "input: expected at least 3"),
        (fc.pixel_unshuffle, (np.zeros((2, 2, 4, 4)), -1), ValueError, "downscale_factor:"),
    ],
)
def test_bad_input_is_named_and_rejected_by_torch_too(torch, fn, args, exc, start):
    with pytest.raises(exc) as info:
        fn(*args)
    assert str(info.value).startswith(start)
    with pytest.raises((RuntimeError, TypeError)):
        getattr(torch.nn.functional, fn.__name__)(torch.tensor(args[0]), *args[1:])


def test_layer_validates_at_construction():
    with pytest.raises(ValueError, match="^upscale_factor"):
        nn.PixelShuffle(0)
    with pytest.raises(TypeError, match="^downscale_factor"):
        nn.PixelUnshuffle(1.5)


def test_identity_takes_any_arguments_and_passes_through(torch):
    layer = nn.Identity(54, unused_argument1=0.1, unused_argument2=False)
    x = np.random.default_rng(3).standard_normal((0, 3))
    assert layer(x) is x and layer.backward(x) is x
    assert repr(layer) == repr(torch.nn.Identity(54, unused_argument1=0.1)) == "Identity()"
    assert list(layer.state_dict()) == []
