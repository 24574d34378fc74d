"""The paper's ablations: end to end on tiny settings, the arms differ in exactly one
property, seeds reproduce, bad input is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foldconv import nn
from foldconv.cli import main
from foldconv.experiments import (
    EXPERIMENTS,
    build_arm,
    default_settings,
    run_experiment,
    small_alexnet,
    spread,
)
from foldconv.experiments.run import _epochs_to

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 64 training digits, one epoch, two seeds: a few batches per run.
TINY = dict(dataset="digits", subset=64, epochs=1, seeds=2, batch_size=32, evals_per_epoch=2)


def _run(name, out, **kw):
    opts = dict(TINY)
    opts.update(kw)
    return run_experiment(name, out=out, progress=False, verbose=False, **opts)


@pytest.fixture(scope="module", params=list(EXPERIMENTS))
def tiny_result(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return request.param, out, _run(request.param, out)


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------
def test_writes_a_png_and_a_json_with_the_expected_structure(tiny_result):
    from PIL import Image

    name, out, result = tiny_result
    png, js = out / f"{name}.png", out / f"{name}.json"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as im:
        im.verify()
    data = json.loads(js.read_text())
    assert data["experiment"] == name and data["claim"] == EXPERIMENTS[name].claim
    cfg = data["config"]
    assert cfg["seeds"] == [0, 1] and cfg["epochs"] == 1 and cfg["train_size"] == 64
    assert cfg["dataset"] == "digits" and cfg["test_size"] == 360
    assert [a["label"] for a in data["arms"]] == [label for label, _ in EXPERIMENTS[name].arms]
    for arm in data["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for r in arm["runs"]:
            assert r["diverged"] is None and r["steps"] == 2  # 64 images, batches of 32
            assert [h["epoch"] for h in r["history"]] == [1]
            # Measured at the start and twice in the epoch.
            assert [p["epoch"] for p in r["curve"]] == [0.0, 0.5, 1.0]
            assert 0 <= r["final_test_error"] <= 1 and 0 <= r["final_train_error"] <= 1
            assert r["final_test_error"] == r["history"][-1]["test_error"]
            gap = r["final_test_error"] - r["final_train_error"]
            assert r["generalisation_gap"] == pytest.approx(gap)
        t = arm["spread"]["final_test_error"]
        values = [r["final_test_error"] for r in arm["runs"]]
        assert t["n"] == 2 and t["min"] == min(values) and t["max"] == max(values)
        assert t["mean"] == pytest.approx(np.mean(values))
        assert t["std"] == pytest.approx(np.std(values, ddof=1))
    comp = data["comparison"]
    assert len(comp["per_seed"]) == 2 and comp["spread"]["n"] + comp["spread"]["missing"] == 2
    if name != "relu-vs-tanh":
        a, b = data["arms"]
        expected = [
            100 * (ra["final_test_error"] - rb["final_test_error"])
            for ra, rb in zip(a["runs"], b["runs"], strict=True)
        ]
        assert comp["per_seed"] == pytest.approx(expected)
    # The returned dict is what the file holds.
    assert json.loads(json.dumps(result)) == data


def test_same_seeds_give_identical_numbers(tmp_path):
    def numbers(out):
        data = json.loads((out / "lrn.json").read_text())
        for arm in data["arms"]:
            for r in arm["runs"]:
                r.pop("seconds")
        return data["arms"], data["comparison"]

    _run("lrn", tmp_path / "a")
    _run("lrn", tmp_path / "b")
    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    _run("lrn", tmp_path / "c", seeds=[5, 6])
    assert (
        numbers(tmp_path / "c")[0][0]["runs"][0]["history"]
        != (numbers(tmp_path / "a")[0][0]["runs"][0]["history"])
    )


def test_epochs_to_target_interpolates_between_measurements():
    curve = [
        {"epoch": 0.0, "train_error": 0.9},
        {"epoch": 0.5, "train_error": 0.5},
        {"epoch": 1.0, "train_error": 0.1},
    ]
    assert _epochs_to(curve, 0.3) == pytest.approx(0.75)
    assert _epochs_to(curve, 0.5) == pytest.approx(0.5)
    assert _epochs_to(curve, 0.95) == 0.0
    assert _epochs_to(curve, 0.05) is None


def test_spread():
    s = spread([1.0, 3.0, None])
    expected = {"mean": 2.0, "std": pytest.approx(np.sqrt(2)), "min": 1.0, "max": 3.0}
    assert s == {**expected, "n": 2, "missing": 1}
    assert spread([None])["n"] == 0 and spread([4.0])["std"] == 0.0


# --------------------------------------------------------------------------------------------
# the arms differ in exactly the property under test
# --------------------------------------------------------------------------------------------
def _layers(model):
    return [m for _, m in model.named_modules() if not any(True for _ in m.children())]


def _describe(m):
    kind = type(m).__name__
    if isinstance(m, nn.MaxPool2d):
        return (kind, m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.Dropout):
        return (kind, m.p)
    if isinstance(m, nn.LocalResponseNorm):
        return (kind, m.size, m.alpha, m.beta, m.k)
    return (kind, tuple(np.shape(m.weight.data)) if hasattr(m, "weight") else None)


@pytest.mark.parametrize("shape", [(1, 8), (1, 28), (3, 32)])
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_arms_start_from_the_same_weights(name, shape):
    c, s = shape
    a = build_arm(name, 0, 3, in_channels=c, input_size=s)
    b = build_arm(name, 1, 3, in_channels=c, input_size=s)
    sa, sb = a.state_dict(), b.state_dict()
    # The names shift where an arm inserts a layer (features.3 -> features.4); the
    # parameters, in order, are bitwise the same.
    assert len(sa) == len(sb)
    for va, vb in zip(sa.values(), sb.values(), strict=True):
        np.testing.assert_array_equal(va, vb)
    x = np.random.default_rng(0).standard_normal((2, c, s, s)).astype(np.float32)
    assert a.eval()(x).shape == b.eval()(x).shape == (2, 10)
    other = build_arm(name, 0, 4, in_channels=c, input_size=s).state_dict()
    assert not np.array_equal(other["features.0.weight"], sa["features.0.weight"])
    if name != "relu-vs-tanh":  # the baseline arm has no LRN or dropout, so no shift
        assert list(sa) == list(other)


def test_relu_vs_tanh_differ_only_in_the_activation():
    a = [_describe(m) for m in _layers(build_arm("relu-vs-tanh", 0, 0))]
    b = [_describe(m) for m in _layers(build_arm("relu-vs-tanh", 1, 0))]
    assert len(a) == len(b)
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert diff and all(x == ("Tanh", None) and y == ("ReLU", None) for x, y in diff)
    assert len(diff) == 5  # three convolutions and two hidden fully connected layers
    assert ("Tanh", None) not in b and ("ReLU", None) not in a
    kinds = {d[0] for d in a}
    assert "LocalResponseNorm" not in kinds and "Dropout" not in kinds  # no regularisation


def test_lrn_arm_only_adds_the_papers_lrn_after_conv1_and_conv2():
    a = [_describe(m) for m in _layers(build_arm("lrn", 0, 0))]
    b = [_describe(m) for m in _layers(build_arm("lrn", 1, 0))]
    lrn = ("LocalResponseNorm", 5, 5e-4, 0.75, 2.0)
    assert lrn not in a and b.count(lrn) == 2
    assert [d for d in b if d != lrn] == a
    # After the activation, before the pooling, as in the paper.
    kinds = [d[0] for d in b]
    for i in (i for i, d in enumerate(b) if d == lrn):
        assert kinds[i - 1] == "ReLU" and kinds[i + 1] == "MaxPool2d"


def test_overlapping_pool_arms_differ_only_in_the_pooling():
    a = [_describe(m) for m in _layers(build_arm("overlapping-pool", 0, 0))]
    b = [_describe(m) for m in _layers(build_arm("overlapping-pool", 1, 0))]
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert len(a) == len(b) and len(diff) == 2
    assert all(x == ("MaxPool2d", 2, 2, 0) and y == ("MaxPool2d", 3, 2, 1) for x, y in diff)


def test_dropout_arm_only_adds_dropout_after_the_first_two_fc_layers():
    a = [_describe(m) for m in _layers(build_arm("dropout", 0, 0))]
    b = [_describe(m) for m in _layers(build_arm("dropout", 1, 0))]
    assert ("Dropout", 0.5) not in a and b.count(("Dropout", 0.5)) == 2
    assert [d for d in b if d != ("Dropout", 0.5)] == a
    cls = [type(m).__name__ for m in build_arm("dropout", 1, 0).classifier]
    assert cls == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]


def test_ablations_start_from_the_full_network():
    # relu, LRN, overlapping pooling and dropout in every ablation but the one under test.
    full = [_describe(m) for m in _layers(build_arm("lrn", 1, 0))]
    assert [_describe(m) for m in _layers(build_arm("overlapping-pool", 1, 0))] == full
    assert [_describe(m) for m in _layers(build_arm("dropout", 1, 0))] == full


def test_he_init_is_the_same_for_both_arms_and_differs_from_the_default():
    a = build_arm("relu-vs-tanh", 0, 1, init="he").state_dict()
    b = build_arm("relu-vs-tanh", 1, 1, init="he").state_dict()
    d = build_arm("relu-vs-tanh", 0, 1).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    lrn = build_arm("lrn", 1, 1, init="he").state_dict()
    base = build_arm("lrn", 0, 1, init="he").state_dict()
    for va, vb in zip(base.values(), lrn.values(), strict=True):
        np.testing.assert_array_equal(va, vb)
    w = a["features.3.weight"]
    assert not np.array_equal(w, d["features.3.weight"])
    assert np.std(w) == pytest.approx(np.sqrt(2 / (16 * 25)), rel=0.1)
    assert not np.any(a["features.3.bias"])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="resnet"), "name: expected one of relu-vs-tanh, lrn"),
        (dict(dataset="imagenet"), "dataset: expected one of digits, mnist, cifar10"),
        (dict(seeds=0), "seeds: expected an int >= 1, got 0"),
        (dict(seeds=[1, 1]), "seeds: expected distinct seeds"),
        (dict(seeds=[-1]), "seeds: expected an int >= 0, got -1"),
        (dict(seeds="3"), "seeds: expected a positive count or a list of seeds"),
        (dict(epochs=0), "epochs: expected an int >= 1, got 0"),
        (dict(subset=100000), "subset: expected at most the 1437 training images of digits"),
        (dict(lr=-0.1), "lr: expected a number in (0.0, inf]"),
        (dict(momentum=1.5), "momentum: expected a number in [0.0, 0.999]"),
        (dict(target_error=0.0), "target_error: expected a number in (0.0, 1.0]"),
        (dict(init="xavier"), "init: expected 'default' or 'he', got 'xavier'"),
        (dict(batch_size=2.5), "batch_size: expected an int >= 1, got 2.5"),
    ],
)
def test_bad_options_are_named(kwargs, message, tmp_path):
    opts = dict(name="lrn", out=tmp_path, progress=False, verbose=False, subset=32, epochs=1)
    opts.update(kwargs)
    name = opts.pop("name")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_experiment(name, **opts)
    assert not list(tmp_path.glob("*.json"))


def test_missing_mnist_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist"):
        run_experiment("lrn", dataset="mnist", data_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(activation="sigmoid"), "activation: expected one of relu, tanh"),
        (dict(pool="avg"), "pool: expected one of overlapping, non-overlapping"),
        (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\)"),
        (dict(input_size=30), "input_size: expected a multiple of 4"),
        (dict(init="orthogonal"), "init: expected one of default, he"),
        (dict(in_channels=0), "in_channels: expected a positive int"),
    ],
)
def test_network_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_alexnet(10, **kwargs)


def test_default_settings():
    s = default_settings("relu-vs-tanh", "mnist")
    assert s["evals_per_epoch"] == 8 and s["target_error"] == 0.25 and s["seeds"] == [0, 1, 2]
    assert default_settings("dropout", "digits")["evals_per_epoch"] == 1
    with pytest.raises(ValueError, match="dataset: expected one of"):
        default_settings("lrn", "folder")


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
def test_cli_runs_an_experiment(tmp_path, capsys):
    args = ["experiment", "dropout", "--subset", "64", "--epochs", "1", "--seeds", "2"]
    args += ["--batch-size", "32", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dropout on digits (64 training images, 1 epoch, seeds 0, 1)" in out
    assert "without dropout" in out and "dropout 0.5" in out and "test error" in out
    assert (tmp_path / "dropout.json").is_file() and (tmp_path / "dropout.png").is_file()


def test_cli_bad_name_and_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["experiment", "batchnorm"])
    assert e.value.code == 2
    assert "invalid choice: 'batchnorm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "lrn", "--seeds", "0"])
    assert "--seeds: expected a positive int, got 0" in capsys.readouterr().err
    code = main(["experiment", "lrn", "--subset", "5000", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "foldconv: error: subset: expected at most the 1437" in capsys.readouterr().err
