"""Dataset readers: digits, MNIST IDX files, CIFAR-10 pickles, image folders, dispatch."""

import gzip
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from foldconv.data import cifar10, digits, folder, load_dataset, mnist, read_idx
from foldconv.data import datasets as ds_mod

MNIST10K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist10k"
MNIST_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


# --- digits ----------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_complete():
    from sklearn.datasets import load_digits

    train, test = digits()
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.classes == test.classes == [str(k) for k in range(10)]
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 36))
    # Fixed: a second call gives the very same split.
    train2, test2 = digits()
    np.testing.assert_array_equal(train.images, train2.images)
    np.testing.assert_array_equal(test.labels, test2.labels)
    # Together the two sets are exactly scikit-learn's 1797 samples, each once.
    raw = load_digits()
    ref = np.concatenate([raw.images.reshape(len(raw.images), -1) / 16.0, raw.target[:, None]], 1)
    both = np.concatenate(
        [
            np.concatenate([d.images.reshape(len(d), -1), d.labels[:, None]], 1)
            for d in (train, test)
        ]
    )

    def rows(a):
        return sorted(map(tuple, np.round(a, 6)))

    assert rows(both) == rows(ref)


# --- MNIST -----------------------------------------------------------------------------------


def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, code, arr.ndim) + b"".join(
        struct.pack(">I", d) for d in arr.shape
    )
    return header + arr.tobytes()


