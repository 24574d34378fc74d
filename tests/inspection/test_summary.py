"""foldconv.summary: parameter counts against PyTorch's, a hand count of LeNet-5's
multiply-adds, shapes and memory against a real forward at the batch asked for, the
algorithms against what ``auto`` really runs, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv import nn
from foldconv.cli import main
from foldconv.functional import dispatch
from foldconv.inspect import ModelSummary, conv_layer_algorithms, summary
from foldconv.inspect._trace import held_arrays, memory_root
from foldconv.models import alexnet_paper, available_models, get_model, lenet5, resnet18, vgg11


# -- PyTorch twins (for the parameter counts) -----------------------------------------------
def _torch_twin(kind: str):
    """The models' PyTorch twins, as tests/models writes them out (importing that module
    needs torch, hence the skip first)."""
    pytest.importorskip("torch")
    from tests.models import test_models as twins

    build = {
        "lenet5": lambda: twins.torch_lenet5(),
        "alexnet_paper": lambda: twins.torch_alexnet_paper(1000),
        "vgg11": lambda: twins.torch_vgg("A", 1000),
    }
    return build[kind]()


@pytest.mark.parametrize(
    "kind, build, shape, total",
    [
        ("lenet5", lambda: lenet5(10, rng=0), (1, 28, 28), 61_706),
        ("alexnet_paper", lambda: alexnet_paper(1000, rng=0), (3, 227, 227), 60_965_224),
        pytest.param(
            "vgg11",
            lambda: vgg11(1000, rng=0),
            (3, 32, 32),
            132_863_336,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_parameter_counts_match_pytorch(kind, build, shape, total):
    twin = _torch_twin(kind)
    s = summary(build(), shape)
    ours = {layer.name: layer.params for layer in s.layers}
    theirs = {
        name: sum(p.numel() for p in m.parameters(recurse=False))
        for name, m in twin.named_modules()
    }
    # Same modules under the same names, each with PyTorch's count.
    assert ours == theirs
    assert s.total_params == s.trainable_params == sum(p.numel() for p in twin.parameters())
    assert s.total_params == total
    assert s.non_trainable_params == 0


def test_buffers_are_the_non_trainable_count():
    s = summary(resnet18(10, rng=0), (3, 16, 16))
    assert s.total_params == 11_173_962
    # running_mean, running_var (C each) and num_batches_tracked (1) per batch norm
    bns = [layer for layer in s.layers if layer.type == "BatchNorm2d"]
    assert s.non_trainable_params == sum(2 * (layer.params // 2) + 1 for layer in bns)


def test_lenet5_multiply_adds_by_hand():
    n = 3
    s = summary(lenet5(10, rng=0), (1, 28, 28), n)
    by_name = {layer.name: layer.mult_adds for layer in s.layers}
    # conv1: 6 output channels x 28x28 positions (padding 2 keeps the size) x 1*5*5 taps
    conv1 = 6 * 28 * 28 * (1 * 5 * 5)  # 117,600
    # conv2: 16 channels x 10x10 positions (14 - 5 + 1) x 6*5*5 taps
    conv2 = 16 * 10 * 10 * (6 * 5 * 5)  # 240,000
    fc1 = 400 * 120  # 48,000
    fc2 = 120 * 84  # 10,080
    fc3 = 84 * 10  # 840
    assert conv1 + conv2 + fc1 + fc2 + fc3 == 416_520
    assert by_name["features.0"] == n * conv1
    assert by_name["features.3"] == n * conv2
    assert by_name["classifier.0"] == n * fc1
    assert by_name["classifier.2"] == n * fc2
    assert by_name["classifier.4"] == n * fc3
    for name in ("features.1", "features.2", "features.4", "features.5", "classifier.1"):
        assert by_name[name] == 0  # ReLU and max pooling: no products with weights
    assert s.total_mult_adds == n * 416_520
    assert s.unknown_mult_adds == []


class _Twice(nn.Module):
    """A user's container that calls one child twice and keeps a cache of its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 6, rng=0), nn.Tanh())
        self.scale = nn.Parameter(np.ones(6, dtype=np.float32))
        self._cache = None

    def forward(self, x):
        h = self.body(self.body(x))
        self._cache = h
        return h * self.scale.data

    def backward(self, g):  # pragma: no cover - not needed here
        raise NotImplementedError


