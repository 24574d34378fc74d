"""Channel dropout (Dropout1d/2d/3d and dropout1d/2d/3d): statistics, scaling, seeding,
the mask shared by forward and backward, torch's rules for ranks, eval mode, empty batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gradcheck import numerical_grad, rel_err

FUNCS = {1: fc.dropout1d, 2: fc.dropout2d, 3: fc.dropout3d}
LAYERS = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_whole_channels_are_dropped_at_rate_p_and_the_rest_scaled(dims, p):
    n, c = 100, 60
    x = np.ones((n, c) + (3,) * dims)
    y, mask = FUNCS[dims](x, p, rng=0)
    assert y.shape == x.shape and mask.shape == (n, c) + (1,) * dims
    per_channel = y.reshape(n, c, -1)
    # every channel is either all zero or all 1/(1-p)
    zero = np.all(per_channel == 0, axis=2)
    scaled = np.all(np.abs(per_channel - 1 / (1 - p)) <= 1e-15, axis=2)
    assert np.all(zero | scaled)
    # Binomial(6000, p): within 6 standard deviations
    sd = np.sqrt(n * c * p * (1 - p))
    assert abs(zero.sum() - n * c * p) < 6 * sd
    # drops are independent across samples and channels
    assert np.max(np.abs(zero.mean(axis=0) - p)) < 6 * np.sqrt(p * (1 - p) / n)
    assert np.max(np.abs(zero.mean(axis=1) - p)) < 6 * np.sqrt(p * (1 - p) / c)


@pytest.mark.parametrize("dims", [1, 3])
def test_unbatched_input_draws_one_value_per_channel(dims):
    x = np.ones((500,) + (2,) * dims)
    y, mask = FUNCS[dims](x, 0.5, rng=1)
    assert mask.shape == (500,) + (1,) * dims
    per_channel = y.reshape(500, -1)
    assert np.all((per_channel == 0).all(axis=1) | (per_channel == 2).all(axis=1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_backward_uses_the_forward_mask(dims):
    rng = np.random.default_rng(2)
    layer = LAYERS[dims](0.4, rng=5)
    x = rng.standard_normal((3, 4) + (2,) * dims)
    y = layer(x)
    g = rng.standard_normal(x.shape)
    dx = layer.backward(g)
    np.testing.assert_array_equal(dx, g * layer._mask)
    assert np.array_equal(dx == 0, y == 0)
    # float64 finite differences with the mask fixed: the same seed draws the same mask
    numeric = numerical_grad(lambda v: float(np.sum(FUNCS[dims](v, 0.4, rng=5)[0] * g)), x)
    assert rel_err(dx, numeric) <= 1e-9


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eval_mode_p_zero_and_p_one(dims):
    x = np.random.default_rng(3).standard_normal((2, 3) + (2,) * dims)
    layer = LAYERS[dims](0.5).eval()
    assert layer(x) is x and layer.backward(x) is x
    y, mask = FUNCS[dims](x, 0.0)
    assert y is x and mask is None
    y, mask = FUNCS[dims](x, 1.0, rng=0)
    assert np.all(y == 0) and np.all(fc.channel_dropout_backward(np.ones_like(x), mask) == 0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_seeds_reproduce_and_generators_advance(dims):
    x = np.ones((8, 16) + (2,) * dims)
    a, b = LAYERS[dims](rng=7), LAYERS[dims](rng=7)
    ya = a(x)
    np.testing.assert_array_equal(ya, b(x))
    assert not np.array_equal(ya, a(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_empty_batch_and_inplace(dims):
    x = np.zeros((0, 3) + (4,) * dims, dtype=np.float32)
    assert LAYERS[dims]()(x).shape == x.shape
    x = np.ones((2, 3) + (2,) * dims, dtype=np.float32)
    y = LAYERS[dims](0.5, True, rng=0)(x)
    assert y is x and y.dtype == np.float32 and set(np.unique(x)) <= {0.0, 2.0}


def test_ranks_follow_torch():
    torch = pytest.importorskip("torch")
    # dropout1d: 2D or 3D only
    for shape in [(3,), (2, 3, 4, 5)]:
        with pytest.raises(ValueError, match="^input: dropout1d expected a 2D"):
            fc.dropout1d(np.ones(shape), 0.5)
        with pytest.raises(RuntimeError):
            torch.nn.functional.dropout1d(torch.ones(shape), 0.5)
    # dropout2d reads a 3D input as (N, C, L), with a warning, as torch does
    with pytest.warns(UserWarning, match="3D input"):
        _, mask = fc.dropout2d(np.ones((2, 3, 4)), 0.5, rng=0)
    assert mask.shape == (2, 3, 1)
    with pytest.warns(UserWarning, match="3D input"):
        assert torch.nn.functional.dropout2d(torch.ones(2, 3, 4), 0.5).shape == (2, 3, 4)
    # dropout3d: other ranks warn and drop along dim 0, as an unbatched input
    with pytest.warns(UserWarning, match="3-D input"):
        _, mask = fc.dropout3d(np.ones((5, 3, 4)), 0.5, rng=0)
    assert mask.shape == (5, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.dropout2d(np.ones((2, 3, 4, 4)), 0.5, rng=0)
        fc.dropout3d(np.ones((3, 4, 4, 4)), 0.5, rng=0)


@pytest.mark.parametrize("cls", [nn.Dropout1d, nn.Dropout2d, nn.Dropout3d])
def test_construction_and_repr(cls):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"^p: expected a probability in \[0, 1\], got 1.5"):
        cls(1.5)
    with pytest.raises(ValueError):
        getattr(torch.nn, cls.__name__)(1.5)
    assert repr(cls(0.25)) == repr(getattr(torch.nn, cls.__name__)(0.25))
    with pytest.raises(RuntimeError, match="backward"):
        cls().backward(np.ones((2, 3, 4, 4, 4)))


def test_channel_dropout_backward_checks_shapes():
    _, mask = fc.dropout2d(np.ones((2, 3, 4, 4)), 0.5, rng=0)
    with pytest.raises(ValueError, match="^grad_output: expected a shape that the mask"):
        fc.channel_dropout_backward(np.ones((2, 4, 4, 4)), mask)
    with pytest.raises(TypeError, match="^input: expected a float"):
        fc.dropout2d(np.ones((2, 3, 4, 4), dtype=np.int32), 0.5)
