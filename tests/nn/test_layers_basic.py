"""Layers and losses: Linear, Flatten, activations, Dropout, BatchNorm, Residual, losses.

The first part needs no torch (finite differences, seeding, validation); the second checks
forward passes and every gradient against PyTorch float64 autograd.
"""

from __future__ import annotations

import numpy as np
import pytest

from foldconv import nn
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10


def _layer_grads(layer, x, g):
    """(y, dx, {name: grad}) after zero_grad, forward, backward(g)."""
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(g)
    return y, dx, {k: p.grad for k, p in layer.named_parameters()}


def _param_fd(layer, x, g, name):
    """Finite-difference gradient of sum(layer(x) * g) with respect to parameter ``name``."""
    p = dict(layer.named_parameters())[name]
    original = p.data.copy()

    def f(v):
        p.data[...] = v
        out = float(np.sum(layer(x) * g))
        p.data[...] = original
        return out

    return numerical_grad(f, original)


# =======================================================================================
# Without torch
# =======================================================================================
def test_linear_init_shapes_bounds_and_seeding():
    lin = nn.Linear(50, 7, rng=0)
    assert lin.weight.shape == (7, 50) and lin.bias.shape == (7,)
    assert lin.weight.dtype == np.float32
    bound = 1 / np.sqrt(50)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    # Spread over the whole interval, not a constant.
    assert np.abs(lin.weight.data).max() > 0.9 * bound and lin.weight.data.std() > bound / 2
    again = nn.Linear(50, 7, rng=0)
    np.testing.assert_array_equal(lin.weight.data, again.weight.data)
    np.testing.assert_array_equal(lin.bias.data, again.bias.data)
    assert not np.array_equal(lin.weight.data, nn.Linear(50, 7, rng=1).weight.data)
    nobias = nn.Linear(3, 2, bias=False, dtype=np.float64)
    assert nobias.bias is None and list(nobias.state_dict()) == ["weight"]
    assert nobias.weight.dtype == np.float64


def test_linear_layer_gradients_finite_differences_and_accumulation():
    rng = np.random.default_rng(0)
    lin = nn.Linear(4, 3, dtype=np.float64, rng=1)
    x = rng.standard_normal((5, 4))
    g = rng.standard_normal((5, 3))
    _, dx, grads = _layer_grads(lin, x, g)
    assert rel_err(dx, numerical_grad(lambda v: float(np.sum(lin(v) * g)), x)) < 1e-8
    for name in ("weight", "bias"):
        assert rel_err(grads[name], _param_fd(lin, x, g, name)) < 1e-8
    # A second backward accumulates.
    lin.zero_grad()
    lin(x)
    lin.backward(g)
    lin.backward(g)
    np.testing.assert_allclose(lin.weight.grad, 2 * grads["weight"], rtol=1e-14)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm2d, (3, 2, 3, 3))])
def test_batchnorm_layer_finite_differences(cls, shape, training):
    rng = np.random.default_rng(1)
    bn = cls(shape[1], dtype=np.float64)
    bn.weight.data[...] = rng.standard_normal(shape[1])
    bn.bias.data[...] = rng.standard_normal(shape[1])
    bn.running_mean[...] = rng.standard_normal(shape[1])
    bn.running_var[...] = rng.uniform(0.5, 2, shape[1])
    bn.train(training)
    x = rng.standard_normal(shape) * 2
    g = rng.standard_normal(shape)
    _, dx, grads = _layer_grads(bn, x, g)
    # In training each forward updates the running stats but not the output.
    assert directional_check(lambda v: float(np.sum(bn(v) * g)), x, dx, rng) < 1e-7
    assert rel_err(dx, numerical_grad(lambda v: float(np.sum(bn(v) * g)), x)) < 1e-7
    for name in ("weight", "bias"):
        assert rel_err(grads[name], _param_fd(bn, x, g, name)) < 1e-7


def test_residual_gradient_is_sum_of_branches_finite_differences():
    rng = np.random.default_rng(2)
    body = nn.Sequential(nn.Linear(4, 4, dtype=np.float64, rng=0), nn.Tanh())
    block = nn.Residual(body)
    x = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    y = block(x)
    np.testing.assert_allclose(y, body(x) + x, rtol=1e-15)
    block.zero_grad()
    block(x)
    dx = block.backward(g)
    body.zero_grad()
    body(x)
    np.testing.assert_allclose(dx, body.backward(g) + g, rtol=1e-14)
    assert rel_err(dx, numerical_grad(lambda v: float(np.sum(block(v) * g)), x)) < 1e-8
    projected = nn.Residual(
        nn.Linear(4, 2, dtype=np.float64, rng=3), nn.Linear(4, 2, dtype=np.float64, rng=4)
    )
    g2 = rng.standard_normal((3, 2))
    projected(x)
    dx2 = projected.backward(g2)
    assert rel_err(dx2, numerical_grad(lambda v: float(np.sum(projected(v) * g2)), x)) < 1e-8
    assert [n for n, _ in projected.named_parameters()] == [
        "body.weight",
        "body.bias",
        "shortcut.weight",
        "shortcut.bias",
    ]


