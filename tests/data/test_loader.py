"""ArrayDataset and DataLoader: batching, shuffling, seeding and resumable epochs."""

import numpy as np
import pytest

from foldconv.data import ArrayDataset, DataLoader
from foldconv.data.transforms import Compose, RandomCrop, RandomHorizontalFlip


def make_dataset(n=103, transform=None):
    """Image i is filled with the value i and has label i % 10, so batches reveal their ids."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 4, 4))
    return ArrayDataset(images.copy(), np.arange(n) % 10, transform=transform)


def ids(x):
    return x[:, 0, 0, 0].astype(np.int64)


def epoch_ids(loader):
    return np.concatenate([ids(x) for x, _ in loader])


# --- ArrayDataset ----------------------------------------------------------------------------


def test_array_dataset_basics():
    ds = make_dataset(20)
    assert len(ds) == 20
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64
    assert ds.classes == [str(k) for k in range(10)]
    assert ds.num_classes == 10 and ds.image_shape == (1, 4, 4)
    x, y = ds[np.array([3, 15])]
    assert x.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(y, [3, 5])


def test_array_dataset_errors():
    with pytest.raises(ValueError, match="^images"):
        ArrayDataset(np.zeros((3, 4, 4), np.float32), np.zeros(3, int))
    with pytest.raises(TypeError, match="^images"):
        ArrayDataset(np.zeros((3, 1, 4, 4), np.uint8), np.zeros(3, int))
    with pytest.raises(ValueError, match="^labels"):
        ArrayDataset(np.zeros((3, 1, 4, 4), np.float32), np.zeros(2, int))
    with pytest.raises(TypeError, match="^labels"):
        ArrayDataset(np.zeros((3, 1, 4, 4), np.float32), np.zeros(3))
    with pytest.raises(ValueError, match="^classes"):
        ArrayDataset(np.zeros((3, 1, 4, 4), np.float32), np.array([0, 1, 5]), classes=["a", "b"])


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "bs", "drop_last"),
    [(103, 10, False), (103, 10, True), (100, 10, True), (5, 8, False), (5, 8, True)],
)
def test_batch_sizes_and_len(n, bs, drop_last):
    loader = DataLoader(make_dataset(n), batch_size=bs, drop_last=drop_last)
    sizes = [len(x) for x, _ in loader]
    full, rest = divmod(n, bs)
    expected = [bs] * full + ([rest] if rest and not drop_last else [])
    assert sizes == expected
    assert len(loader) == len(expected)


def test_batches_are_arrays_with_matching_labels():
    loader = DataLoader(make_dataset(), batch_size=16, shuffle=True, seed=0)
    for x, y in loader:
        assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == (1, 4, 4)
        np.testing.assert_array_equal(y, ids(x) % 10)


def test_no_shuffle_is_in_order():
    np.testing.assert_array_equal(
        epoch_ids(DataLoader(make_dataset(), batch_size=7)), np.arange(103)
    )


def test_every_sample_exactly_once_per_epoch():
    loader = DataLoader(make_dataset(), batch_size=8, shuffle=True, seed=3)
    for _ in range(3):
        seen = epoch_ids(loader)
        assert len(seen) == 103
        np.testing.assert_array_equal(np.sort(seen), np.arange(103))
        assert not np.array_equal(seen, np.arange(103))


def test_drop_last_shuffled_drops_different_samples():
    loader = DataLoader(make_dataset(), batch_size=10, shuffle=True, drop_last=True, seed=1)
    a, b = epoch_ids(loader), epoch_ids(loader)
    assert len(a) == len(b) == 100
    assert len(set(a)) == 100
    assert set(a) != set(b)


# --- seeding and resume ----------------------------------------------------------------------


def test_same_seed_same_order_different_seed_differs():
    ds = make_dataset()
    a = epoch_ids(DataLoader(ds, batch_size=8, shuffle=True, seed=7))
    b = epoch_ids(DataLoader(ds, batch_size=8, shuffle=True, seed=7))
    c = epoch_ids(DataLoader(ds, batch_size=8, shuffle=True, seed=8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_epochs_differ_and_set_epoch_reproduces():
    ds = make_dataset()
    loader = DataLoader(ds, batch_size=8, shuffle=True, seed=11)
    assert loader.epoch == 0
    epochs = [epoch_ids(loader) for _ in range(4)]
    assert loader.epoch == 4
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(epochs[i], epochs[j])
    resumed = DataLoader(ds, batch_size=8, shuffle=True, seed=11)
    resumed.set_epoch(2)
    np.testing.assert_array_equal(epoch_ids(resumed), epochs[2])
    np.testing.assert_array_equal(epoch_ids(resumed), epochs[3])
    # Going back to an epoch reproduces it regardless of what ran since.
    loader.set_epoch(1)
    np.testing.assert_array_equal(epoch_ids(loader), epochs[1])


def test_order_does_not_depend_on_batch_size():
    ds = make_dataset()
    a = epoch_ids(DataLoader(ds, batch_size=8, shuffle=True, seed=2))
    b = epoch_ids(DataLoader(ds, batch_size=50, shuffle=True, seed=2))
    np.testing.assert_array_equal(a, b)


def test_seed_none_draws_a_seed_that_can_be_reused():
    ds = make_dataset()
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    assert isinstance(loader.seed, int)
    again = DataLoader(ds, batch_size=8, shuffle=True, seed=loader.seed)
    np.testing.assert_array_equal(epoch_ids(loader), epoch_ids(again))


def test_random_transforms_resume_exactly():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.random((50, 2, 6, 6), dtype=np.float32), rng.integers(0, 3, 50))
    aug = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])
    full = DataLoader(ds, batch_size=16, shuffle=True, seed=5, transform=aug)
    runs = [[(x.copy(), y.copy()) for x, y in full] for _ in range(3)]
    resumed = DataLoader(ds, batch_size=16, shuffle=True, seed=5, transform=aug)
    resumed.set_epoch(2)
    batches = list(resumed)
    assert len(batches) == len(runs[2]) == 4
    for (x, y), (rx, ry) in zip(batches, runs[2], strict=True):
        assert x.shape[1:] == (2, 4, 4)
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    # Augmentations differ between epochs even without shuffling.
    plain = DataLoader(ds, batch_size=50, seed=5, transform=aug)
    (x0, _), (x1, _) = next(iter(plain)), next(iter(plain))
    assert not np.array_equal(x0, x1)


def test_dataset_transform_used_unless_loader_overrides():
    flip_all = RandomHorizontalFlip(1.0)
    ds = make_dataset(10)
    ds.images[:, :, :, 0] = -1.0  # mark the left column
    ds_t = ArrayDataset(ds.images, ds.labels, transform=flip_all)
    (x, _), *_ = list(DataLoader(ds_t, batch_size=10))
    assert np.all(x[:, :, :, -1] == -1.0)
    (x, _), *_ = list(DataLoader(ds_t, batch_size=10, transform=lambda b, rng: b))
    assert np.all(x[:, :, :, 0] == -1.0)


def test_loader_argument_errors():
    ds = make_dataset(10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="^batch_size"):
            DataLoader(ds, batch_size=bad)
    with pytest.raises(ValueError, match="^seed"):
        DataLoader(ds, seed=-3)
    with pytest.raises(ValueError, match="^epoch"):
        DataLoader(ds).set_epoch(-1)
    with pytest.raises(TypeError, match="^dataset"):
        DataLoader(42)
    with pytest.raises(TypeError, match="^transform"):
        DataLoader(ds, transform=3)
