"""PyTorch parity of the convolution, linear, activation, dropout and loss layers and the
optimizers: signatures (names, order, defaults), empty batches through every layer and an
optimizer step after one, ConvTranspose's output_size, and device= / dtype=."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from foldconv import nn, optim
from tests.gradcheck import rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------
LAYER_NAMES = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "Flatten",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "Softmax",
    "LogSoftmax",
    "Dropout",
    "CrossEntropyLoss",
    "NLLLoss",
    "MSELoss",
]
OPTIMIZER_NAMES = ["SGD", "Adam", "AdamW"]


def _positional(fn):
    """(name, default) of the parameters that may be passed by position, self dropped."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [(p.name, p.default) for p in params if p.kind in kinds]


def _keyword_only(fn):
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("name", LAYER_NAMES + OPTIMIZER_NAMES)
def test_signature_matches_torch(torch, name):
    """Every parameter PyTorch takes by position, in its order with its default; ours may
    add keyword-only extras (e.g. ``rng``) after them."""
    ours = getattr(optim if name in OPTIMIZER_NAMES else nn, name).__init__
    theirs = getattr(torch.optim if name in OPTIMIZER_NAMES else torch.nn, name).__init__
    assert _positional(ours) == _positional(theirs)
    # Keyword-only parameters both have agree in default (PyTorch's foreach, fused,
    # capturable, differentiable select its kernels and have no meaning here).
    ko_ours, ko_theirs = _keyword_only(ours), _keyword_only(theirs)
    for key in ko_ours.keys() & ko_theirs.keys():
        assert ko_ours[key] == ko_theirs[key], key


def test_conv_transpose_forward_signature_matches_torch(torch):
    for nd in (1, 2, 3):
        name = f"ConvTranspose{nd}d"
        ours = inspect.signature(getattr(nn, name).forward)
        theirs = inspect.signature(getattr(torch.nn, name).forward)
        # The input is ``x`` in every foldconv forward; output_size is second, as in torch.
        assert list(ours.parameters)[2:] == list(theirs.parameters)[2:] == ["output_size"]
        assert ours.parameters["output_size"].default is None


# ---------------------------------------------------------------------------------------
# Empty batches
# ---------------------------------------------------------------------------------------
def _activation_pairs(torch):
    return [
        (nn.ReLU(), torch.nn.ReLU()),
        (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
        (nn.Tanh(), torch.nn.Tanh()),
        (nn.Sigmoid(), torch.nn.Sigmoid()),
        (nn.GELU(), torch.nn.GELU()),
        (nn.GELU("tanh"), torch.nn.GELU("tanh")),
        (nn.Softmax(1), torch.nn.Softmax(1)),
        (nn.Softmax(0), torch.nn.Softmax(0)),
        (nn.LogSoftmax(1), torch.nn.LogSoftmax(1)),
        (nn.LogSoftmax(0), torch.nn.LogSoftmax(0)),
        (nn.Dropout(0.3, rng=0), torch.nn.Dropout(0.3)),
        (nn.Flatten(), torch.nn.Flatten()),
        (nn.Flatten(0, -1), torch.nn.Flatten(0, -1)),
    ]


@pytest.mark.parametrize("shape", [(0, 4), (0, 3, 2, 2), (3, 0)])
def test_activations_flatten_dropout_on_empty_input(torch, shape):
    x = np.zeros(shape)
    for ours, theirs in _activation_pairs(torch):
        ref = theirs(torch.tensor(x))
        y = ours(x)
        assert y.shape == tuple(ref.shape) and y.dtype == x.dtype, repr(ours)
        assert ours.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("in_features,out_features,batch", [(5, 3, 0), (0, 3, 2), (5, 0, 2)])
def test_linear_on_empty_batches_and_features(torch, in_features, out_features, batch):
    ours = nn.Linear(in_features, out_features, dtype=np.float64, rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Initializing zero-element tensors is a no-op"
        theirs = torch.nn.Linear(in_features, out_features).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.data))
        theirs.bias.copy_(torch.tensor(ours.bias.data))
    x = np.random.default_rng(0).standard_normal((batch, in_features))
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt)
    go = np.random.default_rng(1).standard_normal(tuple(ref.shape))
    ref.backward(torch.tensor(go))
    y = ours(x)
    assert rel_err(y, ref.detach().numpy()) <= TOL
    assert rel_err(ours.backward(go), xt.grad.numpy()) <= TOL
    assert rel_err(ours.weight.grad, theirs.weight.grad.numpy()) <= TOL
    assert rel_err(ours.bias.grad, theirs.bias.grad.numpy()) <= TOL