def write_mnist(root, n_train=12, n_test=5, size=(28, 28), gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in data.items():
        raw = idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    train, test = mnist(tmp_path)
    assert train.images.shape == (12, 1, 28, 28) and test.images.shape == (5, 1, 28, 28)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    np.testing.assert_allclose(
        train.images[:, 0], data["train-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(test.labels, data["t10k-labels-idx1-ubyte"])
    assert train.classes == [str(k) for k in range(10)]


def test_mnist_gz_and_plain_give_the_same_arrays(tmp_path):
    write_mnist(tmp_path / "gz", gz=True, seed=4)
    write_mnist(tmp_path / "plain", gz=False, seed=4)
    (a, at), (b, bt) = mnist(tmp_path / "gz"), mnist(tmp_path / "plain")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(at.labels, bt.labels)


@pytest.fixture
def mnist10k():
    if not MNIST10K.is_dir():
        pytest.skip(f"real MNIST subset not found at {MNIST10K} (shared/data/mnist10k is absent)")
    return MNIST10K


def test_mnist10k_counts_and_class_counts(mnist10k):
    train, test = mnist(mnist10k)
    assert train.images.shape == (8000, 1, 28, 28)
    assert test.images.shape == (2000, 1, 28, 28)
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    # Class counts stated in shared/data/README.md.
    np.testing.assert_array_equal(
        np.bincount(train.labels), [823, 907, 784, 837, 778, 704, 805, 872, 737, 753]
    )
    np.testing.assert_array_equal(
        np.bincount(test.labels), [178, 220, 207, 195, 202, 159, 209, 198, 207, 225]
    )


def test_mnist10k_uncompressed_copy_reads_the_same(mnist10k, tmp_path):
    for name in MNIST_NAMES:
        (tmp_path / name).write_bytes(gzip.decompress((mnist10k / (name + ".gz")).read_bytes()))
    (a, at), (b, bt) = mnist(mnist10k), mnist(tmp_path)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(at.labels, bt.labels)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("victim", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_mnist_truncated_file_names_the_file(tmp_path, gz, victim):
    write_mnist(tmp_path, gz=gz)
    path = tmp_path / (victim + (".gz" if gz else ""))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - 7])
    with pytest.raises(ValueError, match="truncated") as info:
        mnist(tmp_path)
    assert str(path) in str(info.value)


def test_mnist_truncated_real_file(mnist10k, tmp_path):
    for name in MNIST_NAMES:
        shutil.copy(mnist10k / (name + ".gz"), tmp_path / (name + ".gz"))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated") as info:
        mnist(tmp_path)
    assert str(path) in str(info.value)


def test_mnist_corrupt_files(tmp_path):
    data = write_mnist(tmp_path, gz=False)
    img = tmp_path / "train-images-idx3-ubyte"
    lbl = tmp_path / "train-labels-idx1-ubyte"
    good = img.read_bytes()
    # Bad magic number.
    img.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="magic") as info:
        mnist(tmp_path)
    assert str(img) in str(info.value)
    # A label file where an image file should be (wrong number of dimensions).
    img.write_bytes(lbl.read_bytes())
    with pytest.raises(ValueError, match="dimension") as info:
        mnist(tmp_path)
    assert str(img) in str(info.value)
    # Extra trailing bytes.
    img.write_bytes(good + b"\x00" * 3)
    with pytest.raises(ValueError, match="extra") as info:
        mnist(tmp_path)
    assert str(img) in str(info.value)
    img.write_bytes(good)
    # Fewer labels than images: both counts and the label file are named.
    lbl.write_bytes(idx_bytes(data["train-labels-idx1-ubyte"][:-2]))
    with pytest.raises(ValueError, match="10 labels but") as info:
        mnist(tmp_path)
    assert str(lbl) in str(info.value)
    # Labels beyond 9.
    lbl.write_bytes(idx_bytes(np.full(12, 12)))
    with pytest.raises(ValueError, match="0..9") as info:
        mnist(tmp_path)
    assert str(lbl) in str(info.value)


def test_mnist_not_gzip_despite_name(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match="gzip") as info:
        mnist(tmp_path)
    assert str(path) in str(info.value)


def test_read_idx_dtype_and_shape(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(p), arr)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_mnist_missing_files_message(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path.resolve()) in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "train-labels-idx1-ubyte" not in msg  # present files are not listed
    assert "--download" in msg


def test_mnist_download_unreachable_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setattr(ds_mod, "MNIST_MIRRORS", ["https://127.0.0.1:9/mnist/"])
    with pytest.raises(FileNotFoundError) as info:
        mnist(tmp_path / "mnist", download=True)
    msg = str(info.value)
    assert str((tmp_path / "mnist").resolve()) in msg
    for name in MNIST_NAMES:
        assert name + ".gz" in msg
    assert "download failed" in msg
    assert not any(p.name.endswith(".part") for p in (tmp_path / "mnist").iterdir())


def test_mnist_download_verifies_checksums(tmp_path, monkeypatch):
    # A local "mirror" reached through a file:// URL stands in for the network.
    mirror = tmp_path / "mirror"
    data = write_mnist(mirror, gz=True, seed=9)
    sums = {
        n + ".gz": hashlib.sha256((mirror / (n + ".gz")).read_bytes()).hexdigest()
        for n in MNIST_NAMES
    }
    monkeypatch.setattr(ds_mod, "MNIST_MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(ds_mod, "MNIST_SHA256", sums)
    train, test = mnist(tmp_path / "dest", download=True)
    np.testing.assert_array_equal(train.labels, data["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(sums)

    # A file whose checksum does not match is rejected and not kept.
    bad = dict(sums, **{"t10k-images-idx3-ubyte.gz": "0" * 64})
    monkeypatch.setattr(ds_mod, "MNIST_SHA256", bad)
    with pytest.raises(FileNotFoundError, match="checksum mismatch") as info:
        mnist(tmp_path / "dest2", download=True)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert not (tmp_path / "dest2" / "t10k-images-idx3-ubyte.gz").exists()
    assert (tmp_path / "dest2" / "train-images-idx3-ubyte.gz").exists()


def test_official_checksums_pinned():
    assert set(ds_mod.MNIST_SHA256) == {n + ".gz" for n in MNIST_NAMES}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in ds_mod.MNIST_SHA256.values())
    assert all(m.startswith("https://") for m in ds_mod.MNIST_MIRRORS)


# --- CIFAR-10 --------------------------------------------------------------------------------


def cifar_batch(n, rng, bytes_keys=True):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {"batch_label": "synthetic", "data": data, "labels": labels, "filenames": ["f"] * n}
    if bytes_keys:  # what Python 2's pickles become when read with encoding="bytes"
        d = {k.encode(): v for k, v in d.items()}
    return d


CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
META = {b"label_names": [f"class{k}".encode() for k in range(10)], b"num_vis": 3072}


def write_cifar(root, per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder_ = root / "cifar-10-batches-py"
    folder_.mkdir(parents=True)
    batches = {}
    for i, name in enumerate(CIFAR_NAMES):
        batches[name] = cifar_batch(per_batch + i, rng, bytes_keys=i % 2 == 0)
        (folder_ / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    (folder_ / "batches.meta").write_bytes(pickle.dumps(META, protocol=2))
    return folder_, batches


def get(d, key):
    return d[key.encode()] if key.encode() in d else d[key]


def expected_cifar(batches, names):
    x = np.concatenate([get(batches[n], "data") for n in names]).reshape(-1, 3, 32, 32) / 255.0
    y = np.concatenate([get(batches[n], "labels") for n in names])
    return x, y


def check_cifar(train, test, batches):
    x, y = expected_cifar(batches, CIFAR_NAMES[:5])
    assert train.images.shape == (sum(4 + i for i in range(5)), 3, 32, 32)
    assert train.images.dtype == np.float32
    np.testing.assert_allclose(train.images, x, rtol=1e-6)
    np.testing.assert_array_equal(train.labels, y)
    xt, yt = expected_cifar(batches, ["test_batch"])
    np.testing.assert_allclose(test.images, xt, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, yt)
    assert train.classes == [f"class{k}" for k in range(10)]


def test_cifar10_directory(tmp_path):
    folder_, batches = write_cifar(tmp_path)
    check_cifar(*cifar10(tmp_path), batches)
    check_cifar(*cifar10(folder_), batches)  # the batches directory itself
    # Channel layout: the first 1024 bytes of a row are the red plane, row-major.
    train, _ = cifar10(tmp_path)
    row = get(batches["data_batch_1"], "data")[0]
    assert train.images[0, 0, 1, 2] == np.float32(row[32 + 2] / 255.0)
    assert train.images[0, 2, 31, 31] == np.float32(row[3071] / 255.0)


def make_tar(tmp_path, folder_, name="cifar-10-python.tar.gz"):
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder_, arcname="cifar-10-batches-py")
    return archive


def test_cifar10_tar_gz(tmp_path):
    folder_, batches = write_cifar(tmp_path / "src")
    archive = make_tar(tmp_path / "src", folder_)
    only_archive = tmp_path / "only"
    only_archive.mkdir()
    shutil.move(archive, only_archive / archive.name)
    check_cifar(*cifar10(only_archive), batches)  # directory holding the archive
    check_cifar(*cifar10(only_archive / archive.name), batches)  # the archive path


def test_cifar10_corrupt_batch_names_the_file(tmp_path):
    folder_, _ = write_cifar(tmp_path)
    victim = folder_ / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        cifar10(tmp_path)
    assert str(victim) in str(info.value)


def test_cifar10_wrong_shape_names_the_file(tmp_path):
    folder_, _ = write_cifar(tmp_path)
    victim = folder_ / "test_batch"
    bad = {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}
    victim.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="3072") as info:
        cifar10(tmp_path)
    assert str(victim) in str(info.value)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder_, _ = write_cifar(tmp_path)
    victim = folder_ / "data_batch_1"
    victim.write_bytes(pickle.dumps({b"data": io.BytesIO(b""), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="refusing") as info:
        cifar10(tmp_path)
    assert str(victim) in str(info.value)


def test_cifar10_truncated_archive_names_it(tmp_path):
    folder_, _ = write_cifar(tmp_path / "src", per_batch=40)
    archive = make_tar(tmp_path, folder_)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        cifar10(archive)
    assert str(archive) in str(info.value)


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar10(tmp_path)
    msg = str(info.value)
    assert "cifar-10-python.tar.gz" in msg and "data_batch_1" in msg and str(tmp_path) in msg
    folder_, _ = write_cifar(tmp_path / "x")
    (folder_ / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        cifar10(tmp_path / "x")


# --- image folders ---------------------------------------------------------------------------


def write_png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_folder(root, mode="RGB", size=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == "RGB" else size
    written = {"train": [], "test": []}
    for split, counts in (
        ("train", {"dog": 3, "cat": 2, "emu": 1}),
        ("test", {"cat": 1, "dog": 2}),
    ):
        for cls in sorted(counts):
            for i in range(counts[cls]):
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                write_png(root / split / cls / f"img{i}.png", arr)
                written[split].append((cls, arr))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # skipped: extension
    return written


def test_folder_rgb(tmp_path):
    written = make_folder(tmp_path)
    train, test = folder(tmp_path)
    assert train.classes == test.classes == ["cat", "dog", "emu"]
    assert train.images.shape == (6, 3, 6, 5) and test.images.shape == (3, 3, 6, 5)
    assert train.images.dtype == np.float32
    for ds, split in ((train, "train"), (test, "test")):
        labels = [train.classes.index(c) for c, _ in written[split]]
        np.testing.assert_array_equal(ds.labels, labels)
        expected = np.stack([a.transpose(2, 0, 1) / 255.0 for _, a in written[split]])
        np.testing.assert_allclose(ds.images, expected, rtol=1e-6)


def test_folder_grey_and_resize(tmp_path):
    written = make_folder(tmp_path, mode="L", size=(7, 9))
    train, test = folder(tmp_path)
    assert train.images.shape == (6, 1, 7, 9)
    np.testing.assert_allclose(train.images[0, 0], written["train"][0][1] / 255.0, rtol=1e-6)
    train, test = folder(tmp_path, image_size=(4, 3))
    assert train.images.shape == (6, 1, 4, 3) and test.images.shape == (3, 1, 4, 3)
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


def test_folder_mixed_sizes_need_image_size(tmp_path):
    make_folder(tmp_path)
    odd = tmp_path / "train" / "emu" / "odd.png"
    write_png(odd, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size") as info:
        folder(tmp_path)
    assert "odd.png" in str(info.value)
    train, _ = folder(tmp_path, image_size=8)
    assert train.images.shape == (7, 3, 8, 8)


def test_folder_unreadable_image_names_the_file(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "test" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="unreadable") as info:
        folder(tmp_path)
    assert str(bad) in str(info.value)


def test_folder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        folder(tmp_path)
    make_folder(tmp_path)
    write_png(tmp_path / "test" / "yak" / "a.png", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="yak"):
        folder(tmp_path)


# --- dispatch --------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    train, test = load_dataset("digits")
    assert len(train) == 1437 and len(test) == 360
    write_mnist(tmp_path / "m", n_train=3, n_test=2)
    train, test = load_dataset("MNIST", tmp_path / "m")
    assert len(train) == 3 and len(test) == 2
    make_folder(tmp_path / "f")
    assert len(load_dataset("folder", tmp_path / "f")[0]) == 6
    with pytest.raises(ValueError, match="^data_dir"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="^name") as info:
        load_dataset("imagenet")
    for known in ("digits", "mnist", "cifar10", "folder"):
        assert known in str(info.value)
