"""foldconv.gradcheck: a user's layer with a wrong backward is caught and named, correct
layers (the user's and every model of foldconv.models) pass, random layers are checked
with a fixed mask, the model is left untouched, the CLI's table and exit status."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv import models, nn
from foldconv.cli import main
from foldconv.inspect import GradcheckResult, gradcheck


class MatMul(nn.Module):
    """y = x @ W for a square W; ``bug`` picks a deliberately wrong backward."""

    def __init__(self, d: int, bug: str = "", seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = nn.Parameter(rng.standard_normal((d, d)).astype(np.float32))
        self.bug = bug
        self._x = None

    def forward(self, x):
        self._x = x
        return x @ self.weight.data

    def backward(self, g):
        w = self.weight.data
        # dL/dW = x^T g, dL/dx = g W^T
        dw = self._x.T @ g
        if self.bug == "weight_factor":
            dw = dw * (1 + 1e-4)  # off by 0.01 %
        self.weight.accumulate(dw)
        if self.bug == "transposed":
            return g @ w  # W where W^T belongs: same shape, wrong values
        dx = g @ w.T
        if self.bug == "last_entry":
            dx = dx.copy()
            dx[-1, -1] = 0.0  # one boundary entry dropped
        return dx


class Noisy(nn.Module):
    """A correct random layer of the user's: y = x * m with a fresh mask from its own
    generator at each forward (as dropout in training)."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(5)
        self._m = None

    def forward(self, x):
        self._m = self.rng.uniform(0.5, 1.5, size=x.shape)
        return x * self._m

    def backward(self, g):
        return g * self._m


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    "bug, failing_array",
    [("transposed", "input"), ("weight_factor", "weight"), ("last_entry", "input")],
)
def test_a_wrong_backward_is_caught_and_named(bug, failing_array):
    model = nn.Sequential(nn.Linear(6, 6, rng=0), nn.Tanh(), MatMul(6, bug), nn.Linear(6, 3, rng=1))
    result = gradcheck(model, _x((4, 6)))
    assert not result.passed
    rows = {lc.name: lc for lc in result.layers}
    # The wrong layer fails, by the gradient that is wrong; every other leaf passes.
    assert not rows["2"].passed
    failing = [c.name for c in rows["2"].checks if not c.passed]
    assert failing == [failing_array]
    for name in ("0", "1", "3"):
        assert rows[name].passed, name
    assert "2" in result.failures
    text = str(result)
    assert "2 (MatMul)" in text and "FAIL" in text


def test_a_correct_user_layer_passes():
    model = nn.Sequential(MatMul(5), nn.Tanh(), Noisy(), MatMul(5, seed=3))
    result = gradcheck(model, _x((3, 5)))
    assert result.passed, str(result)
    assert [lc.name for lc in result.layers] == ["", "0", "1", "2", "3"]
    assert all(c.error < 1e-8 for lc in result.layers for c in lc.checks)


def test_dropout_in_training_is_checked_with_a_fixed_mask():
    model = nn.Sequential(nn.Linear(8, 8, rng=0), nn.Dropout(0.5, rng=2), nn.Linear(8, 2, rng=1))
    assert model.training
    state = model[1]._rng.bit_generator.state
    result = gradcheck(model, _x((4, 8)))
    assert result.passed, str(result)
    assert model[1]._rng.bit_generator.state == state  # the user's masks are not consumed


def test_global_generator_layers_are_rewound():
    nn.manual_seed(0)
    from foldconv.nn import init

    model = nn.Sequential(nn.Linear(8, 8, rng=0), nn.Dropout(0.3), nn.Tanh())
    before = init._global_rng.bit_generator.state
    assert gradcheck(model, _x((3, 8))).passed
    assert init._global_rng.bit_generator.state == before


def test_the_model_is_left_untouched():
    model = models.resnet18(10, rng=0)
    for p in model.parameters():
        p.grad = np.full(p.shape, 7.0, dtype=p.dtype)
    state = {k: (v, np.array(v, copy=True)) for k, v in model.state_dict().items()}
    result = gradcheck(model, _x((2, 3, 16, 16)), submodules=False)
    assert result.passed, str(result)
    for k, v in model.state_dict().items():
        assert v is state[k][0] and v.dtype == state[k][1].dtype
        np.testing.assert_array_equal(v, state[k][1])  # running statistics included
    assert all(np.all(p.grad == 7.0) for p in model.parameters())


