"""Pooling and LRN layers: against torch.nn, finite differences, state, bad construction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foldconv import nn
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _compare(torch, ours, theirs, x, rng):
    """Forward and input gradient of a foldconv layer against a torch.nn layer (float64)."""
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    y = ours(x)
    assert y.shape == tuple(yt.shape)
    assert y.dtype == x.dtype
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = ours.backward(g)
    assert gx.shape == x.shape
    assert rel_err(gx, xt.grad.numpy()) <= TOL


@given(
    dims=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.none() | st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad_frac=st.booleans(),
    ceil_mode=st.booleans(),
    unbatched=st.booleans(),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_maxpool_layers_match_torch(
    torch, dims, kernel, stride, dilation, pad_frac, ceil_mode, unbatched, extra, seed
):
    padding = kernel // 2 if pad_frac else 0
    rng = np.random.default_rng(seed)
    size = dilation * (kernel - 1) + 1 + extra
    shape = ((3,) if unbatched else (2, 3)) + (size,) * dims
    x = rng.standard_normal(shape)
    cls = {1: "MaxPool1d", 2: "MaxPool2d", 3: "MaxPool3d"}[dims]
    args = (kernel, stride, padding, dilation, False, ceil_mode)
    ours = getattr(nn, cls)(*args)  # torch's positional order
    _compare(torch, ours, getattr(torch.nn, cls)(*args), x, rng)


@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.none() | st.integers(1, 3),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    divisor_override=st.none() | st.integers(1, 5),
    unbatched=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_avgpool2d_layer_matches_torch(
    torch, kernel, stride, ceil_mode, count_include_pad, divisor_override, unbatched, seed
):
    rng = np.random.default_rng(seed)
    padding = (kernel[0] // 2, kernel[1] // 2)
    shape = ((3,) if unbatched else (2, 3)) + (7, 6)
    x = rng.standard_normal(shape)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    _compare(torch, nn.AvgPool2d(*args), torch.nn.AvgPool2d(*args), x, rng)


@pytest.mark.parametrize(
    "output_size, shape",
    [
        (6, (2, 4, 13, 13)),
        ((6, 6), (2, 4, 6, 6)),
        ((None, 3), (3, 7, 8)),
        ((5, None), (1, 2, 9, 4)),
    ],
)
def test_adaptive_avgpool2d_layer_matches_torch(torch, output_size, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    ours = nn.AdaptiveAvgPool2d(output_size)
    _compare(torch, ours, torch.nn.AdaptiveAvgPool2d(output_size), x, rng)


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 5e-4, 0.75, 2.0), (3, 0.5, 0.6, 1.0)])
def test_lrn_layer_matches_torch(torch, size, alpha, beta, k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 10, 5, 5)) * 3
    ours = nn.LocalResponseNorm(size, alpha, beta, k)
    _compare(torch, ours, torch.nn.LocalResponseNorm(size, alpha, beta, k), x, rng)


def test_lrn_layer_lets_go_of_its_cache_and_a_second_backward_recomputes_it():
    """The layer drops s and s^(-beta) once its backward has used them (and the last
    call's before a new forward), so that their memory is reused; a second backward
    recomputes them and gives the same gradient."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 4, 3)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    layer = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    layer(x)
    assert layer._cache is not None
    first = layer.backward(g)
    assert layer._cache is None
    np.testing.assert_array_equal(layer.backward(g), first)


def test_alexnet_paper_block_matches_torch(torch):
    """ReLU output -> LRN -> overlapping MaxPool2d(3, 2), as in AlexNet's first block."""
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal((2, 12, 27, 27)), 0) * 10
    ours = nn.Sequential(nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.MaxPool2d(3, 2))
    theirs = torch.nn.Sequential(
        torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), torch.nn.MaxPool2d(3, 2)
    )
    _compare(torch, ours, theirs, x, rng)


def test_layers_finite_differences():
    """A stack of every layer here, checked by float64 central differences (no torch)."""
    rng = np.random.default_rng(3)
    model = nn.Sequential(
        nn.LocalResponseNorm(3, 0.5, 0.75, 1.0),
        nn.MaxPool2d(3, 1, padding=1),
        nn.AvgPool2d(2, 1, padding=1, ceil_mode=True, count_include_pad=False),
        nn.AdaptiveAvgPool2d((3, 2)),
    )
    # distinct, well-separated values keep max pooling's argmax fixed under eps steps
    x = rng.permutation(2 * 4 * 6 * 5).reshape(2, 4, 6, 5) * 0.05 - 2.0
    y = model(x)
    w = rng.standard_normal(y.shape)
    analytic = model.backward(w)

    def f(z):
        return float(np.sum(model(z) * w))

    assert rel_err(analytic, numerical_grad(f, x)) <= 1e-7
    assert directional_check(f, x, analytic, rng) <= 1e-7