def _real_forward(model, x):
    """Shapes and bytes of each module's first call in a real forward (wrapping forward)."""
    seen = {}
    originals = []
    for name, m in model.named_modules():
        original = m.forward

        def wrapper(*args, _name=name, _orig=original):
            out = _orig(*args)
            seen.setdefault(_name, (tuple(out.shape), out.nbytes))
            return out

        object.__setattr__(m, "forward", wrapper)
        originals.append(m)
    try:
        model(x)
    finally:
        for m in originals:
            del m.__dict__["forward"]
    kept = {}
    for _, m in model.named_modules():
        for a in held_arrays(m):
            kept[id(memory_root(a))] = memory_root(a).nbytes
    return seen, sum(kept.values())


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: lenet5(10, rng=0), (1, 28, 28)),
        (lambda: resnet18(10, rng=0), (3, 16, 16)),
        (lambda: get_model("alexnet", rng=0), (3, 67, 67)),
        (
            lambda: nn.Sequential(
                nn.Conv1d(2, 4, 3, padding=1, rng=0),
                nn.Dropout(0.5, rng=1),
                nn.ConvTranspose1d(4, 3, 2, stride=2, rng=0),
                nn.Flatten(),
                nn.Linear(30, 6, rng=0),
                _Twice(),
            ),
            (2, 5),
        ),
    ],
)
def test_shapes_and_memory_match_a_real_forward(build, shape):
    n = 7
    model = build()
    s = summary(model, shape, n)
    real, kept = _real_forward(model, np.zeros((n,) + shape, dtype=np.float32))
    for layer in s.layers:
        assert layer.calls >= 1
        assert layer.output_shape == real[layer.name][0], layer.name
        assert layer.output_bytes == real[layer.name][1], layer.name
    assert s.saved_bytes == kept
    assert s.input_shape == (n,) + shape


def test_user_module_multiply_adds_and_calls():
    model = nn.Sequential(nn.Linear(6, 6, rng=0), _Twice())
    s = summary(model, (6,), 4)
    rows = {layer.name: layer for layer in s.layers}
    assert rows["1.body"].calls == 2 and rows["1.body.0"].calls == 2
    assert rows["1.body.0"].mult_adds == 2 * 4 * 6 * 6  # two calls
    assert rows["1"].mult_adds is None  # own parameter, no rule
    assert s.unknown_mult_adds == ["1"]
    assert s.total_mult_adds == 4 * 36 + 2 * 4 * 36
    assert "lower bound" in str(s)


def test_summary_leaves_the_model_untouched():
    model = resnet18(10, rng=0)
    model.add_module("drop", nn.Dropout(0.5, rng=3))
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    arrays = {k: v for k, v in model.state_dict().items()}
    gen_state = model.drop._rng.bit_generator.state
    summary(model, (3, 16, 16), 5)
    after = model.state_dict()
    for k, v in after.items():
        assert v is arrays[k]
        np.testing.assert_array_equal(v, before[k])
    assert model.drop._rng.bit_generator.state == gen_state
    assert all(p.grad is None for p in model.parameters())
    assert model.conv1._x is None  # no cache from the probe


def test_algorithms_are_what_auto_runs(monkeypatch):
    dispatch.set_benchmark(False)
    layers = [
        (nn.Conv2d(256, 256, 3, padding=1, rng=0), (2, 256, 12, 12)),  # winograd range
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=0), (2, 8, 9, 9)),  # depthwise
        (nn.Conv2d(3, 4, 5, stride=2, rng=0), (2, 3, 11, 11)),
        (nn.ConvTranspose2d(4, 3, 3, stride=2, rng=0), (2, 4, 5, 5)),
    ]
    for layer, shape in layers:
        expected = conv_layer_algorithms(layer, shape)
        ran = []
        real = dispatch.cost_model

        def spy(pass_, g, dtype, _real=real, _ran=ran):
            name = _real(pass_, g, dtype)
            _ran.append((pass_, name))
            return name

        monkeypatch.setattr(dispatch, "cost_model", spy)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        y = layer(x)
        layer.backward(np.ones_like(y))
        monkeypatch.setattr(dispatch, "cost_model", real)
        # what ran, per pass of the convolution behind the layer
        per_pass = dict(ran)
        if type(layer).__name__.startswith("ConvTranspose"):
            per_pass = {
                "forward": per_pass["input_grad"],
                "input_grad": per_pass["forward"],
                "weight_grad": per_pass["weight_grad"],
            }
        assert per_pass == expected, type(layer).__name__
    assert conv_layer_algorithms(*layers[0]) == {
        "forward": "winograd",
        "input_grad": "im2col",
        "weight_grad": "winograd",
    }
    assert set(conv_layer_algorithms(*layers[1]).values()) == {"depthwise"}


