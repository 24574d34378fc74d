"""Conv and ConvTranspose layers against torch.nn with copied weights, init, seeding, grads."""

from __future__ import annotations

import math

import numpy as np
import pytest

import foldconv.nn as fnn
from tests.gradcheck import rel_err

torch = pytest.importorskip("torch")

CONV = {1: fnn.Conv1d, 2: fnn.Conv2d, 3: fnn.Conv3d}
CONVT = {1: fnn.ConvTranspose1d, 2: fnn.ConvTranspose2d, 3: fnn.ConvTranspose3d}
TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
TORCH_CONVT = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}
SIZES = {1: (11,), 2: (9, 8), 3: (6, 5, 5)}


def _copy_into_torch(ours, theirs):
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        if ours.bias is not None:
            theirs.bias.copy_(torch.from_numpy(ours.bias.data))


def _compare_with_torch(ours, theirs, x, seed):
    _copy_into_torch(ours, theirs)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    y = ours(x)
    assert y.dtype == np.float64
    assert rel_err(y, yt.detach().numpy()) <= 1e-10
    g = np.random.default_rng(seed).standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    gx = ours.backward(g)
    assert rel_err(gx, xt.grad.numpy()) <= 1e-10
    assert rel_err(ours.weight.grad, theirs.weight.grad.numpy()) <= 1e-10
    if ours.bias is not None:
        assert rel_err(ours.bias.grad, theirs.bias.grad.numpy()) <= 1e-10
    # PyTorch's parameter names, order and shapes
    ours_named = [(name, p.shape) for name, p in ours.named_parameters()]
    theirs_named = [(name, tuple(p.shape)) for name, p in theirs.named_parameters()]
    assert ours_named == theirs_named


# in, out, kernel, kwargs
CONV_CONFIGS = [
    (3, 4, 3, {}),
    (4, 6, 2, dict(stride=2, padding=1, groups=2)),
    (4, 4, 3, dict(padding="same", dilation=2, groups=4, padding_mode="reflect")),
    (2, 3, 3, dict(padding=2, padding_mode="circular", bias=False)),
    (3, 2, 2, dict(stride=2, padding="valid", padding_mode="replicate")),
    (6, 3, 3, dict(stride=3, padding=1, dilation=1, groups=3, padding_mode="replicate")),
    (2, 4, 1, dict(padding="same")),
]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=[f"cfg{i}" for i in range(len(CONV_CONFIGS))])
def test_conv_layer_matches_torch(rank, cfg):
    c_in, c_out, k, kwargs = cfg
    ours = CONV[rank](c_in, c_out, k, **kwargs, dtype=np.float64, rng=rank)
    theirs = TORCH_CONV[rank](c_in, c_out, k, **kwargs, dtype=torch.float64)
    x = np.random.default_rng(rank).standard_normal((2, c_in) + SIZES[rank])
    _compare_with_torch(ours, theirs, x, seed=rank)


def test_conv_layer_with_per_dimension_tuples_matches_torch():
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), padding_mode="reflect")
    ours = fnn.Conv2d(4, 6, (3, 2), **kwargs, groups=2, dtype=np.float64, rng=3)
    theirs = torch.nn.Conv2d(4, 6, (3, 2), **kwargs, groups=2, dtype=torch.float64)
    x = np.random.default_rng(3).standard_normal((2, 4, 9, 7))
    _compare_with_torch(ours, theirs, x, seed=3)


TRANSPOSE_CONFIGS = [
    (3, 4, 3, {}),
    (4, 6, 2, dict(stride=2, padding=1, output_padding=1, groups=2)),
    (4, 4, 3, dict(stride=1, dilation=2, output_padding=1, groups=4)),
    (2, 3, 3, dict(stride=3, padding=2, output_padding=2, bias=False)),
    (6, 3, (2, 3, 1), dict(stride=(2, 1, 1), padding=(0, 1, 0), output_padding=(1, 0, 0))),
]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(
    "cfg", TRANSPOSE_CONFIGS, ids=[f"cfg{i}" for i in range(len(TRANSPOSE_CONFIGS))]
)
def test_conv_transpose_layer_matches_torch(rank, cfg):
    c_in, c_out, k, kwargs = cfg
    kwargs = {key: (v[:rank] if isinstance(v, tuple) else v) for key, v in kwargs.items()}
    if isinstance(k, tuple):
        k = k[:rank]
    ours = CONVT[rank](c_in, c_out, k, **kwargs, dtype=np.float64, rng=rank)
    theirs = TORCH_CONVT[rank](c_in, c_out, k, **kwargs, dtype=torch.float64)
    x = np.random.default_rng(rank).standard_normal((2, c_in) + SIZES[rank])
    _compare_with_torch(ours, theirs, x, seed=rank)


