"""Each model equals the same network built in PyTorch with the same weights (float64).

The PyTorch networks are written out here from the papers' / torchvision's layouts, so the
state_dict load (strict) checks names and shapes, and the forward output, the input
gradient and every parameter gradient are compared at <= 1e-10 relative error.
"""

from __future__ import annotations

import numpy as np
import pytest

from foldconv.models import (
    alexnet,
    alexnet_paper,
    available_models,
    get_model,
    lenet5,
    resnet18,
    vgg11,
    vgg16,
)
from tests.gradcheck import rel_err

torch = pytest.importorskip("torch")
tnn = torch.nn

TOL = 1e-10


# -- the reference networks in PyTorch -------------------------------------------------------
class TorchFeatureClassifier(tnn.Module):
    def __init__(self, features, classifier, avgpool=None):
        super().__init__()
        self.features = features
        if avgpool is not None:
            self.avgpool = avgpool
        self.classifier = classifier

    def forward(self, x):
        x = self.features(x)
        if hasattr(self, "avgpool"):
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def torch_lenet5(num_classes=10, in_channels=1, flat=400):
    return TorchFeatureClassifier(
        tnn.Sequential(
            tnn.Conv2d(in_channels, 6, 5, padding=2),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
        ),
        tnn.Sequential(
            tnn.Linear(flat, 120),
            tnn.ReLU(),
            tnn.Linear(120, 84),
            tnn.ReLU(),
            tnn.Linear(84, num_classes),
        ),
    )


def torch_alexnet(num_classes, dropout=0.5):
    # torchvision.models.AlexNet, written out.
    return TorchFeatureClassifier(
        tnn.Sequential(
            tnn.Conv2d(3, 64, 11, stride=4, padding=2),
            tnn.ReLU(),
            tnn.MaxPool2d(3, 2),
            tnn.Conv2d(64, 192, 5, padding=2),
            tnn.ReLU(),
            tnn.MaxPool2d(3, 2),
            tnn.Conv2d(192, 384, 3, padding=1),
            tnn.ReLU(),
            tnn.Conv2d(384, 256, 3, padding=1),
            tnn.ReLU(),
            tnn.Conv2d(256, 256, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(3, 2),
        ),
        tnn.Sequential(
            tnn.Dropout(dropout),
            tnn.Linear(9216, 4096),
            tnn.ReLU(),
            tnn.Dropout(dropout),
            tnn.Linear(4096, 4096),
            tnn.ReLU(),
            tnn.Linear(4096, num_classes),
        ),
        tnn.AdaptiveAvgPool2d((6, 6)),
    )


def torch_alexnet_paper(num_classes, dropout=0.5):
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)
    return TorchFeatureClassifier(
        tnn.Sequential(
            tnn.Conv2d(3, 96, 11, stride=4),
            tnn.ReLU(),
            tnn.LocalResponseNorm(**lrn),
            tnn.MaxPool2d(3, 2),
            tnn.Conv2d(96, 256, 5, padding=2, groups=2),
            tnn.ReLU(),
            tnn.LocalResponseNorm(**lrn),
            tnn.MaxPool2d(3, 2),
            tnn.Conv2d(256, 384, 3, padding=1),
            tnn.ReLU(),
            tnn.Conv2d(384, 384, 3, padding=1, groups=2),
            tnn.ReLU(),
            tnn.Conv2d(384, 256, 3, padding=1, groups=2),
            tnn.ReLU(),
            tnn.MaxPool2d(3, 2),
        ),
        tnn.Sequential(
            tnn.Dropout(dropout),
            tnn.Linear(9216, 4096),
            tnn.ReLU(),
            tnn.Dropout(dropout),
            tnn.Linear(4096, 4096),
            tnn.ReLU(),
            tnn.Linear(4096, num_classes),
        ),
    )


VGG_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def torch_vgg(cfg, num_classes, dropout=0.5):
    layers, c = [], 3
    for v in VGG_CFGS[cfg]:
        if v == "M":
            layers.append(tnn.MaxPool2d(2, 2))
        else:
            layers += [tnn.Conv2d(c, v, 3, padding=1), tnn.ReLU()]
            c = v
    return TorchFeatureClassifier(
        tnn.Sequential(*layers),
        tnn.Sequential(
            tnn.Linear(512 * 7 * 7, 4096),
            tnn.ReLU(),
            tnn.Dropout(dropout),
            tnn.Linear(4096, 4096),
            tnn.ReLU(),
            tnn.Dropout(dropout),
            tnn.Linear(4096, num_classes),
        ),
        tnn.AdaptiveAvgPool2d((7, 7)),
    )