def test_residual_shape_mismatch():
    block = nn.Residual(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^body: expected an output of the shape of x"):
        block(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match=r"^body: expected a Module"):
        nn.Residual(lambda x: x)


def test_dropout_layer_seeding_eval_and_mask_reuse():
    x = np.random.default_rng(3).standard_normal((32, 32))
    a, b = nn.Dropout(0.4, rng=11), nn.Dropout(0.4, rng=11)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, a(x))  # its own generator advances
    # The backward uses the mask of the latest forward.
    y = a(x)
    g = np.ones_like(x)
    dx = a.backward(g)
    np.testing.assert_array_equal(dx == 0, y == 0)
    np.testing.assert_allclose(dx[y != 0], 1 / 0.6, rtol=1e-15)
    np.testing.assert_allclose(y[y != 0], x[y != 0] / 0.6, rtol=1e-15)
    a.eval()
    assert a(x) is x and a.backward(g) is g
    # rng=None draws from the global generator, which manual_seed resets.
    nn.manual_seed(5)
    m1 = nn.Dropout(0.5)(x)
    nn.manual_seed(5)
    m2 = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(m1, m2)


def test_inplace_relu_and_dropout_overwrite_input():
    x = np.array([-1.0, 2.0, -3.0])
    relu = nn.ReLU(inplace=True)
    y = relu(x)
    assert y is x and np.array_equal(x, [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(relu.backward(np.ones(3)), [0.0, 1.0, 0.0])
    x = np.ones(1000)
    d = nn.Dropout(0.5, inplace=True, rng=0)
    y = d(x)
    assert y is x and set(np.unique(x)) == {0.0, 2.0}
    with pytest.raises(ValueError, match=r"^negative_slope: expected >= 0 with inplace=True"):
        nn.LeakyReLU(-0.1, inplace=True)


def test_layers_keep_dtype():
    x32 = np.random.default_rng(4).standard_normal((4, 3, 2, 2)).astype(np.float32)
    x16 = x32.astype(np.float16)
    for layer in (nn.ReLU(), nn.GELU(), nn.Softmax(1), nn.BatchNorm2d(3), nn.Flatten()):
        for x in (x32, x16):
            y = layer(x)
            assert y.dtype == x.dtype, type(layer).__name__
            assert layer.backward(np.ones_like(y)).dtype == x.dtype
    lin = nn.Linear(3, 2, dtype=np.float32)
    assert lin(np.ones((2, 3))).dtype == np.float64  # the input's dtype
    lin.backward(np.ones((2, 2)))
    assert lin.weight.grad.dtype == np.float32


def test_validation_messages():
    with pytest.raises(ValueError, match=r"^x: expected shape \(\*, 4\).*got \(2, 5\)"):
        nn.Linear(4, 3)(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^x: expected shape \(N, C, H, W\), got \(2, 3, 4\)"):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^x: expected shape \(N, C\) or \(N, C, L\), got"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^x: expected 3 channels along axis 1.*got shape"):
        nn.BatchNorm1d(3)(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^x: expected more than 1 value per channel"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(TypeError, match=r"^in_features: expected a non-negative int"):
        nn.Linear(2.5, 3)
    with pytest.raises(ValueError, match=r"^out_features: expected a non-negative int, got -1"):
        nn.Linear(2, -1)
    with pytest.raises(TypeError, match=r"^dtype: expected float16, float32 or float64"):
        nn.Linear(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match=r"^momentum: expected a float in \[0, 1\] or None"):
        nn.BatchNorm2d(3, momentum=2.0)
    with pytest.raises(TypeError, match=r"^dim: expected an int or None"):
        nn.Softmax(1.0)
    with pytest.raises(ValueError, match=r"^p: expected a probability"):
        nn.Dropout(2.0)
    for layer in (nn.Linear(2, 2), nn.ReLU(), nn.BatchNorm1d(2), nn.Dropout(), nn.Flatten()):
        with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
            layer.backward(np.zeros((2, 2), dtype=np.float32))
    for loss in (nn.CrossEntropyLoss(), nn.MSELoss()):
        with pytest.raises(RuntimeError, match="backward\\(\\) called before forward\\(\\)"):
            loss.backward()


def test_losses_return_0d_arrays_and_gradients_of_output_shape():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    target = rng.integers(0, 4, 6)
    ce = nn.CrossEntropyLoss()
    loss = ce(logits, target)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float32
    assert isinstance(float(loss), float) and float(loss) > 0
    grad = ce.backward()
    assert grad.shape == logits.shape and grad.dtype == np.float32
    # Rows of softmax - onehot sum to zero; 'mean' divides by N.
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-7)
    np.testing.assert_allclose(ce.backward(2.0), 2 * grad, rtol=1e-6)
    mse = nn.MSELoss(reduction="sum")
    a, b = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    assert abs(float(mse(a, b)) - float(np.sum((a - b) ** 2))) < 1e-12
    np.testing.assert_allclose(mse.backward(), 2 * (a - b), rtol=1e-14)


def test_batchnorm_buffers_and_modes():
    bn = nn.BatchNorm2d(4, momentum=None)
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((3, 4, 2, 2)).astype(np.float32) * 2 + 1 for _ in range(3)]
    for b in batches:
        bn(b)
    assert int(bn.num_batches_tracked) == 3
    # momentum=None: the running mean is the plain average of the batch means.
    expected = np.mean([b.mean(axis=(0, 2, 3)) for b in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean, expected, rtol=1e-5)
    # The registered buffers are the objects updated in place.
    assert bn.state_dict()["running_mean"] is bn.running_mean
    bn.eval()
    before = bn.running_mean.copy()
    bn(batches[0])
    np.testing.assert_array_equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 3
    bn.reset_running_stats()
    assert int(bn.num_batches_tracked) == 0 and np.all(bn.running_var == 1)
    plain = nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    assert list(plain.state_dict()) == [] and plain.num_parameters() == 0
    plain.eval()
    out = plain(rng.standard_normal((8, 3)).astype(np.float32) * 3 + 2)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)  # batch stats in eval too


# =======================================================================================
# Against PyTorch float64 autograd
# =======================================================================================
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _load_into_torch(torch, ours, theirs):
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})


