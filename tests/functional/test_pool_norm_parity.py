"""Pooling and normalisation against PyTorch, case by case: zero-length dimensions,
argument parsing, eps, output sizes, and the layers' signatures.

Each test enumerates inputs systematically and asks torch first: where torch accepts an
input we must give its shape and values (and a gradient of the input's shape), where it
rejects one we must raise a ValueError or TypeError naming the argument.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from foldconv import functional as F
from foldconv import nn
from tests.gradcheck import rel_err

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = 1e-10


def _torch_result(fn):
    """(output, None) or (None, exception) of a torch call."""
    try:
        return fn(), None
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as e:
        return None, e


def _first(a):
    return a[0] if isinstance(a, tuple) else a


# -- zero-length dimensions, functional ---------------------------------------------------------
def _max_ours(nd):
    def run(x):
        y, idx = F.max_pool(x, 1, return_indices="argmax", dims=nd)
        return y, lambda g: F.max_pool_backward(g, idx, x.shape, 1, dims=nd)

    return run


def _avg_ours(nd):
    fwd = getattr(F, f"avg_pool{nd}d")
    bwd = getattr(F, f"avg_pool{nd}d_backward")
    return lambda x: (fwd(x, 1), lambda g: bwd(g, x.shape, 1))


def _adaptive_avg_ours(nd):
    fwd = getattr(F, f"adaptive_avg_pool{nd}d")
    bwd = getattr(F, f"adaptive_avg_pool{nd}d_backward")
    return lambda x: (fwd(x, 2), lambda g: bwd(g, x.shape, 2))


def _adaptive_max_ours(nd):
    fwd = getattr(F, f"adaptive_max_pool{nd}d")
    bwd = getattr(F, f"adaptive_max_pool{nd}d_backward")

    def run(x):
        y, idx = fwd(x, 2, True)
        return y, lambda g: bwd(g, idx, x.shape)

    return run


def _lrn_ours(x):
    return F.local_response_norm(x, 2), lambda g: F.local_response_norm_backward(g, x, 2)


def _bn_ours(training):
    def run(x):
        c = x.shape[1]
        rm, rv = np.zeros(c), np.ones(c)
        w, b = np.linspace(0.5, 1.5, c), np.linspace(-1, 1, c)
        if c == 0:  # see _bn_torch
            w = b = None
        y, mean, invstd = F.batch_norm_forward(x, rm, rv, w, b, training)
        return y, lambda g: F.batch_norm_backward(g, x, mean, invstd, w, training)[0]

    return run


def _bn_torch(training):
    def run(x):
        c = x.shape[1]
        w = torch.linspace(0.5, 1.5, c, dtype=torch.float64)
        b = torch.linspace(-1, 1, c, dtype=torch.float64)
        rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
        if c == 0:  # torch fails on empty weights with an internal IndexError (select())
            w = b = None
        return TF.batch_norm(x, rm, rv, w, b, training)

    return run


def _gn_ours(x):
    y, mean, invstd = F.group_norm_forward(x, 1)
    return y, lambda g: F.group_norm_backward(g, x, mean, invstd, 1)[0]


POOL_OPS = []
for _nd in (1, 2, 3):
    POOL_OPS += [
        (
            f"max_pool{_nd}d",
            _nd,
            _max_ours(_nd),
            lambda x, n=_nd: getattr(TF, f"max_pool{n}d")(x, 1),
        ),
        (
            f"avg_pool{_nd}d",
            _nd,
            _avg_ours(_nd),
            lambda x, n=_nd: getattr(TF, f"avg_pool{n}d")(x, 1),
        ),
        (
            f"adaptive_avg_pool{_nd}d",
            _nd,
            _adaptive_avg_ours(_nd),
            lambda x, n=_nd: getattr(TF, f"adaptive_avg_pool{n}d")(x, 2),
        ),
        (
            f"adaptive_max_pool{_nd}d",
            _nd,
            _adaptive_max_ours(_nd),
            lambda x, n=_nd: getattr(TF, f"adaptive_max_pool{n}d")(x, 2),
        ),
    ]
POOL_CASES = [
    (name, ours, theirs, tuple(0 if i == pos else 3 for i in range(rank)))
    for name, nd, ours, theirs in POOL_OPS
    for rank in (nd + 1, nd + 2)
    for pos in range(rank)
]
NORM_CASES = [
    (name, ours, theirs, tuple(0 if i == pos else 3 for i in range(rank)))
    for name, ours, theirs, ranks in [
        ("local_response_norm", _lrn_ours, lambda x: TF.local_response_norm(x, 2), (3, 4, 5)),
        ("batch_norm train", _bn_ours(True), _bn_torch(True), (2, 3, 4, 5)),
        ("batch_norm eval", _bn_ours(False), _bn_torch(False), (2, 3, 4, 5)),
        ("group_norm", _gn_ours, lambda x: TF.group_norm(x, 1), (2, 3, 4, 5)),
    ]
    for rank in ranks
    for pos in range(rank)
]


@pytest.mark.parametrize(
    "name, ours, theirs, shape",
    POOL_CASES + NORM_CASES,
    ids=[f"{c[0]}-{c[3]}" for c in POOL_CASES + NORM_CASES],
)
def test_zero_length_dimension_follows_torch(name, ours, theirs, shape):
    """A 0 in each position of each op's input: torch's result, or an error naming x."""
    x = np.zeros(shape)
    xt = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    yt, err = _torch_result(lambda: _first(theirs(xt)))
    if err is not None:
        with pytest.raises(ValueError, match=r"^x: expected"):
            ours(x)
        return
    y, backward = ours(x)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    gx = backward(np.ones(y.shape))
    assert gx.shape == shape
    # torch's adaptive average pools of rank 1 and 2 accept 0 channels forward but refuse
    # the backward; ours gives the empty gradient (the README lists the difference)
    _, berr = _torch_result(lambda: yt.sum().backward())
    if berr is None and xt.grad is not None:
        assert rel_err(gx, xt.grad.numpy()) <= TOL


def test_max_pool_empty_cases_from_the_issue():
    """(0, 10) is an unbatched 1-d input with 0 channels; (0, 1, 2, 10) for 3-d likewise."""
    with pytest.raises(ValueError, match=r"^x: expected non-zero channel"):
        F.max_pool(np.zeros((0, 10)), 2, dims=1)
    with pytest.raises(ValueError, match=r"^x: expected non-zero channel"):
        F.max_pool(np.zeros((0, 1, 2, 10)), 1, dims=3)
    with pytest.raises(ValueError, match=r"^input_shape: expected non-zero channel"):
        F.max_pool_backward(np.zeros((0, 5)), np.zeros((0, 5), np.uint8), (0, 10), 2, dims=1)
    y, idx = F.max_pool(np.zeros((0, 3, 10)), 2, return_indices=True, dims=1)
    assert y.shape == idx.shape == (0, 3, 5) and idx.dtype == np.int64


# -- zero-length dimensions, layers, training and eval --------------------------------------------
LAYERS = [
    ("MaxPool1d", (2,), (0, 3, 4)),
    ("MaxPool2d", (2, 2, 0, 1, True), (0, 3, 4, 4)),
    ("MaxPool3d", (2,), (0, 3, 4, 4, 4)),
    ("AvgPool1d", (2,), (0, 3, 4)),
    ("AvgPool2d", (2,), (0, 3, 4, 4)),
    ("AvgPool3d", (2, 1, 1), (0, 3, 4, 4, 4)),
    ("AdaptiveAvgPool1d", (3,), (0, 3, 4)),
    ("AdaptiveAvgPool2d", ((2, None),), (0, 3, 4, 4)),
    ("AdaptiveAvgPool3d", (2,), (0, 3, 4, 4, 4)),
    ("AdaptiveMaxPool1d", (3, True), (0, 3, 4)),
    ("AdaptiveMaxPool2d", (2,), (0, 3, 4, 4)),
    ("AdaptiveMaxPool3d", (2,), (0, 3, 4, 4, 4)),
    ("LocalResponseNorm", (2,), (0, 3, 4)),
    ("BatchNorm1d", (3,), (0, 3)),
    ("BatchNorm1d", (3,), (2, 3, 0)),
    ("BatchNorm2d", (3,), (0, 3, 4, 4)),
    ("BatchNorm3d", (3, 1e-5, None), (0, 3, 2, 2, 2)),
    ("GroupNorm", (3, 3), (0, 3, 4)),
    ("GroupNorm", (1, 3), (2, 3, 0, 2)),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls, args, shape", LAYERS, ids=[f"{c}-{s}" for c, _, s in LAYERS])
def test_layers_on_empty_input_match_torch(cls, args, shape, mode):
    ours = getattr(nn, cls)(*args)
    theirs = getattr(torch.nn, cls)(*args).double()
    ours.train(mode == "train")
    theirs.train(mode == "train")
    ours.to(dtype=np.float64)
    x = np.zeros(shape)
    xt = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    yt = theirs(xt)
    y = ours(x)
    if isinstance(yt, tuple):  # return_indices
        assert isinstance(y, tuple) and y[1].shape == tuple(yt[1].shape)
        y, yt = y[0], yt[0]
    assert y.shape == tuple(yt.shape) and y.dtype == np.float64
    yt.sum().backward()
    gx = ours.backward(np.ones(y.shape))
    assert gx.shape == shape
    np.testing.assert_array_equal(gx, xt.grad.numpy())
    for (name, p), (tname, tp) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        assert name == tname
        ref = tp.grad.numpy()
        # torch's group norm gives a NaN weight gradient for empty groups (0 * 1/sqrt(nan));
        # ours is the empty sum, 0 (the README lists the difference)
        if cls == "GroupNorm" and shape[0] > 0 and name == "weight":
            assert np.isnan(ref).all()
            ref = np.zeros_like(ref)
        np.testing.assert_array_equal(p.grad, ref)  # zeros
    for name, b in ours.state_dict().items():  # running statistics, num_batches_tracked
        np.testing.assert_array_equal(b, theirs.state_dict()[name].numpy())


# -- argument parsing ---------------------------------------------------------------------------
def _parse_cases():
    cases = []
    for nd in (1, 2, 3):
        for kind in ("max", "avg"):
            for k in [(2,), (), (2,) * (nd + 1), (2, 3)[:nd], [3] * nd]:
                cases.append((kind, nd, {"kernel_size": k}))
            for s in [(), (1,), (1,) * (nd + 1), None, [1] * nd]:
                cases.append((kind, nd, {"kernel_size": 2, "stride": s}))
            for p in [(), (1,), (1,) * (nd + 1), (1, 0, 1)[:nd]]:
                cases.append((kind, nd, {"kernel_size": 2, "stride": 2, "padding": p}))
            if kind == "max":
                for d in [(), (2,), (1,) * (nd + 1), (2, 1, 2)[:nd]]:
                    cases.append((kind, nd, {"kernel_size": 2, "dilation": d}))
    return cases


def _ours_pool(kind, nd, layer):
    if layer:
        cls = getattr(nn, f"{'Max' if kind == 'max' else 'Avg'}Pool{nd}d")
        return lambda x, kw: cls(**kw)(x)
    fn = getattr(F, f"{kind}_pool{nd}d")
    return lambda x, kw: fn(x, **kw)


@pytest.mark.parametrize("layer", [False, True], ids=["functional", "layer"])
@pytest.mark.parametrize("kind, nd, kwargs", _parse_cases())
def test_pool_argument_parsing_follows_torch(kind, nd, kwargs, layer):
    """1-tuples stand for every dimension, stride () is kernel_size, other lengths fail."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2) + (7, 8, 6)[:nd])
    tfn = getattr(TF, f"{kind}_pool{nd}d")
    tkw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    yt, err = _torch_result(lambda: tfn(torch.tensor(x), **tkw))
    ours = _ours_pool(kind, nd, layer)
    if err is not None:
        bad = next(
            name
            for name in ("kernel_size", "stride", "padding", "dilation")
            if name in kwargs and not isinstance(kwargs[name], int) and kwargs[name] is not None
        )
        with pytest.raises(ValueError, match=rf"^{bad}:"):
            ours(x, kwargs)
        return
    y = ours(x, kwargs)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.numpy()) <= TOL