def test_float64_parameters_are_shared_and_restored_exactly():
    model = MatMul(4)
    model.to(dtype=np.float64)
    w = model.weight.data
    copy = w.copy()
    assert gradcheck(model, _x((2, 4))).passed
    assert model.weight.data is w
    np.testing.assert_array_equal(w, copy)  # bitwise


def test_skips_are_reported():
    class TwoInputs(nn.Module):
        def forward(self, x):
            return self.inner(x, x)

        def backward(self, g):
            return 2 * g

    class Add(nn.Module):
        def forward(self, a, b):
            return a + b

    model = TwoInputs()
    model.inner = Add()
    result = gradcheck(model, _x((2, 3)))
    rows = {lc.name: lc for lc in result.layers}
    assert "positional arguments" in rows["inner"].skipped
    assert result.passed


def test_bad_arguments():
    with pytest.raises(TypeError, match="module"):
        gradcheck(lambda x: x, _x((2, 2)))
    with pytest.raises(ValueError, match="rtol"):
        gradcheck(MatMul(2), _x((2, 2)), rtol=0)
    with pytest.raises(ValueError, match="directions"):
        gradcheck(MatMul(2), _x((2, 2)), directions=0)
    with pytest.raises(TypeError, match="x"):
        gradcheck(MatMul(2), np.array(["a"]))


def test_lazy_attribute():
    assert isinstance(foldconv.gradcheck(MatMul(3), _x((2, 3))), GradcheckResult)


# -- every model of the zoo, on small inputs ------------------------------------------------
# AlexNet and VGG have 37M- and 103M-weight first dense layers whatever the input size:
# vgg16 took 43 s on 2 quiet cores, 189 s on 2 shared ones; vgg11 22 s / 108 s.
_BIG = {"alexnet", "alexnet_paper", "vgg11", "vgg16"}
_SIZE = {"resnet18": 16}  # 8 leaves batch norm 2 values per channel (see the CLI)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n
        for n in models.available_models()
    ],
)
def test_every_model_passes(name):
    # The paper's init (weights N(0, 0.01²), biases 1) leaves AlexNet's output nearly
    # independent of its input: ||dL/dx|| is 1e-3 of |L|, so the differences' rounding
    # (~1e-16·|L| / h) puts the input-gradient check of the whole model at 5e-7 to 9.5e-7
    # of ||dL/dx||, at the edge of rtol. The layers' code does not depend on the init:
    # with PyTorch's init the same network is checked with a margin.
    kwargs = {"init": "default"} if name == "alexnet_paper" else {}
    model = models.get_model(name, rng=0, **kwargs)
    size = model.input_size or _SIZE.get(name, model.min_input_size)
    result = gradcheck(model, _x((2, model.in_channels, size, size)))
    assert result.passed, str(result)
    checked = [lc for lc in result.layers if not lc.skipped]
    assert len(checked) == len(list(model.modules()))


def test_cli_gradcheck(capsys):
    assert main(["gradcheck", "--model", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "    0 (Conv2d)" in out and "weight" in out and "FAIL" not in out
    assert "all 14 modules checked pass" in out


def test_cli_gradcheck_fails_with_status_1(monkeypatch, capsys):
    def broken(num_classes=10, **kwargs):
        model = models.lenet5(num_classes, **kwargs)
        model.classifier.add_module("5", MatMul(num_classes, "transposed"))
        return model

    monkeypatch.setitem(models.MODELS, "broken", broken)
    assert main(["gradcheck", "--model", "broken"]) == 1
    out = capsys.readouterr().out
    assert "5 (MatMul)" in out and "FAIL" in out and "classifier.5" in out


def test_a_crashing_backward_fails_and_is_named():
    class Crash(nn.Module):
        def forward(self, x):
            return 2 * x

        def backward(self, g):
            raise RuntimeError("forgot to cache the input")

    result = gradcheck(nn.Sequential(nn.Linear(3, 3, rng=0), Crash()), _x((2, 3)))
    assert not result.passed and "1" in result.failures
    assert "RuntimeError: forgot to cache the input" in str(result)