@pytest.mark.parametrize("transpose", [False, True])
def test_unbatched_input(transpose):
    cls = fnn.ConvTranspose2d if transpose else fnn.Conv2d
    tcls = torch.nn.ConvTranspose2d if transpose else torch.nn.Conv2d
    ours = cls(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=0)
    theirs = tcls(3, 4, 3, stride=2, padding=1, dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((3, 7, 6))
    _compare_with_torch(ours, theirs, x, seed=0)


# ----------------------------------------------------------------------------------------
# Parameters: shapes, names, dtype, init
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("transpose", [False, True])
def test_parameter_shapes_and_names_equal_torch(rank, transpose):
    cls = (CONVT if transpose else CONV)[rank]
    tcls = (TORCH_CONVT if transpose else TORCH_CONV)[rank]
    k = (3, 2, 1)[:rank]
    for bias in (True, False):
        ours = cls(4, 6, k, groups=2, bias=bias, rng=0)
        theirs = tcls(4, 6, k, groups=2, bias=bias)
        assert [(n, p.shape) for n, p in ours.named_parameters()] == [
            (n, tuple(p.shape)) for n, p in theirs.named_parameters()
        ]
        assert isinstance(ours.weight, fnn.Parameter)
        assert ours.weight.data.dtype == np.float32  # the default dtype
        if bias:
            assert isinstance(ours.bias, fnn.Parameter)
            assert ours.bias.data.dtype == np.float32
        else:
            assert ours.bias is None
    ours = cls(2, 2, 3, rng=0)
    assert ours.weight.shape == (2, 2) + (3,) * rank  # an int kernel_size for every dim


def _bound(layer) -> float:
    w = layer.weight.data
    return 1.0 / math.sqrt(w.shape[1] * math.prod(w.shape[2:]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: fnn.Conv2d(16, 64, 3, rng=1),
        lambda: fnn.Conv2d(8, 128, (3, 5), groups=4, rng=2),
        lambda: fnn.Conv1d(32, 256, 5, rng=3),
        lambda: fnn.Conv3d(4, 128, 3, rng=4),
        # ConvTranspose: fan_in is weight.shape[1] * prod(k) = out_channels/groups * prod(k)
        lambda: fnn.ConvTranspose2d(4, 64, 3, rng=5),
        lambda: fnn.ConvTranspose2d(64, 6, 3, groups=2, rng=6),
        lambda: fnn.ConvTranspose1d(256, 3, 4, rng=7),
    ],
    ids=["conv2d", "conv2d-groups", "conv1d", "conv3d", "convT2d", "convT2d-groups", "convT1d"],
)
def test_default_init_is_pytorch_uniform(make):
    layer = make()
    bound = _bound(layer)
    w = layer.weight.data.astype(np.float64).ravel()
    assert w.size >= 500
    assert np.all(np.abs(w) <= bound)
    # U(-b, b): the extremes reach close to b, mean 0, standard deviation b / sqrt(3)
    assert np.abs(w).max() >= 0.97 * bound
    assert abs(w.mean()) <= 4 * bound / math.sqrt(3 * w.size)
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) <= 0.1
    assert abs(np.mean(w > 0) - 0.5) <= 4 * 0.5 / math.sqrt(w.size)
    b = layer.bias.data.astype(np.float64)
    assert np.all(np.abs(b) <= bound)  # the bias uses the same bound as the weight
    assert len(np.unique(b)) == b.size
    if b.size >= 32:
        assert np.abs(b).max() >= 0.5 * bound  # fails with probability 0.5**b.size