def test_avg_pool2d_one_tuple_padding_from_the_issue():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 6))
    ref = TF.avg_pool2d(torch.tensor(x), 3, (), (1,)).numpy()
    assert ref.shape == (1, 2, 2, 2)
    got = F.avg_pool2d(x, 3, stride=(), padding=(1,))
    assert rel_err(got, ref) <= TOL
    gx = F.avg_pool2d_backward(np.ones(got.shape), x.shape, 3, (), (1,))
    assert gx.shape == x.shape


def _adaptive_size_cases():
    return [
        (nd, size)
        for nd in (1, 2, 3)
        for size in [3, None, (3,), (None,), (3,) * nd, (None,) * nd, (3,) * (nd + 1), 0]
        + [(0,) * nd, -1, (), 2.0, [3] * nd, (2, None, 4)[:nd], True]
    ]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("nd, size", _adaptive_size_cases())
def test_adaptive_output_size_follows_torch(kind, nd, size):
    x = np.random.default_rng(2).standard_normal((2, 3) + (5,) * nd)
    tfn = getattr(TF, f"adaptive_{kind}_pool{nd}d")
    yt, err = _torch_result(lambda: _first(tfn(torch.tensor(x), size)))
    if isinstance(size, bool):
        err = err or TypeError("a bool is not a size")  # torch reads True as 1; we refuse
    fn = getattr(F, f"adaptive_{kind}_pool{nd}d")
    if err is not None:
        with pytest.raises((ValueError, TypeError), match=r"^output_size:"):
            fn(x, size)
        return
    y = fn(x, size)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.numpy()) <= TOL


