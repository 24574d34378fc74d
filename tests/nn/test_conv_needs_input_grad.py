"""Conv layers with ``needs_input_grad = False`` (a network's first layer in training) and
the trainer's ``skip_input_grad``: no dL/dx, every parameter gradient bitwise unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from foldconv import nn
from foldconv.models import lenet5
from foldconv.trainer.loop import _first_layer, skip_input_grad


@pytest.mark.parametrize("layer", ["conv", "transpose", "no_bias"])
def test_layer_skips_input_grad_and_keeps_parameter_grads(layer):
    rng = np.random.default_rng(0)
    make = {
        "conv": lambda: nn.Conv2d(3, 4, 3, padding=1, rng=1),
        "transpose": lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, rng=1),
        "no_bias": lambda: nn.Conv2d(3, 4, 3, bias=False, rng=1),
    }[layer]
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    full, skip = make(), make()
    skip.needs_input_grad = False
    y = full(x)
    skip(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = full.backward(dy)
    assert dx.shape == x.shape
    assert skip.backward(dy) is None
    for (name, p), (_, q) in zip(full.named_parameters(), skip.named_parameters(), strict=True):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)


def test_default_layer_returns_input_grad():
    assert nn.Conv2d(1, 2, 3).needs_input_grad is True


def _step(model, x, y, skip):
    crit = nn.CrossEntropyLoss()
    crit(model(x), y)
    model.zero_grad()
    if skip:
        with skip_input_grad(model):
            return model.backward(crit.backward())
    return model.backward(crit.backward())


def test_skip_input_grad_on_lenet5_is_bitwise_the_full_step_and_restores():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    a, b = lenet5(10, rng=3), lenet5(10, rng=3)
    assert _first_layer(b) is b.features[0]
    assert _step(a, x, y, skip=False).shape == x.shape
    assert _step(b, x, y, skip=True) is None
    assert b.features[0].needs_input_grad is True  # restored: the user's model is unchanged
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)


def test_skip_input_grad_restores_on_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(RuntimeError), skip_input_grad(model):
        assert model[0].needs_input_grad is False
        raise RuntimeError
    assert model[0].needs_input_grad is True


def test_skip_input_grad_leaves_other_first_layers_alone():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 3))
    dy = np.ones(model(x).shape, np.float32)
    with skip_input_grad(model):
        dx = model.backward(dy)
    assert dx.shape == x.shape
    assert _first_layer(nn.Sequential()) is not None
