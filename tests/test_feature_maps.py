"""Feature maps: the activations plotted are the layers' outputs, one PNG per layer, the
image preprocessed as in training, clear errors for bad paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foldconv.cli import main
from foldconv.experiments import small_alexnet
from foldconv.feature_maps import activation_grid, feature_maps, preprocess_image, visualize
from foldconv.trainer import load_checkpoint, predict, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """LeNet-5 trained for one epoch on the digits, and a test digit saved as a PNG."""
    from PIL import Image

    from foldconv.data import load_dataset

    root = tmp_path_factory.mktemp("featuremaps")
    train("lenet5", "digits", epochs=1, out=root / "run", progress=False, verbose=False)
    _, test = load_dataset("digits")
    png = root / "digit.png"
    Image.fromarray(np.round(test.images[3, 0] * 255).astype(np.uint8)).save(png)
    return root / "run", png


def _expected_mosaic_tile(grid, i, n, h, w, border=1):
    # filter_mosaic's layout: ceil(sqrt(2n)) columns (at most n), row-major, 1-pixel borders.
    cols = min(int(math.ceil(math.sqrt(2 * n))), n)
    r, c = divmod(i, cols)
    top, left = border + r * (h + border), border + c * (w + border)
    return grid[top : top + h, left : left + w]


def test_activations_equal_a_direct_forward_of_the_layers(run):
    ckpt, png = run
    model, info = load_checkpoint(ckpt)
    x = preprocess_image(png, info)
    acts = feature_maps(model, x)
    names = [a.name for a in acts]
    assert names == [f"features.{i}" for i in range(6)] + [f"classifier.{i}" for i in range(5)]
    h = x
    for i, layer in enumerate(model.features):
        h = layer(h)
        np.testing.assert_array_equal(acts[i].value, h)
        assert acts[i].layer is layer
    h = h.reshape(1, -1)
    for i, layer in enumerate(model.classifier):
        h = layer(h)
        np.testing.assert_array_equal(acts[6 + i].value, h)
    np.testing.assert_array_equal(acts[-1].value, model(x))


def test_grids_hold_the_activations(run):
    ckpt, png = run
    model, info = load_checkpoint(ckpt)
    acts = feature_maps(model, preprocess_image(png, info))
    for a in acts:
        one = a.value[0].astype(np.float64)
        grid = activation_grid(one)
        if one.ndim == 3:
            n, hh, ww = one.shape
            for i in range(n):
                m = one[i]
                scaled = (m - m.min()) / max(m.max() - m.min(), 1e-12)
                np.testing.assert_allclose(_expected_mosaic_tile(grid, i, n, hh, ww), scaled)
        else:
            side = math.ceil(math.sqrt(one.size))
            flat = grid.reshape(-1)
            assert grid.shape[1] == side and grid.shape[0] == math.ceil(one.size / side)
            scaled = (one - one.min()) / max(one.max() - one.min(), 1e-12)
            np.testing.assert_allclose(flat[: one.size], scaled)
            assert np.isnan(flat[one.size :]).all()


def test_preprocessing_is_the_trainers(run):
    ckpt, png = run
    model, info = load_checkpoint(ckpt)
    x = preprocess_image(png, info)
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32  # 8x8 digits resized to 28
    logits = np.asarray(model(x), dtype=np.float64)[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = predict(ckpt, [png], k=10)[0]
    for name, prob in top:
        assert p[info["classes"].index(name)] == pytest.approx(prob, rel=1e-6)
    # An array in [0, 1] is preprocessed the same way as the file it came from.
    from foldconv.data import load_image

    arr = load_image(png, mode="L", size=tuple(info["image_hw"]))
    np.testing.assert_array_equal(preprocess_image(arr, info), x)


def test_visualize_writes_one_png_per_layer(run, tmp_path):
    ckpt, png = run
    r = visualize(ckpt, png, tmp_path / "maps")
    files = sorted((tmp_path / "maps").glob("*.png"))
    assert len(files) == len(r["files"]) == 12  # the input and 11 leaf layers of LeNet-5
    assert [f.name for f in files][:3] == [
        "00-input.png",
        "01-features.0-Conv2d.png",
        "02-features.1-ReLU.png",
    ]
    assert files[-1].name == "11-classifier.4-Linear.png"
    for f in files:
        assert f.read_bytes()[:8] == PNG_MAGIC
    assert [tuple(layer["shape"]) for layer in r["layers"]][:4] == [
        (1, 28, 28),
        (6, 28, 28),
        (6, 28, 28),
        (6, 14, 14),
    ]
    name, prob = r["prediction"]
    assert name == predict(ckpt, [png], k=1)[0][0][0] and 0 < prob <= 1


def test_model_is_left_as_it_was():
    model = small_alexnet(10, input_size=8, lrn=True, dropout=0.5, rng=0, dropout_rng=1)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    acts = feature_maps(model, x)
    assert model.training  # restored
    assert all("forward" not in m.__dict__ for m in model.modules())
    kinds = [type(a.layer).__name__ for a in acts]
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("Dropout") == 2
    # Eval mode during the pass: dropout is the identity.
    for j, kind in enumerate(kinds):
        if kind == "Dropout":
            np.testing.assert_array_equal(acts[j].value, acts[j - 1].value)
    model.eval()
    np.testing.assert_array_equal(acts[-1].value, model(x))


def test_a_layer_called_twice_is_recorded_twice():
    from foldconv import nn

    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(4, 4, rng=0), relu, nn.Linear(4, 4, rng=1))
    net.add_module("3", relu)  # the same module again
    acts = feature_maps(net, np.ones((1, 4), np.float32))
    assert [a.name for a in acts] == ["0", "1", "2", "1#2"]


def test_bad_paths_and_inputs(run, tmp_path):
    ckpt, png = run
    with pytest.raises(FileNotFoundError, match="checkpoint: .*missing.safetensors does not exist"):
        visualize(tmp_path / "missing.safetensors", png, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="checkpoint: no best.safetensors"):
        visualize(tmp_path, png, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="image: .*nope.png does not exist"):
        visualize(ckpt, tmp_path / "nope.png", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="image: .* is a directory, not an image file"):
        visualize(ckpt, tmp_path, tmp_path / "o")  # CHECKPOINT and IMAGE swapped
    with pytest.raises(ValueError, match="checkpoint: cannot read"):
        visualize(png, png, tmp_path / "o")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: unreadable image"):
        visualize(ckpt, text, tmp_path / "o")
    _, info = load_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"image: expected an array of shape \(1, H, W\)"):
        preprocess_image(np.zeros((3, 8, 8)), info)
    with pytest.raises(TypeError, match="image: expected a path or an array, got int"):
        preprocess_image(3, info)
    with pytest.raises(ValueError, match=r"activation: expected one image's activation"):
        activation_grid(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="activation: expected at least one value"):
        activation_grid(np.zeros(0))
    with pytest.raises(TypeError, match="model: expected a Module, got str"):
        feature_maps("lenet5", np.zeros((1, 1, 28, 28)))


def test_cli_visualize(run, tmp_path, capsys):
    ckpt, png = run
    assert main(["visualize", str(ckpt), str(png), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "Conv2d" in out and "prediction:" in out
    assert "12 PNG files in" in out
    assert len(list((tmp_path / "m").glob("*.png"))) == 12
    assert main(["visualize", str(tmp_path / "none"), str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foldconv: error: checkpoint:") and "Traceback" not in err
    assert main(["visualize", str(ckpt), str(tmp_path / "none.png")]) == 2
    assert capsys.readouterr().err.startswith("foldconv: error: image:")