# -- batch norm's eps ---------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, -1e-3, 1e-5])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_batch_norm_eps_follows_torch(eps, training, track):
    """eps must be > 0 whenever batch statistics are used (training, or no running
    statistics), >= 0 otherwise; torch checks in forward."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2))
    theirs = torch.nn.BatchNorm1d(3, eps=eps, track_running_stats=track).double()
    theirs.train(training)
    yt, err = _torch_result(lambda: theirs(torch.tensor(x)))
    if eps < 0:  # can never work: refused where the layer is built
        with pytest.raises(ValueError, match=r"^eps:"):
            nn.BatchNorm1d(3, eps=eps, track_running_stats=track)
        assert err is not None
        return
    ours = nn.BatchNorm1d(3, eps=eps, track_running_stats=track, dtype=np.float64)
    ours.train(training)
    if err is not None:
        with pytest.raises(ValueError, match=r"^eps: expected a positive float"):
            ours(x)
        return
    assert rel_err(ours(x), yt.detach().numpy()) <= TOL


def test_functional_batch_norm_eps():
    x = np.random.default_rng(4).standard_normal((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match=r"^eps: expected a positive float"):
        F.batch_norm(x, rm, rv, training=True, eps=0.0)
    with pytest.raises(ValueError, match=r"^eps: expected a non-negative float"):
        F.batch_norm(x, rm, rv, training=False, eps=-1.0)
    ref = TF.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv), eps=0.0)
    assert rel_err(F.batch_norm(x, rm, rv, eps=0.0), ref.numpy()) <= TOL


def test_batch_norm_with_zero_channels_and_empty_weights():
    """torch fails here with an internal IndexError; ours gives the empty results."""
    x = np.zeros((3, 0, 2))
    y, mean, invstd = F.batch_norm_forward(x, None, None, np.ones(0), np.zeros(0), True)
    assert y.shape == x.shape
    dx, dw, db = F.batch_norm_backward(np.ones(x.shape), x, mean, invstd, np.ones(0))
    assert dx.shape == x.shape and dw.shape == db.shape == (0,)


def test_batch_norm_single_value_per_channel_follows_torch():
    """torch refuses N * prod(spatial) == 1 in training, for group norm N * C / G * prod(S)."""
    for shape in [(1, 3), (1, 3, 1), (1, 0), (2, 0), (1, 3, 2), (0, 3, 1)]:
        _, err = _torch_result(
            lambda s=shape: TF.batch_norm(torch.zeros(s), None, None, training=True)
        )
        if err is None:
            F.batch_norm(np.zeros(shape), training=True)
        else:
            with pytest.raises(ValueError, match=r"^x: expected more than 1 value"):
                F.batch_norm(np.zeros(shape), training=True)
    for shape, g in [((1, 2), 2), ((1, 4), 2), ((1, 2, 1), 2), ((1, 2, 1), 1), ((0, 2), 2)]:
        _, err = _torch_result(lambda s=shape, g=g: TF.group_norm(torch.zeros(s), g))
        if err is None:
            F.group_norm(np.zeros(shape), g)
        else:
            with pytest.raises(ValueError, match=r"^x: expected more than 1 value"):
                F.group_norm(np.zeros(shape), g)


# -- signatures, device and dtype ---------------------------------------------------------------
SIGNATURE_LAYERS = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "LocalResponseNorm",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
]


@pytest.mark.parametrize("cls", SIGNATURE_LAYERS)
def test_layer_signature_is_torchs(cls):
    """Same parameter names, order, kinds and defaults; foldconv extras only after them."""

    def params(c):
        return [
            (p.name, p.kind, p.default)
            for p in inspect.signature(c.__init__).parameters.values()
            if p.name != "self"
        ]

    theirs = params(getattr(torch.nn, cls))
    ours = params(getattr(nn, cls))
    assert ours[: len(theirs)] == theirs
    assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in ours[len(theirs) :])


@pytest.mark.parametrize("cls, args", [("BatchNorm2d", (3,)), ("GroupNorm", (1, 3))])
def test_norm_layers_device_and_dtype(cls, args):
    layer = getattr(nn, cls)(*args)
    assert all(a.dtype == np.float32 for a in layer.state_dict().values() if a.dtype.kind == "f")
    for dtype in (np.float64, "float64", np.dtype("float16")):
        layer = getattr(nn, cls)(*args, dtype=dtype, device="cpu")
        assert layer.weight.dtype == np.dtype(dtype) and type(layer.weight.data) is np.ndarray
    with pytest.raises(TypeError, match=r"^dtype:"):
        getattr(nn, cls)(*args, dtype=np.int32)
    with pytest.raises(ValueError, match=r"^device:"):
        getattr(nn, cls)(*args, device="tpu")
    with pytest.raises(TypeError, match=r"^device:"):
        getattr(nn, cls)(*args, device=0)
    extra = (1e-5, 0.1, True, True) if cls == "BatchNorm2d" else (1e-5, True)
    layer = getattr(nn, cls)(*args, *extra, None, np.float64)  # device, dtype positional
    assert layer.weight.dtype == np.float64
    try:
        import cupy  # noqa: F401, PLC0415
    except Exception:
        with pytest.raises(RuntimeError, match=r"^device: 'cuda' needs CuPy"):
            getattr(nn, cls)(*args, device="cuda")


@pytest.mark.parametrize("cls, args", [("BatchNorm1d", (3,)), ("GroupNorm", (3, 3))])
def test_norm_layers_without_bias_match_torch(cls, args):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5))
    theirs = getattr(torch.nn, cls)(*args, bias=False).double()
    ours = getattr(nn, cls)(*args, dtype=np.float64, bias=False)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(g))
    assert rel_err(ours(x), yt.detach().numpy()) <= TOL
    assert rel_err(ours.backward(g), xt.grad.numpy()) <= TOL
    assert rel_err(ours.weight.grad, theirs.weight.grad.numpy()) <= TOL


@pytest.mark.parametrize("compiled_on", [True, False])
@pytest.mark.parametrize(
    "kernel, stride, shape",
    [(2, 2, (2, 3, 8, 6)), (3, 2, (2, 3, 9, 9)), ((2, 3), (2, 3), (1, 2, 6, 9))],
    ids=["disjoint 2x2", "overlapping 3x3/2", "disjoint 2x3"],
)
def test_max_pool_backward_sends_non_finite_gradients_to_the_winner_only(
    compiled_on, kernel, stride, shape
):
    # PyTorch scatter-adds dy into zeros: a NaN or inf dy lands on its window's winning
    # input and nowhere else, the other inputs get +0.0 (not dy * 0), and a -0.0 dy
    # arrives as 0.0 + -0.0 = +0.0.
    torch = pytest.importorskip("torch")
    import foldconv

    if compiled_on:
        pytest.importorskip("numba")
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    flat = dy.reshape(-1)
    flat[::5] = np.nan
    flat[1::7] = np.inf
    flat[2::11] = -np.inf
    flat[3::13] = -0.0
    yt.backward(torch.tensor(dy))
    was = foldconv.set_compiled(compiled_on)
    try:
        layer = nn.MaxPool2d(kernel, stride)
        layer(x)
        dx = layer.backward(dy)
    finally:
        foldconv.set_compiled(was)
    ref = xt.grad.numpy()
    assert np.array_equal(np.isnan(dx), np.isnan(ref))
    finite = ~np.isnan(ref)
    assert np.array_equal(dx[finite], ref[finite])
    assert np.array_equal(np.signbit(dx[finite]), np.signbit(ref[finite]))  # -0.0 too
