"""Functional dropout: mask statistics, seeding, identity cases, gradient (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv.functional.dropout import dropout, dropout_backward, dropout_mask
from tests.gradcheck import numerical_grad, rel_err


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics(p):
    x = np.ones((200, 500))
    y, mask = dropout(x, p, training=True, rng=0)
    kept = y != 0
    # Binomial(100000, 1-p): 6 standard deviations.
    n = x.size
    sd = np.sqrt(n * p * (1 - p))
    assert abs(kept.sum() - n * (1 - p)) < 6 * sd
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    np.testing.assert_array_equal(mask, y)  # x is ones
    # Inverted dropout keeps the expectation: E[y] = x.
    assert abs(y.mean() - 1.0) < 6 * np.sqrt(p / (1 - p) / n)
    # No structure: every row and every column keeps about 1-p of its elements.
    assert np.max(np.abs(kept.mean(axis=1) - (1 - p))) < 6 * np.sqrt(p * (1 - p) / 500)
    assert np.max(np.abs(kept.mean(axis=0) - (1 - p))) < 6 * np.sqrt(p * (1 - p) / 200)


def test_seed_reproducibility_and_independence():
    x = np.random.default_rng(0).standard_normal((64, 64))
    y1, m1 = dropout(x, 0.5, rng=123)
    y2, m2 = dropout(x, 0.5, rng=123)
    y3, _ = dropout(x, 0.5, rng=124)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(y1, y3)
    gen = np.random.default_rng(7)
    a, _ = dropout(x, 0.5, rng=gen)
    b, _ = dropout(x, 0.5, rng=gen)
    assert not np.array_equal(a, b)  # a shared generator advances


def test_identity_when_not_training_or_p_zero():
    x = np.random.default_rng(1).standard_normal((5, 7))
    for kwargs in ({"training": False}, {"p": 0.0}):
        y, mask = dropout(x, **({"p": 0.5} | kwargs))
        assert y is x and mask is None
        g = np.ones_like(x)
        assert dropout_backward(g, mask) is g


def test_p_one_drops_everything():
    x = np.ones((3, 4), dtype=np.float32)
    y, mask = dropout(x, 1.0, rng=0)
    assert np.all(y == 0) and np.all(np.isfinite(y)) and y.dtype == np.float32
    assert np.all(dropout_backward(np.ones_like(x), mask) == 0)


def test_gradient_uses_the_forward_mask():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal(x.shape)
    y, mask = dropout(x, 0.3, rng=5)
    dx = dropout_backward(g, mask)
    np.testing.assert_array_equal(dx, g * mask)
    assert np.array_equal(dx == 0, y == 0)
    # Finite differences with the mask fixed: the same seed gives the same mask each call.
    numeric = numerical_grad(lambda v: float(np.sum(dropout(v, 0.3, rng=5)[0] * g)), x)
    assert rel_err(dx, numeric) < 1e-9


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_keeps_dtype(dtype):
    x = np.ones((10, 10), dtype=dtype)
    y, mask = dropout(x, 0.25, rng=0)
    assert y.dtype == dtype and mask.dtype == dtype
    assert dropout_mask((3, 2), 0.5, rng=0, dtype=dtype).dtype == dtype


def test_validation():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"^p: expected a probability in \[0, 1\], got 1.5"):
        dropout(x, 1.5)
    with pytest.raises(ValueError, match=r"^p: expected a probability in \[0, 1\], got -0.1"):
        dropout(x, -0.1)
    with pytest.raises(TypeError, match=r"^p: expected a float"):
        dropout(x, "0.5")
    with pytest.raises(TypeError, match=r"^x: expected a float16, float32 or float64"):
        dropout(np.ones(3, dtype=np.int8), 0.5)
    with pytest.raises(TypeError, match=r"^rng: expected a numpy Generator"):
        dropout(x, 0.5, rng="seed")