def test_algorithms_with_the_autotuner():
    layer = nn.Conv2d(3, 4, 3, rng=0)
    shape = (2, 3, 8, 8)
    previous = dispatch.set_benchmark(True)
    try:
        dispatch.clear_benchmark_cache()
        assert conv_layer_algorithms(layer, shape) == dict.fromkeys(dispatch.PASSES)
        y = layer(np.zeros(shape, dtype=np.float32))
        layer.backward(np.ones_like(y))
        tuned = set(dispatch.tuned_algorithms().values())
        got = conv_layer_algorithms(layer, shape)
        assert None not in got.values() and set(got.values()) <= tuned
    finally:
        dispatch.set_benchmark(previous)
        dispatch.clear_benchmark_cache()


def test_auto_algorithm_errors():
    from foldconv.functional._args import conv_geometry

    g = conv_geometry((1, 3, 8, 8), (4, 3, 3, 3), 1, 0, 1, 1, "zeros")
    with pytest.raises(ValueError, match="pass_"):
        dispatch.auto_algorithm("backward", g, np.float32)


def test_bad_arguments():
    model = lenet5(10, rng=0)
    with pytest.raises(TypeError, match="model"):
        summary("lenet5", (1, 28, 28))
    with pytest.raises(TypeError, match="input_shape"):
        summary(model, 28)
    with pytest.raises(TypeError, match="input_shape: expected a sequence of ints"):
        summary(model, "1,28,28")  # the CLI's form, not split into characters
    # A shape the model cannot take: the layer that refuses it is named.
    with pytest.raises(
        ValueError, match=r"\[in layer 'features.0' \(Conv2d\), on an input of shape \(2, 1, 28\)\]"
    ):
        summary(model, (1, 28))
    with pytest.raises(ValueError, match="input_shape"):
        summary(model, (1, 0, 28))
    with pytest.raises(ValueError, match="batch_size"):
        summary(model, (1, 28, 28), 0)
    with pytest.raises(ValueError):
        summary(model, (1, 20, 20))  # LeNet-5's Linear wants 400 features


def test_table_and_lazy_attribute():
    s = foldconv.summary(lenet5(10, rng=0), (1, 28, 28), batch_size=2)
    assert isinstance(s, ModelSummary)
    text = str(s)
    assert "    0 (Conv2d)" in text and "[2, 6, 28, 28]" in text
    assert "Total params: 61,706" in text
    assert "Total mult-adds: 833,040" in text
    # auto's choice for LeNet-5's layers where Numba runs: the compiled direct kernels
    # for conv1; for conv2's input gradient the GEMM and the compiled fold
    lines = {ln.split("(Conv2d)")[0].strip(): ln for ln in text.splitlines() if "(Conv2d)" in ln}
    assert len(lines) == 2
    conv1, conv2 = (lines[k] for k in sorted(lines))
    if foldconv.get_compiled():
        assert "dc / dc / dc" in conv1 and "dc / ic / dc" in conv2
    else:
        assert "im2col / im2col / im2col" in conv1 and "im2col / im2col / im2col" in conv2
    assert s.to_dict()["total_params"] == 61_706


def test_cli_summary(capsys):
    assert (
        main(["summary", "--model", "alexnet_paper", "--input", "3,227,227", "--batch", "128"]) == 0
    )
    out = capsys.readouterr().out
    assert "Total params: 60,965,224" in out
    assert "[128, 96, 55, 55]" in out
    assert "Input: [128, 3, 227, 227] float32" in out
    assert main(["summary", "--model", "lenet5", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 61_706 and data["total_mult_adds"] == 416_520


def test_cli_summary_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        main(["summary", "--input", "3,x,5"])
    assert e.value.code == 2
    assert "comma-separated" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ("vgg16", "vgg11") else n
        for n in available_models()
    ],
)
def test_every_model(name):
    model = get_model(name, rng=0)
    size = model.input_size or model.min_input_size
    s = summary(model, (model.in_channels, size, size), 4)
    assert s.total_params == model.num_parameters()
    assert s.layers[0].output_shape == (4, 10)
    assert all(layer.calls == 1 for layer in s.layers)
    assert not s.unknown_mult_adds and s.total_mult_adds > 0