def _nets(torch):
    ours = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
        nn.ReLU(),
        nn.Dropout(0.5, rng=1),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5, dtype=np.float64, rng=2),
        nn.GELU(),
        nn.Linear(5, 4, dtype=np.float64, rng=3),
    )
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 4 * 4, 5),
        torch.nn.GELU(),
        torch.nn.Linear(5, 4),
    ).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return ours, theirs


OPTIMIZERS = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("loss_name", ["CrossEntropyLoss", "NLLLoss", "MSELoss"])
@pytest.mark.parametrize("opt_name,kw", OPTIMIZERS)
def test_training_steps_with_an_empty_batch_match_torch(torch, opt_name, kw, loss_name):
    """A full batch, then a batch of 0: the empty one gives a nan 'mean' loss and zero
    gradients, and the optimizer still applies weight decay and momentum, as in PyTorch."""
    ours, theirs = _nets(torch)
    ours.eval()  # dropout off so that both nets compute the same function
    theirs.eval()
    opt = getattr(optim, opt_name)(ours.parameters(), **kw)
    topt = getattr(torch.optim, opt_name)(theirs.parameters(), **kw)
    crit, tcrit = getattr(nn, loss_name)(), getattr(torch.nn, loss_name)()
    rng = np.random.default_rng(4)
    for batch in (3, 0, 0):
        x = rng.standard_normal((batch, 2, 4, 4))
        if loss_name == "MSELoss":
            target = rng.standard_normal((batch, 4))
        else:
            target = rng.integers(0, 4, batch)
        opt.zero_grad()
        topt.zero_grad()
        out = ours(x)
        loss = crit(out, target)
        ours.backward(crit.backward())
        tloss = tcrit(theirs(torch.tensor(x)), torch.tensor(target))
        tloss.backward()
        if batch == 0:
            assert np.isnan(float(loss)) and np.isnan(float(tloss.detach()))
            for p in ours.parameters():
                np.testing.assert_array_equal(p.grad, 0.0)
        else:
            assert rel_err(loss, tloss.detach().numpy()) <= TOL
        opt.step()
        topt.step()
        for (name, p), tp in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            assert rel_err(p.data, tp.detach().numpy()) <= TOL, name


# ---------------------------------------------------------------------------------------
# ConvTranspose output_size
# ---------------------------------------------------------------------------------------
OUTPUT_SIZE_CASES = [
    # (nd, stride, padding, dilation, input spatial, output_size)
    (2, 3, 0, 2, (6, 6), (20, 20)),
    (2, 3, 0, 2, (6, 6), (22, 21)),
    (2, 3, 0, 2, (6, 6), (2, 4, 21, 22)),
    (1, 2, 1, 1, (5,), [10]),
    (1, 2, 1, 1, (5,), (4, 9)),  # unbatched: (C, L) for a 2-d input
    (3, (2, 3, 1), (1, 0, 1), 1, (3, 4, 2), (6, 12, 2)),
    (3, 2, 1, (1, 2, 1), (3, 3, 3), (2, 4, 6, 8, 5)),
]


@pytest.mark.parametrize("nd,stride,padding,dilation,spatial,output_size", OUTPUT_SIZE_CASES)
def test_conv_transpose_output_size_matches_torch(
    torch, nd, stride, padding, dilation, spatial, output_size
):
    name = f"ConvTranspose{nd}d"
    ours = getattr(nn, name)(4, 6, 3, stride, padding, 0, 2, True, dilation, rng=0).to(
        dtype=np.float64
    )
    theirs = getattr(torch.nn, name)(4, 6, 3, stride, padding, 0, 2, True, dilation).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    batch = (2,) if len(output_size) != nd + 1 else ()
    x = np.random.default_rng(5).standard_normal(batch + (4,) + spatial)
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt, output_size=list(output_size))
    go = np.random.default_rng(6).standard_normal(tuple(ref.shape))
    ref.backward(torch.tensor(go))
    y = ours(x, output_size=output_size)
    assert rel_err(y, ref.detach().numpy()) <= TOL
    assert rel_err(ours.backward(go), xt.grad.numpy()) <= TOL
    assert rel_err(ours.weight.grad, theirs.weight.grad.numpy()) <= TOL
    assert rel_err(ours.bias.grad, theirs.bias.grad.numpy()) <= TOL
    # Without output_size the layer's own output_padding applies again.
    assert ours(x).shape == tuple(theirs(torch.tensor(x)).shape)