def test_same_seed_same_weights_and_different_seed_different_weights():
    a = fnn.Conv2d(3, 8, 3, rng=42)
    b = fnn.Conv2d(3, 8, 3, rng=42)
    c = fnn.Conv2d(3, 8, 3, rng=43)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    g1 = fnn.ConvTranspose3d(2, 3, 2, rng=np.random.default_rng(7))
    g2 = fnn.ConvTranspose3d(2, 3, 2, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(g1.weight.data, g2.weight.data)
    np.testing.assert_array_equal(g1.bias.data, g2.bias.data)
    # a shared generator advances: two layers drawn from it differ
    gen = np.random.default_rng(0)
    d1, d2 = fnn.Conv1d(2, 2, 3, rng=gen), fnn.Conv1d(2, 2, 3, rng=gen)
    assert not np.array_equal(d1.weight.data, d2.weight.data)
    # the global generator (rng=None) follows manual_seed
    fnn.manual_seed(5)
    e1 = fnn.Conv2d(3, 4, 3)
    fnn.manual_seed(5)
    e2 = fnn.Conv2d(3, 4, 3)
    np.testing.assert_array_equal(e1.weight.data, e2.weight.data)
    # float64 layers hold the same values as float32 ones from the same seed
    f64 = fnn.Conv2d(3, 8, 3, rng=42, dtype=np.float64)
    assert f64.weight.data.dtype == np.float64
    np.testing.assert_allclose(f64.weight.data, a.weight.data, rtol=1e-7)


# ----------------------------------------------------------------------------------------
# Gradient accumulation and bias=False
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
def test_backward_accumulates_parameter_gradients(transpose):
    cls = fnn.ConvTranspose2d if transpose else fnn.Conv2d
    layer = cls(3, 4, 3, stride=2, padding=1, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((2, 2, 3, 6, 5))
    y1 = layer(x1)
    g1, g2 = rng.standard_normal((2,) + y1.shape)
    assert layer.weight.grad is None
    gx1 = layer.backward(g1)
    w1, b1 = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x1)
    gx1_again = layer.backward(g1)
    np.testing.assert_allclose(gx1_again, gx1, rtol=0, atol=1e-13)  # not accumulated
    np.testing.assert_allclose(layer.weight.grad, 2 * w1, rtol=1e-13)
    np.testing.assert_allclose(layer.bias.grad, 2 * b1, rtol=1e-13)

    layer.zero_grad()
    layer(x2)
    layer.backward(g2)
    w2, b2 = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.zero_grad()
    layer(x1)
    layer.backward(g1)
    layer(x2)
    layer.backward(g2)
    np.testing.assert_allclose(layer.weight.grad, w1 + w2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, b1 + b2, rtol=1e-12, atol=1e-12)
    # backward uses the input of the latest forward
    layer.zero_grad()
    layer(x1)
    layer(x2)
    layer.backward(g2)
    np.testing.assert_allclose(layer.weight.grad, w2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose", [False, True])
def test_bias_false(transpose):
    cls = fnn.ConvTranspose1d if transpose else fnn.Conv1d
    tcls = torch.nn.ConvTranspose1d if transpose else torch.nn.Conv1d
    ours = cls(4, 2, 3, bias=False, dtype=np.float64, rng=0)
    assert ours.bias is None
    assert [name for name, _ in ours.named_parameters()] == ["weight"]
    theirs = tcls(4, 2, 3, bias=False, dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((3, 4, 10))
    _compare_with_torch(ours, theirs, x, seed=0)


def test_float32_layer_computes_in_float32():
    layer = fnn.Conv2d(3, 4, 3, padding=1, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    gx = layer.backward(np.ones_like(y))
    assert gx.dtype == np.float32
    assert layer.weight.grad.dtype == np.float32
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    _copy_into_torch(layer, theirs)
    ref = theirs(torch.from_numpy(x.astype(np.float64))).detach().numpy()
    assert rel_err(y, ref) <= 1e-5


def test_backward_works_in_eval_mode_and_needs_a_forward():
    layer = fnn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=np.float64)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((1, 3, 4, 4)))
    layer.eval()
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and layer.weight.grad is not None