def _compare(torch, ours, theirs, x, g, *, check_params=True):
    """Forward, input gradient and parameter gradients of ours vs theirs (float64)."""
    theirs.zero_grad()
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(g))
    ours.zero_grad()
    y = ours(x)
    dx = ours.backward(g)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    assert rel_err(dx, xt.grad.numpy()) <= TOL
    if check_params:
        tparams = dict(theirs.named_parameters())
        assert sorted(tparams) == sorted(n for n, _ in ours.named_parameters())
        for name, p in ours.named_parameters():
            assert rel_err(p.grad, tparams[name].grad.numpy()) <= TOL, name


def _activation_pairs(torch):
    return [
        (nn.ReLU(), torch.nn.ReLU()),
        (nn.LeakyReLU(), torch.nn.LeakyReLU()),
        (nn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)),
        (nn.Tanh(), torch.nn.Tanh()),
        (nn.Sigmoid(), torch.nn.Sigmoid()),
        (nn.GELU(), torch.nn.GELU()),
        (nn.GELU("tanh"), torch.nn.GELU("tanh")),
        (nn.Softmax(1), torch.nn.Softmax(1)),
        (nn.LogSoftmax(-1), torch.nn.LogSoftmax(-1)),
        (nn.Flatten(), torch.nn.Flatten()),
        (nn.Flatten(0, 2), torch.nn.Flatten(0, 2)),
    ]


def test_activation_layers_match_torch(torch):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 5, 3, 2)) * 3
    for ours, theirs in _activation_pairs(torch):
        ref_shape = tuple(theirs(torch.tensor(x)).shape)
        g = rng.standard_normal(ref_shape)
        _compare(torch, ours, theirs, x, g)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(7,), (2, 3)])
def test_linear_matches_torch(torch, bias, lead):
    rng = np.random.default_rng(11)
    ours = nn.Linear(6, 4, bias, dtype=np.float64, rng=0)
    theirs = torch.nn.Linear(6, 4, bias).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _load_into_torch(torch, ours, theirs)
    x = rng.standard_normal(lead + (6,))
    _compare(torch, ours, theirs, x, rng.standard_normal(lead + (4,)))