@pytest.mark.parametrize("output_size", [(19, 19), (15, 15), (23, 20), (20, 23)])
def test_conv_transpose_output_size_out_of_range(torch, output_size):
    ours = nn.ConvTranspose2d(3, 4, 3, stride=3, padding=0, dilation=2, rng=0)
    theirs = torch.nn.ConvTranspose2d(3, 4, 3, stride=3, padding=0, dilation=2)
    x = np.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match="output size"):
        theirs(torch.tensor(x), output_size=output_size)
    with pytest.raises(ValueError, match=r"^output_size: expected sizes from \(20, 20\) to"):
        ours(x, output_size=output_size)


def test_conv_transpose_output_size_length_and_type_errors():
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, rng=0)
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"^output_size: expected 2 or 4 ints"):
        layer(x, output_size=(3, 11, 11))
    with pytest.raises(TypeError, match=r"^output_size: expected"):
        layer(x, output_size=11)


# ---------------------------------------------------------------------------------------
# device= and dtype=
# ---------------------------------------------------------------------------------------
PARAM_LAYERS = [
    (nn.Conv1d, (2, 3, 3)),
    (nn.Conv2d, (2, 3, 3)),
    (nn.Conv3d, (2, 3, 3)),
    (nn.ConvTranspose1d, (2, 3, 3)),
    (nn.ConvTranspose2d, (2, 3, 3)),
    (nn.ConvTranspose3d, (2, 3, 3)),
    (nn.Linear, (4, 3)),
]


@pytest.mark.parametrize("cls,args", PARAM_LAYERS)
def test_device_and_dtype(cls, args):
    assert cls(*args).weight.dtype == np.float32  # dtype=None: PyTorch's default
    for dtype in (np.float16, "float64", np.dtype(np.float32)):
        layer = cls(*args, device="cpu", dtype=dtype, rng=0)
        assert layer.weight.dtype == np.dtype(dtype) and layer.bias.dtype == np.dtype(dtype)
        assert type(layer.weight.data) is np.ndarray
    # Same values whatever the dtype (drawn in float64, then cast).
    a = cls(*args, dtype=np.float64, rng=0).weight.data
    b = cls(*args, dtype=np.float32, rng=0).weight.data
    np.testing.assert_array_equal(a.astype(np.float32), b)
    with pytest.raises(TypeError, match=r"^dtype: expected float16, float32 or float64"):
        cls(*args, dtype=np.int32)
    with pytest.raises(ValueError, match=r"^device: expected 'cpu' or 'cuda'"):
        cls(*args, device="tpu")
    with pytest.raises(TypeError, match=r"^device: expected None, 'cpu' or 'cuda'"):
        cls(*args, device=0)


@pytest.mark.parametrize("cls,args", PARAM_LAYERS)
def test_cuda_without_cupy_is_a_clear_error(cls, args):
    from foldconv.backend import _cupy  # noqa: PLC0415

    if _cupy() is not None:
        layer = cls(*args, device="cuda", rng=0)
        assert type(layer.weight.data).__module__.split(".")[0] == "cupy"
        return
    with pytest.raises(RuntimeError, match=r"^device: 'cuda' needs CuPy"):
        cls(*args, device="cuda")


def test_device_dtype_positions_match_torch():
    conv = nn.Conv2d(2, 3, 3, 1, 0, 1, 1, True, "zeros", "cpu", np.float64)
    convt = nn.ConvTranspose2d(2, 3, 3, 1, 0, 0, 1, True, 1, "zeros", "cpu", np.float64)
    lin = nn.Linear(2, 3, True, "cpu", np.float64)
    assert conv.weight.dtype == convt.weight.dtype == lin.weight.dtype == np.float64


def test_softmax_implicit_dim_follows_torch(torch):
    rng = np.random.default_rng(7)
    for shape in [(5,), (3, 4), (2, 3, 4), (2, 3, 4, 2)]:
        x = rng.standard_normal(shape)
        for ours, theirs in ((nn.Softmax(), torch.nn.Softmax()), (nn.LogSoftmax(), None)):
            theirs = theirs or torch.nn.LogSoftmax()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = theirs(torch.tensor(x))
            with pytest.warns(UserWarning, match="implicit dim"):
                y = ours(x)
            assert rel_err(y, ref.numpy()) <= TOL
            assert ours.backward(np.ones_like(y)).shape == x.shape