class TorchBasicBlock(tnn.Module):
    def __init__(self, inp, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inp != planes:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inp, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        inp = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                tnn.Sequential(
                    TorchBasicBlock(inp, planes, stride), TorchBasicBlock(planes, planes, 1)
                ),
            )
            inp = planes
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(512, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- helpers -------------------------------------------------------------------------------
def load_into_torch(ours, build):
    """The torch model ``build()`` holding our weights (a strict load: names and shapes).

    The model is built on the meta device and takes our arrays without a copy
    (``assign=True``), so that the big networks cost no second initialisation.
    """
    with torch.device("meta"):
        ref = build()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours.state_dict().items()}
    ref.load_state_dict(sd, strict=True, assign=True)
    for p in ref.parameters():
        assert p.dtype == torch.float64 and p.requires_grad
    return ref


def compare(ours, ref, x, rng, *, train=True, check_buffers=False):
    """Forward, input gradient and every parameter gradient against the torch model."""
    ours.train(train)
    ref.train(train)
    y = ours(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    assert rel_err(y, yt.detach().numpy()) <= TOL
    if check_buffers:
        ref_sd = ref.state_dict()
        for name, b in ours.state_dict().items():
            assert rel_err(b, ref_sd[name].numpy()) <= TOL, name
    if not train:  # layers keep what backward needs only in train mode
        return y
    g = rng.standard_normal(y.shape)
    ours.zero_grad()
    dx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    assert rel_err(dx, xt.grad.numpy()) <= TOL
    ref_params = dict(ref.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(ref_params)
    for name, p in ours_params.items():
        assert p.grad is not None, name
        err = rel_err(p.grad, ref_params[name].grad.numpy())
        assert err <= TOL, f"{name}: relative error {err:.2e}"
    return y


def check_layout(ours, ref):
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for k in ref_sd:
        assert tuple(ours_sd[k].shape) == tuple(ref_sd[k].shape), k


# -- tests -----------------------------------------------------------------------------------
def test_registry():
    assert set(available_models()) == {
        "lenet5",
        "alexnet",
        "alexnet_paper",
        "vgg11",
        "vgg16",
        "resnet18",
    }
    m = get_model("lenet5", 7, rng=0)
    assert m.classifier[4].weight.shape == (7, 84)
    with pytest.raises(ValueError, match="name: expected one of"):
        get_model("lenet6")


def test_lenet5_matches_torch():
    rng = np.random.default_rng(0)
    ours = lenet5(10, rng=1, dtype=np.float64)
    assert ours.num_parameters() == 61706
    ref = load_into_torch(ours, torch_lenet5)
    x = rng.standard_normal((3, 1, 28, 28))
    compare(ours, ref, x, rng)


@pytest.mark.parametrize(("size", "flat"), [(32, 576), (12, 16)])
def test_lenet5_other_input_sizes(size, flat):
    rng = np.random.default_rng(1)
    ours = lenet5(5, in_channels=3, input_size=size, rng=2, dtype=np.float64)
    assert ours.classifier[0].weight.shape == (120, flat)
    ref = load_into_torch(ours, lambda: torch_lenet5(5, 3, flat))
    compare(ours, ref, rng.standard_normal((2, 3, size, size)), rng)


def test_lenet5_rejects_too_small_input():
    with pytest.raises(ValueError, match="input_size: expected an int >= 12, got 8"):
        lenet5(input_size=8)


def test_lenet5_seeded_init_is_reproducible():
    a, b = lenet5(rng=3), lenet5(rng=3)
    c = lenet5(rng=4)
    for (ka, va), (_, vb), (_, vc) in zip(
        a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True
    ):
        np.testing.assert_array_equal(va, vb, err_msg=ka)
        assert not np.array_equal(va, vc)


def test_alexnet_matches_torch():
    rng = np.random.default_rng(2)
    ours = alexnet(1000, dropout=0.0, rng=3, dtype=np.float64)
    assert ours.num_parameters() == 61_100_840
    ref = load_into_torch(ours, lambda: torch_alexnet(1000, dropout=0.0))
    # 63x63 is the smallest input the features accept; the adaptive pool then makes the
    # 6x6 map that the classifier expects.
    compare(ours, ref, rng.standard_normal((2, 3, 63, 63)), rng)


def test_alexnet_dropout_eval_is_identity_and_train_is_seeded():
    x = np.random.default_rng(0).standard_normal((2, 3, 63, 63)).astype(np.float32)
    a, b = alexnet(10, rng=5), alexnet(10, rng=5)
    np.testing.assert_array_equal(a.train()(x), b.train()(x))  # same seed -> same masks
    a.eval()
    np.testing.assert_array_equal(a(x), a(x))
    assert not np.array_equal(a(x), b.train()(x))


def test_alexnet_paper_layout_and_init():
    m = alexnet_paper(1000, rng=0)
    assert m.num_parameters() == 60_965_224
    with torch.device("meta"):
        check_layout(m, torch_alexnet_paper(1000))
    sd = m.state_dict()
    ones = {"features.4", "features.10", "features.12", "classifier.1", "classifier.4"}
    for name in ["features.0", "features.4", "features.8", "features.10", "features.12"] + [
        "classifier.1",
        "classifier.4",
        "classifier.6",
    ]:
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        assert abs(float(w.mean())) < 1e-3, name
        assert abs(float(w.std()) - 0.01) < 1e-3, name
        np.testing.assert_array_equal(b, 1.0 if name in ones else 0.0, err_msg=name)
    d = alexnet_paper(10, init="default", rng=0)
    # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); conv1's fan_in = 3 * 11 * 11.
    w = d.state_dict()["features.0.weight"]
    assert float(np.abs(w).max()) <= 1 / np.sqrt(363) and float(w.std()) > 0.02
    with pytest.raises(ValueError, match="init: expected 'paper' or 'default'"):
        alexnet_paper(init="xavier")


def test_alexnet_paper_matches_torch():
    rng = np.random.default_rng(3)
    ours = alexnet_paper(10, dropout=0.0, init="default", rng=4, dtype=np.float64)
    ref = load_into_torch(ours, lambda: torch_alexnet_paper(10, dropout=0.0))
    y = compare(ours, ref, rng.standard_normal((1, 3, 227, 227)), rng)
    assert y.shape == (1, 10)


@pytest.mark.parametrize(
    ("builder", "cfg", "count"),
    [
        (vgg11, "A", 132_863_336),
        # ~10 s on 2 cores (138M float64 weights drawn, compared twice): slow, still in CI.
        pytest.param(vgg16, "D", 138_357_544, marks=pytest.mark.slow),
    ],
)
def test_vgg_matches_torch(builder, cfg, count):
    rng = np.random.default_rng(4)
    ours = builder(1000, dropout=0.0, rng=5, dtype=np.float64)
    assert ours.num_parameters() == count
    ref = load_into_torch(ours, lambda: torch_vgg(cfg, 1000, dropout=0.0))
    compare(ours, ref, rng.standard_normal((2, 3, 32, 32)), rng)
    # torchvision's initialisation: Kaiming-normal (fan_out) convs, N(0, 0.01) linears,
    # zero biases.
    sd = ours.state_dict()
    w = sd["features.0.weight"]
    assert abs(float(w.std()) - np.sqrt(2 / (64 * 9))) < 0.01
    assert abs(float(sd["classifier.0.weight"].std()) - 0.01) < 1e-4
    assert not np.any(sd["classifier.0.bias"]) and not np.any(sd["features.0.bias"])


@pytest.mark.parametrize("train", [True, False])
def test_resnet18_matches_torch(train):
    rng = np.random.default_rng(5)
    ours = resnet18(10, rng=6, dtype=np.float64)
    assert ours.num_parameters() == 11_173_962
    ref = load_into_torch(ours, lambda: TorchResNet18(10))
    names = list(ours.state_dict())
    for expected in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "fc.bias",
    ):
        assert expected in names
    assert "layer1.0.downsample.0.weight" not in names
    # 16x16 keeps the cost low: stages see 16, 8, 4 and 2 pixels.
    compare(ours, ref, rng.standard_normal((4, 3, 16, 16)), rng, train=train, check_buffers=True)


def test_models_reject_bad_num_classes():
    for builder in (lenet5, alexnet, alexnet_paper, vgg11, resnet18):
        with pytest.raises(ValueError, match="num_classes: expected a positive int, got 0"):
            builder(0)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        lenet5(rng=0).backward(np.zeros((1, 10), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        resnet18(rng=0).backward(np.zeros((1, 10), np.float32))


@pytest.mark.parametrize("name", available_models())
def test_an_empty_batch_gives_empty_logits_and_zero_gradients(name):
    # PyTorch returns (0, num_classes) logits and zero parameter gradients for a batch of 0.
    model = get_model(name, num_classes=7, rng=0)
    size = getattr(model, "input_size", None) or getattr(model, "min_input_size", 32)
    x = np.zeros((0, model.in_channels, size, size), np.float32)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        y = model(x)
        assert y.shape == (0, 7)
        dx = model.backward(np.zeros_like(y))
        assert dx.shape == x.shape
        for pname, p in model.named_parameters():
            assert p.grad is not None and p.grad.shape == p.data.shape, pname
            assert not np.any(p.grad), pname