def test_linear_loads_torch_state_dict(torch):
    theirs = torch.nn.Linear(5, 3).double()
    ours = nn.Linear(5, 3, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(12).standard_normal((2, 5))
    assert rel_err(ours(x), theirs(torch.tensor(x)).detach().numpy()) <= TOL


def _bn_pair(torch, cls_name, c, **kwargs):
    ours = getattr(nn, cls_name)(c, dtype=np.float64, **kwargs)
    theirs = getattr(torch.nn, cls_name)(c, **kwargs).double()
    rng = np.random.default_rng(13)
    if ours.affine:
        ours.weight.data[...] = rng.standard_normal(c)
        ours.bias.data[...] = rng.standard_normal(c)
    _load_into_torch(torch, ours, theirs)
    return ours, theirs


BN_CASES = [
    ("BatchNorm1d", (8, 3), {}),
    ("BatchNorm1d", (4, 3, 5), {"momentum": 0.3, "eps": 1e-3}),
    ("BatchNorm2d", (4, 3, 3, 2), {}),
    ("BatchNorm2d", (3, 2, 4, 4), {"momentum": None}),
    ("BatchNorm2d", (3, 2, 2, 2), {"affine": False}),
    ("BatchNorm2d", (3, 2, 2, 2), {"track_running_stats": False}),
]


@pytest.mark.parametrize("cls_name, shape, kwargs", BN_CASES)
def test_batchnorm_train_then_eval_matches_torch(torch, cls_name, shape, kwargs):
    c = shape[1]
    ours, theirs = _bn_pair(torch, cls_name, c, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(14)
    for step in range(4):
        x = rng.standard_normal(shape) * (step + 1) + step
        _compare(torch, ours, theirs, x, rng.standard_normal(shape))
    ref_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        if name == "num_batches_tracked":
            assert value.dtype == np.int64 and int(value) == int(ref_state[name]) == 4
        elif name.startswith("running"):
            assert rel_err(value, ref_state[name].numpy()) <= TOL, name
    ours.eval()
    theirs.eval()
    for _ in range(2):
        x = rng.standard_normal(shape) * 2
        _compare(torch, ours, theirs, x, rng.standard_normal(shape))


def test_batchnorm_state_dict_round_trip_from_torch(torch):
    theirs = torch.nn.BatchNorm2d(3).double()
    theirs.train()
    rng = np.random.default_rng(15)
    for _ in range(3):
        theirs(torch.tensor(rng.standard_normal((4, 3, 2, 2))))
    ours = nn.BatchNorm2d(3, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert int(ours.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    assert rel_err(ours(x), theirs(torch.tensor(x)).detach().numpy()) <= TOL


@pytest.mark.parametrize("projection", [False, True])
def test_residual_matches_torch(torch, projection):
    class TorchResidual(torch.nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body = body
            self.shortcut = shortcut

        def forward(self, x):
            return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)

    out = 3 if projection else 5
    body = nn.Sequential(
        nn.Linear(5, 6, dtype=np.float64, rng=0),
        nn.GELU(),
        nn.BatchNorm1d(6, dtype=np.float64),
        nn.Linear(6, out, dtype=np.float64, rng=1),
    )
    shortcut = nn.Linear(5, 3, dtype=np.float64, rng=2) if projection else None
    ours = nn.Residual(body, shortcut)
    theirs = TorchResidual(
        torch.nn.Sequential(
            torch.nn.Linear(5, 6), torch.nn.GELU(), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, out)
        ),
        torch.nn.Linear(5, 3) if projection else None,
    ).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _load_into_torch(torch, ours, theirs)
    rng = np.random.default_rng(16)
    x = rng.standard_normal((7, 5))
    _compare(torch, ours, theirs, x, rng.standard_normal((7, out)))


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_module_matches_torch(torch, smoothing, reduction):
    rng = np.random.default_rng(17)
    logits = rng.standard_normal((9, 5)) * 2
    target = rng.integers(0, 5, 9)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        lt, torch.tensor(target)
    )
    ref.backward(torch.tensor(0.3, dtype=torch.float64))
    crit = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    assert rel_err(crit(logits, target), ref.detach().numpy()) <= TOL
    assert rel_err(crit.backward(0.3), lt.grad.numpy()) <= TOL


def test_mse_module_matches_torch(torch):
    rng = np.random.default_rng(18)
    x, t = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.MSELoss()(xt, torch.tensor(t))
    ref.backward()
    crit = nn.MSELoss()
    assert rel_err(crit(x, t), ref.detach().numpy()) <= TOL
    assert rel_err(crit.backward(), xt.grad.numpy()) <= TOL


def test_small_network_end_to_end_matches_torch(torch):
    ours = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8, dtype=np.float64, rng=0),
        nn.BatchNorm1d(8, dtype=np.float64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, 4, dtype=np.float64, rng=1),
        nn.LogSoftmax(1),
    )
    theirs = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(12, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(8, 4),
        torch.nn.LogSoftmax(1),
    ).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _load_into_torch(torch, ours, theirs)
    # Dropout is random in training; the deterministic comparison runs in eval mode, where
    # BatchNorm uses running statistics, after two training steps have moved them.
    rng = np.random.default_rng(19)
    for _ in range(2):
        x = rng.standard_normal((6, 3, 2, 2))
        ours(x)
        theirs(torch.tensor(x))
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((6, 3, 2, 2))
    _compare(torch, ours, theirs, x, rng.standard_normal((6, 4)))
