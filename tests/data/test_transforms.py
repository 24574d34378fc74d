"""Batch transforms: shapes, contents against explicit slices, and Resize against PyTorch."""

import numpy as np
import pytest

from foldconv.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
)


def unique_batch(n=6, c=2, h=7, w=9, dtype=np.float32):
    """A batch whose every pixel value is distinct (and nonzero), so a crop locates itself."""
    return (np.arange(n * c * h * w, dtype=np.float64) + 1).reshape(n, c, h, w).astype(dtype)


# --- RandomCrop ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 2, (1, 3)])
def test_random_crop_is_a_slice_of_the_padded_image(padding):
    x = unique_batch(n=40)
    size = (5, 6)
    y = RandomCrop(size, padding=padding)(x, np.random.default_rng(0))
    assert y.shape == (40, 2, 5, 6)
    assert y.dtype == x.dtype
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    hp, wp = padded.shape[2:]
    offsets = []
    for i in range(len(x)):
        matches = [
            (t, l)
            for t in range(hp - size[0] + 1)
            for l in range(wp - size[1] + 1)
            if np.array_equal(y[i], padded[i, :, t : t + size[0], l : l + size[1]])
        ]
        # Distinct pixel values: exactly one window of the image's own padded copy matches.
        assert len(matches) == 1, f"image {i}: crop is not a window of its padded image"
        offsets.append(matches[0])
    # Offsets are drawn per image: with 40 images they cannot all coincide.
    assert len(set(offsets)) > 5
    if ph or pw:
        # Some crop must reach into the zero padding.
        assert any(
            t < ph or l < pw or t > hp - size[0] - ph or l > wp - size[1] - pw for t, l in offsets
        )


def test_random_crop_covers_all_offsets():
    x = unique_batch(n=400, c=1, h=4, w=4)
    y = RandomCrop(2, padding=1)(x, np.random.default_rng(1))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    seen = set()
    for i in range(len(x)):
        for t in range(5):
            for l in range(5):
                if np.array_equal(y[i], padded[i, :, t : t + 2, l : l + 2]):
                    seen.add((t, l))
    assert seen == {(t, l) for t in range(5) for l in range(5)}


def test_random_crop_reproducible_and_full_size_is_identity():
    x = unique_batch()
    a = RandomCrop(4, padding=1)(x, np.random.default_rng(5))
    b = RandomCrop(4, padding=1)(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(RandomCrop((7, 9))(x, 3), x)


def test_random_crop_errors():
    x = unique_batch()
    with pytest.raises(ValueError, match="^size"):
        RandomCrop(8)(x, 0)
    with pytest.raises(ValueError, match="^size"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="^padding"):
        RandomCrop(3, padding=-1)
    with pytest.raises(ValueError, match="^x"):
        RandomCrop(3)(x[0], 0)
    with pytest.raises(TypeError, match="^x"):
        RandomCrop(3)(x.astype(np.int32), 0)
    with pytest.raises(TypeError, match="^rng"):
        RandomCrop(3)(x, "seed")


# --- RandomHorizontalFlip --------------------------------------------------------------------


def test_flip_each_image_is_itself_or_its_mirror():
    x = unique_batch(n=200, c=3, h=3, w=5)
    y = RandomHorizontalFlip(0.5)(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    flipped = []
    for i in range(len(x)):
        is_flip = np.array_equal(y[i], x[i][..., ::-1])
        is_same = np.array_equal(y[i], x[i])
        assert is_flip != is_same
        flipped.append(is_flip)
    frac = np.mean(flipped)
    assert 0.35 < frac < 0.65


def test_flip_probability_extremes():
    x = unique_batch()
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, 0), x[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, 0), x)
    with pytest.raises(ValueError, match="^p"):
        RandomHorizontalFlip(1.5)


# --- CenterCrop ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "h", "w"), [(3, 7, 9), ((4, 6), 7, 9), ((7, 9), 7, 9), (2, 5, 5)])
def test_center_crop_matches_slice(size, h, w):
    x = unique_batch(h=h, w=w)
    th, tw = (size, size) if isinstance(size, int) else size
    top, left = int(round((h - th) / 2)), int(round((w - tw) / 2))
    y = CenterCrop(size)(x)
    np.testing.assert_array_equal(y, x[:, :, top : top + th, left : left + tw])


def test_center_crop_odd_margin():
    # The window starts at round((H - h) / 2) as in torchvision: H=8, h=3 -> round(2.5) = 2.
    x = unique_batch(h=8, w=8)
    np.testing.assert_array_equal(CenterCrop(3)(x), x[:, :, 2:5, 2:5])
    with pytest.raises(ValueError, match="^size"):
        CenterCrop(9)(x)


# --- Normalize -------------------------------------------------------------------------------


def test_normalize_per_channel():
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 5, 5)).astype(np.float32)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    y = Normalize(mean, std)(x)
    assert y.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(y[:, c], (x[:, c] - mean[c]) / std[c], rtol=1e-6)
    np.testing.assert_allclose(Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25, rtol=1e-6)


def test_normalize_errors():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="^std"):
        Normalize(0.0, 0.0)
    with pytest.raises(ValueError, match="^mean"):
        Normalize([0.1, 0.2], 1.0)(x)


# --- Resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "size"),
    [
        (8, 8, (16, 16)),
        (7, 9, (13, 5)),
        (10, 6, (3, 4)),
        (5, 5, (5, 12)),
        (1, 4, (3, 3)),
        (32, 24, (7, 31)),
        (3, 3, (256, 256)),
    ],
)
def test_resize_matches_torch_interpolate(h, w, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(h * 100 + w).standard_normal((2, 3, h, w))
    y = Resize(size)(x)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=size, mode="bilinear", align_corners=False, antialias=False
    ).numpy()
    assert y.shape == ref.shape
    assert y.dtype == np.float64
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert err <= 1e-10


def test_resize_float32_close_to_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, 1, 9, 11), dtype=np.float32)
    y = Resize((20, 6))(x)
    assert y.dtype == np.float32
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(20, 6), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_resize_int_scales_shorter_side():
    x = np.zeros((1, 3, 20, 30), np.float32)
    assert Resize(10)(x).shape == (1, 3, 10, 15)
    assert Resize(10)(x.transpose(0, 1, 3, 2)).shape == (1, 3, 15, 10)
    assert Resize(256)(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3, 256, 256)
    # A constant image stays constant under interpolation.
    np.testing.assert_allclose(Resize((7, 3))(np.full((1, 1, 4, 4), 0.25)), 0.25)
    with pytest.raises(ValueError, match="^size"):
        Resize(0)
    with pytest.raises(TypeError, match="^size"):
        Resize("big")


# --- Compose ---------------------------------------------------------------------------------


def test_compose_applies_in_order_with_one_generator():
    x = unique_batch(n=8, h=12, w=12)
    pipeline = Compose([Resize(16), RandomCrop(10, padding=1), RandomHorizontalFlip()])
    a = pipeline(x, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    b = RandomHorizontalFlip()(RandomCrop(10, padding=1)(Resize(16)(x), rng), rng)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 2, 10, 10)
    with pytest.raises(TypeError, match="^transforms"):
        Compose([Resize(3), 5])


def test_alexnet_recipe_shapes():
    x = np.random.default_rng(0).random((2, 3, 40, 48), dtype=np.float32)
    y = Compose([Resize(256), RandomCrop(224), RandomHorizontalFlip()])(x, 0)
    assert y.shape == (2, 3, 224, 224)
    assert y.dtype == np.float32