@pytest.mark.parametrize("cls", ["MaxPool1d", "MaxPool3d"])
def test_maxpool_1d_3d_finite_differences(cls):
    rng = np.random.default_rng(4)
    shape = (2, 9) if cls == "MaxPool1d" else (1, 2, 5, 4, 5)  # 1-d unbatched
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
    layer = getattr(nn, cls)(3, 2, 1, ceil_mode=True)
    y = layer(x)
    w = rng.standard_normal(y.shape)
    analytic = layer.backward(w)
    numeric = numerical_grad(lambda z: float(np.sum(layer(z) * w)), x)
    assert rel_err(analytic, numeric) <= 1e-7


@pytest.mark.parametrize(
    "layer",
    [
        nn.MaxPool2d(3, 2),
        nn.AvgPool2d(3, 2, 1),
        nn.AdaptiveAvgPool2d(4),
        nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_float32_kept_and_backward_needs_forward(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        type(layer)(*_init_args(layer)).backward(np.zeros((1, 2, 4, 4), np.float32))
    x = np.random.default_rng(5).standard_normal((2, 6, 9, 9)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    gx = layer.backward(np.ones_like(y))
    assert gx.dtype == np.float32 and gx.shape == x.shape
    assert layer.num_parameters() == 0 and layer.state_dict() == {}
    layer.eval()  # same results in eval mode, and backward still works
    np.testing.assert_array_equal(layer(x), y)
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), gx)
    layer.train()


def _init_args(layer):
    if isinstance(layer, nn.MaxPool2d):
        return (layer.kernel_size, layer.stride)
    if isinstance(layer, nn.AvgPool2d):
        return (layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return (layer.output_size,)
    return (layer.size,)


def test_reprs_follow_torch(torch):
    pairs = [
        (nn.MaxPool2d(3, 2), torch.nn.MaxPool2d(3, 2)),
        (nn.MaxPool1d(2), torch.nn.MaxPool1d(2)),
        (nn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
        (nn.AdaptiveAvgPool2d((6, 6)), torch.nn.AdaptiveAvgPool2d((6, 6))),
        (nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(
    "build, exc, name",
    [
        (lambda: nn.MaxPool2d(0), ValueError, "kernel_size"),
        (lambda: nn.MaxPool2d((2, 2, 2)), ValueError, "kernel_size"),
        (lambda: nn.MaxPool1d(2, stride=0), ValueError, "stride"),
        (lambda: nn.MaxPool3d(3, padding=2), ValueError, "padding"),
        (lambda: nn.MaxPool2d(3, dilation=0), ValueError, "dilation"),
        (lambda: nn.MaxPool2d(2.5), TypeError, "kernel_size"),
        (lambda: nn.AvgPool2d(-1), ValueError, "kernel_size"),
        (lambda: nn.AvgPool2d(2, padding=3), ValueError, "padding"),
        (lambda: nn.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
        (lambda: nn.AdaptiveAvgPool2d(None), TypeError, "output_size"),
        (lambda: nn.AdaptiveAvgPool2d((3, -1)), ValueError, "output_size"),
        (lambda: nn.AdaptiveAvgPool2d("6"), TypeError, "output_size"),
        (lambda: nn.LocalResponseNorm(0), ValueError, "size"),
        (lambda: nn.LocalResponseNorm(5, alpha="big"), TypeError, "alpha"),
    ],
)
def test_bad_construction_names_the_argument(build, exc, name):
    with pytest.raises(exc, match=rf"^{name}:"):
        build()


@pytest.mark.parametrize(
    "layer, x, exc",
    [
        (nn.MaxPool2d(2), np.zeros((6, 6)), ValueError),
        (nn.MaxPool2d(2), np.zeros((1, 1, 6, 6), np.int64), TypeError),
        (nn.MaxPool1d(4), np.zeros((1, 1, 3)), ValueError),
        (nn.AvgPool2d(2), np.zeros((1, 1, 1, 6, 6)), ValueError),
        (nn.AdaptiveAvgPool2d(2), np.zeros((6,)), ValueError),
        (nn.LocalResponseNorm(3), np.zeros((4, 4)), ValueError),
    ],
)
def test_bad_input_names_x(layer, x, exc):
    with pytest.raises(exc, match=r"^x:"):
        layer(x)


def test_backward_checks_grad_output_shape():
    layer = nn.MaxPool2d(2)
    layer(np.zeros((1, 2, 6, 6)))
    with pytest.raises(ValueError, match=r"^grad_output:"):
        layer.backward(np.zeros((1, 2, 2, 2)))


# -- torch's positional order, return_indices, the new layers ------------------------------------
def test_positional_trap_from_the_issue(torch):
    """MaxPool1d(2, 2, 0, 1, True): the fifth argument is return_indices, as in torch."""
    layer = nn.MaxPool1d(2, 2, 0, 1, True)
    assert layer.return_indices and not layer.ceil_mode
    x = np.random.default_rng(6).standard_normal((2, 3, 9))
    y, idx = layer(x)
    yt, it = torch.nn.MaxPool1d(2, 2, 0, 1, True)(torch.tensor(x))
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_maxpool_return_indices_matches_torch(torch, dims, mode):
    rng = np.random.default_rng(7)
    shape = (2, 3) + (7, 6, 5)[:dims]
    x = rng.integers(0, 4, shape).astype(np.float64)  # ties: the first maximum wins
    args = (3, 2, 1, 1, True, True)
    cls = f"MaxPool{dims}d"
    ours, theirs = getattr(nn, cls)(*args), getattr(torch.nn, cls)(*args)
    ours.train(mode == "train")
    xt = torch.tensor(x, requires_grad=True)
    yt, it = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    y, idx = ours(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert idx.dtype == np.int64
    assert rel_err(ours.backward(g), xt.grad.numpy()) <= TOL
    unbatched_y, unbatched_idx = ours(x[0])  # unbatched input
    np.testing.assert_array_equal(unbatched_idx, it.numpy()[0])


def test_new_pool_layers_reprs_follow_torch(torch):
    builds = [
        ("AvgPool1d", (2,)),
        ("AvgPool1d", ((3,), (), 1, True, False)),
        ("AvgPool3d", (2,)),
        ("AvgPool3d", ((2,), (), (1,), True, False, 3)),
        ("MaxPool2d", (3, 2, 1, 1, True, True)),
        ("MaxPool3d", ((2,), ())),
        ("AdaptiveAvgPool1d", (3,)),
        ("AdaptiveAvgPool3d", ((2, None, 3),)),
        ("AdaptiveMaxPool1d", (2,)),
        ("AdaptiveMaxPool2d", ((3, None), True)),
        ("AdaptiveMaxPool3d", (1,)),
    ]
    for cls, args in builds:
        ours, theirs = getattr(nn, cls)(*args), getattr(torch.nn, cls)(*args)
        assert repr(ours) == repr(theirs)
        assert ours.num_parameters() == 0 and ours.state_dict() == {}


def test_new_pool_layers_finite_differences():
    """A stack of the new layers, checked by float64 central differences (no torch)."""
    rng = np.random.default_rng(8)
    # the max pool first, on distinct values (averages of them may tie)
    model = nn.Sequential(
        nn.AdaptiveMaxPool3d((3, None, 4)),
        nn.AvgPool3d((2, 1, 2), 1, (1, 0, 1), True, False),
        nn.AdaptiveAvgPool3d((2, 3, 3)),
    )
    x = rng.permutation(2 * 2 * 4 * 3 * 5).reshape(2, 2, 4, 3, 5) * 0.05 - 2.0
    y = model(x)
    w = rng.standard_normal(y.shape)
    analytic = model.backward(w)
    assert rel_err(analytic, numerical_grad(lambda z: float(np.sum(model(z) * w)), x)) <= 1e-7
    model1d = nn.Sequential(nn.AdaptiveMaxPool1d(7), nn.AvgPool1d(3, 1, 1), nn.AdaptiveAvgPool1d(3))
    x1 = rng.permutation(3 * 11).reshape(3, 11) * 0.1  # unbatched
    y1 = model1d(x1)
    w1 = rng.standard_normal(y1.shape)
    analytic1 = model1d.backward(w1)
    numeric1 = numerical_grad(lambda z: float(np.sum(model1d(z) * w1)), x1)
    assert rel_err(analytic1, numeric1) <= 1e-7
