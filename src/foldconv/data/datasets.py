"""Datasets: each loader returns ``(train, test)`` as two :class:`ArrayDataset` objects.

- :func:`digits`: scikit-learn's bundled 8x8 handwritten digits (no download, the default).
- :func:`mnist`: the standard IDX files, gzipped or not; optional download with checksums.
- :func:`cifar10`: the python-pickle batches, from a directory or the ``.tar.gz`` archive.
- :func:`folder`: class-per-subdirectory image files (``train/`` and ``test/``) via Pillow.
- :func:`load_dataset`: dispatch by name.

Images are float32 in [0, 1], shape (N, C, H, W); labels int64, shape (N,).
Corrupt or truncated files raise :class:`ValueError` naming the file and what is wrong;
missing files raise :class:`FileNotFoundError` saying which files to put where.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.data.loader import ArrayDataset

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "cifar10",
    "digits",
    "folder",
    "load_dataset",
    "load_image",
    "mnist",
    "read_idx",
]

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

DIGITS_TEST_PER_CLASS = 36


def _digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of the fixed stratified split of the 1797 digits.

    Within each class, samples are ordered by the key ``(i * 2654435761) mod 2**32`` of their
    index ``i`` (Knuth's multiplicative hash: a fixed pseudo-random order that, unlike a
    Generator's stream, can never change with the NumPy version); the first 36 of each class go
    to the test set. Both sets are returned in increasing index order.
    """
    idx = np.arange(len(labels), dtype=np.int64)
    key = (idx * 2654435761) % (1 << 32)
    test = []
    for k in np.unique(labels):
        members = idx[labels == k]
        order = np.argsort(key[members], kind="stable")
        test.append(members[order[:DIGITS_TEST_PER_CLASS]])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    return idx[train_mask], test_idx


def digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's bundled 8x8 handwritten digits, with a fixed train/test split.

    The 1797 images (grey levels 0..16, divided by 16 into [0, 1]) are split, stratified, into
    1437 training and 360 test images: 36 test images per class, chosen by a fixed hash of the
    sample index (see ``_digits_split``), so the split is identical on every machine and
    NumPy version. Nothing is downloaded: the data ships with scikit-learn.

    Returns
    -------
    train : ArrayDataset, images (1437, 1, 8, 8) float32, labels (1437,) int64
    test : ArrayDataset, images (360, 1, 8, 8) float32, labels (360,) int64
        Classes ``["0", ..., "9"]``.
    """
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("digits: scikit-learn is needed for its bundled digits data") from e
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    images = images[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = _digits_split(labels)
    classes = [str(k) for k in range(10)]
    return (
        ArrayDataset(images[train_idx], labels[train_idx], classes=classes),
        ArrayDataset(images[test_idx], labels[test_idx], classes=classes),
    )


# --------------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------------

MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "train images",
    "train-labels-idx1-ubyte": "train labels",
    "t10k-images-idx3-ubyte": "test images",
    "t10k-labels-idx1-ubyte": "test labels",
}
"""The four MNIST files (each may also be gzipped, with a ``.gz`` suffix)."""

MNIST_MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
"""Public HTTPS mirrors of the original gzipped MNIST files, tried in order."""

MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}
"""SHA-256 of the official gzipped MNIST files (their MD5s are f68b3c2d..., d53e105e...,
9fb629c4..., ec29112d..., the values torchvision checks)."""

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The contents of ``path``, gunzipped when its name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        # EOFError: the gzip stream stops early (a truncated download);
        # OSError/BadGzipFile and zlib.error: not gzip, or damaged data.
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def read_idx(path: PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Parameters
    ----------
    path : path to the file; a name ending in ``.gz`` is gunzipped
    ndim : int, optional
        Expected number of dimensions (3 for images, 1 for labels).

    Returns
    -------
    ndarray with the dimensions from the header, in the stored dtype (uint8 for MNIST).

    Raises
    ------
    ValueError
        Naming ``path``: bad magic number, unexpected dimensions, truncated data or extra
        trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, no complete header")
    zero, code, nd = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000 then a type code such as 0x08 and the number of dimensions)"
        )
    if ndim is not None and nd != ndim:
        raise ValueError(
            f"{path}: expected an IDX file with {ndim} dimension(s), "
            f"got {nd} (magic number 0x{data[:4].hex()})"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(data)} bytes, expected {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise ValueError(
            f"{path}: truncated IDX file: header says shape {dims} ({expected} data bytes), "
            f"only {got} bytes follow"
        )
    if got > expected:
        raise ValueError(
            f"{path}: corrupt IDX file: header says shape {dims} ({expected} data bytes), "
            f"but {got - expected} extra bytes follow"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header, count=expected // dtype.itemsize)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def _missing_message(dataset: str, root: Path, files: Sequence[str], hint: str) -> str:
    listing = "\n".join(f"  {root / f}" for f in files)
    return f"{dataset}: missing files; put these files in {root}:\n{listing}\n{hint}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str | None, timeout: float = 30.0) -> None:
    """Fetch ``url`` into ``dest`` atomically, checking its SHA-256; raise on any failure."""
    import urllib.request  # noqa: PLC0415

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        if sha256 is not None:
            got = _sha256(tmp)
            if got != sha256:
                raise ValueError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _download_files(
    dataset: str,
    root: Path,
    names: Sequence[str],
    mirrors: Sequence[str],
    checksums: dict[str, str],
    manual_hint: str,
) -> None:
    """Fetch each of ``names`` from the first mirror that serves it with the right checksum."""
    from urllib.error import HTTPError, URLError  # noqa: PLC0415

    failures: list[str] = []
    missing: list[str] = []
    unreachable: set[str] = set()
    for name in names:
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            if mirror in unreachable:
                errors.append(f"{url}: skipped, the mirror was unreachable")
                continue
            try:
                _download(url, root / name, checksums.get(name))
                break
            except Exception as e:  # network errors, HTTP errors, checksum mismatch, disk
                errors.append(f"{url}: {e}")
                # A mirror that cannot be reached at all (no network, DNS, timeout) is not
                # retried for the next files, so an offline machine fails fast.
                if isinstance(e, (URLError, TimeoutError)) and not isinstance(e, HTTPError):
                    unreachable.add(mirror)
        else:
            missing.append(name)
            failures.extend(errors)
    if missing:
        detail = "\n".join(f"  {f}" for f in failures)
        msg = _missing_message(
            dataset,
            root,
            missing,
            f"The download failed (no network, or no mirror answered):\n{detail}\n{manual_hint}",
        )
        raise FileNotFoundError(msg)


def _find_mnist_file(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def mnist(root: PathLike, download: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST from the four standard IDX files in ``root``, gzipped or not.

    Parameters
    ----------
    root : directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each possibly with a
        ``.gz`` suffix (an uncompressed file is used when both exist).
    download : bool, default False
        Fetch the missing files (gzipped) over HTTPS from :data:`MNIST_MIRRORS` into ``root``,
        verifying the official SHA-256 checksums (:data:`MNIST_SHA256`) before keeping them.

    Returns
    -------
    train, test : ArrayDataset
        Images (N, 1, H, W) float32 in [0, 1] (bytes / 255; H = W = 28 for MNIST), labels (N,)
        int64; classes ``["0", ..., "9"]``. Any number of images is accepted (the 8,000/2,000
        subset in ``shared/data/mnist10k`` reads as is).

    Raises
    ------
    FileNotFoundError
        Files missing (and not downloadable): the message lists which files go in which
        directory and mentions ``download=True`` / ``--download``.
    ValueError
        A corrupt or truncated file (the message names it), image and label counts that
        differ, labels outside 0..9, or train and test images of different sizes.
    """
    root = Path(root).expanduser().resolve()
    hint = (
        f"Download them from {MNIST_MIRRORS[0]} and put them in {root} (gzipped or "
        "uncompressed without .gz), or pass download=True (--download on the command line)."
    )
    found = {name: _find_mnist_file(root, name) for name in MNIST_FILES}
    missing = [name for name, p in found.items() if p is None]
    if missing and download:
        _download_files(
            "mnist",
            root,
            [name + ".gz" for name in missing],
            MNIST_MIRRORS,
            MNIST_SHA256,
            f"Put the files in {root} by hand (gzipped or not) and run again.",
        )
        found = {name: _find_mnist_file(root, name) for name in MNIST_FILES}
        missing = [name for name, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(_missing_message("mnist", root, [m + ".gz" for m in missing], hint))

    def load(prefix: str) -> ArrayDataset:
        img_path = found[f"{prefix}-images-idx3-ubyte"]
        lbl_path = found[f"{prefix}-labels-idx1-ubyte"]
        assert img_path is not None and lbl_path is not None
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lbl_path, ndim=1)
        if images.dtype != np.uint8:
            raise ValueError(f"{img_path}: expected unsigned bytes (type 0x08), got {images.dtype}")
        if labels.dtype != np.uint8:
            raise ValueError(f"{lbl_path}: expected unsigned bytes (type 0x08), got {labels.dtype}")
        if len(images) != len(labels):
            raise ValueError(
                f"{lbl_path}: holds {len(labels)} labels but {img_path} holds "
                f"{len(images)} images; the counts must match"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{lbl_path}: labels must be digits 0..9, found {labels.max()}")
        x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
        return ArrayDataset(x, labels.astype(np.int64), classes=[str(k) for k in range(10)])

    train, test = load("train"), load("t10k")
    if train.image_shape != test.image_shape:
        raise ValueError(
            f"{root}: train images are {train.image_shape[1:]} but test images are "
            f"{test.image_shape[1:]}"
        )
    return train, test


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# --------------------------------------------------------------------------------------------

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_URLS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR10_SHA256: dict[str, str] = {}
"""No SHA-256 is pinned for the archive: downloads are checked by reading them (structure,
shapes and counts), and by the MD5 below."""
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

# The only globals a CIFAR pickle needs: numpy's array reconstruction (numpy 1 and 2 names).
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array globals: a data file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from damaged bytes
        raise ValueError(f"{where}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles read with encoding="latin1" give str keys; bytes keys are accepted too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, where)
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{where}: expected keys 'data' and 'labels', got {sorted(d)}")
    try:
        x = np.asarray(d["data"])
        y = np.asarray(d["labels"])
    except Exception as e:
        raise ValueError(f"{where}: unreadable 'data' or 'labels' ({e})") from e
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{where}: expected 'data' of uint8 with shape (N, 3072), "
            f"got {x.dtype} with shape {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(
            f"{where}: expected {len(x)} integer labels, got {y.dtype} with shape {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels must be in 0..9, found {y.min()}..{y.max()}")
    # Each row is the red plane, then green, then blue, each 32x32 in row-major order.
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _cifar_classes(data: bytes, where: str) -> list[str]:
    d = _unpickle(data, where)
    names = d.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise ValueError(f"{where}: expected 'label_names', a list of 10 names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


class _CifarSource:
    """Reads the CIFAR-10 batch files from a directory or from the tar.gz archive."""

    def __init__(self, root: Path) -> None:
        self.archive: Path | None = None
        self.directory: Path | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._tar: tarfile.TarFile | None = None
        if root.is_file():
            self.archive = root
        elif (root / CIFAR10_DIR).is_dir():
            self.directory = root / CIFAR10_DIR
        elif (root / CIFAR10_TEST).is_file() or (root / CIFAR10_TRAIN[0]).is_file():
            self.directory = root
        elif (root / CIFAR10_ARCHIVE).is_file():
            self.archive = root / CIFAR10_ARCHIVE

    def __enter__(self) -> _CifarSource:
        if self.archive is not None:
            try:
                self._tar = tarfile.open(self.archive, "r:*")
                members = self._tar.getmembers()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise ValueError(f"{self.archive}: corrupt or truncated archive ({e})") from e
            # Accept the files at any depth (normally under cifar-10-batches-py/).
            for m in members:
                if m.isfile():
                    self._members.setdefault(m.name.rsplit("/", 1)[-1], m)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()

    def where(self, name: str) -> str:
        if self.archive is not None:
            m = self._members.get(name)
            return f"{self.archive}:{m.name if m else name}"
        assert self.directory is not None
        return str(self.directory / name)

    def has(self, name: str) -> bool:
        if self.archive is not None:
            return name in self._members
        assert self.directory is not None
        return (self.directory / name).is_file()

    def read(self, name: str) -> bytes:
        if self.archive is None:
            assert self.directory is not None
            return (self.directory / name).read_bytes()
        assert self._tar is not None
        try:
            f = self._tar.extractfile(self._members[name])
            assert f is not None
            return f.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"{self.where(name)}: corrupt or truncated archive member ({e})"
            ) from e


def cifar10(root: PathLike, download: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 from the standard python-pickle batches.

    Parameters
    ----------
    root : path
        One of: a directory containing ``cifar-10-batches-py/``; that directory itself (holding
        ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``); a directory
        containing ``cifar-10-python.tar.gz``; or the path of that archive. The archive is read
        in memory with :mod:`tarfile`, nothing is extracted to disk.
    download : bool, default False
        If nothing is found, fetch ``cifar-10-python.tar.gz`` (163 MB) into ``root`` over HTTPS
        and check its MD5 (``c58f3010...``, the value torchvision checks).

    Returns
    -------
    train : ArrayDataset, images (50000, 3, 32, 32) float32 in [0, 1] for the full data
    test : ArrayDataset, images (10000, 3, 32, 32)
        Labels int64; classes from ``batches.meta`` (the ten standard names if it is absent).

    Notes
    -----
    The pickles are read with a restricted unpickler that only resolves NumPy's array
    reconstruction functions, so a tampered file raises an error instead of running code.

    Raises
    ------
    FileNotFoundError
        The batches are not found: the message says which files to put where.
    ValueError
        A corrupt or truncated batch or archive; the message names the file.
    """
    root = Path(root).expanduser().resolve()
    needed = [*CIFAR10_TRAIN, CIFAR10_TEST]
    src = _CifarSource(root)
    if src.archive is None and src.directory is None:
        if download:
            _download_cifar(root)
            src = _CifarSource(root)
        if src.archive is None and src.directory is None:
            raise FileNotFoundError(
                f"cifar10: no data in {root}; put either {root / CIFAR10_ARCHIVE} "
                f"or the directory {root / CIFAR10_DIR} holding "
                f"{', '.join(needed)} and {CIFAR10_META} "
                f"(from https://www.cs.toronto.edu/~kriz/{CIFAR10_ARCHIVE}), "
                "or pass download=True (--download on the command line)"
            )
    with src:
        absent = [n for n in needed if not src.has(n)]
        if absent:
            place = src.archive or src.directory
            raise FileNotFoundError(
                f"cifar10: {place} lacks {', '.join(absent)}; it needs "
                f"{', '.join(needed)} and {CIFAR10_META}"
            )
        parts = [_cifar_batch(src.read(n), src.where(n)) for n in CIFAR10_TRAIN]
        x_test, y_test = _cifar_batch(src.read(CIFAR10_TEST), src.where(CIFAR10_TEST))
        classes = (
            _cifar_classes(src.read(CIFAR10_META), src.where(CIFAR10_META))
            if src.has(CIFAR10_META)
            else list(CIFAR10_CLASSES)
        )
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])

    def scale(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / np.float32(255.0)

    return (
        ArrayDataset(scale(x_train), y_train, classes=classes),
        ArrayDataset(scale(x_test), y_test, classes=classes),
    )


def _download_cifar(root: Path) -> None:
    hint = (
        f"Put {CIFAR10_ARCHIVE} (from https://www.cs.toronto.edu/~kriz/) in {root} and run again."
    )
    _download_files("cifar10", root, [CIFAR10_ARCHIVE], CIFAR10_URLS, CIFAR10_SHA256, hint)
    path = root / CIFAR10_ARCHIVE
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != CIFAR10_MD5:
        path.unlink()
        raise ValueError(
            f"{path}: checksum mismatch (md5 {h.hexdigest()}, expected {CIFAR10_MD5}); "
            "the file was removed"
        )


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def load_image(
    path: PathLike, mode: str = "RGB", size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Read one image file with Pillow as a float32 array in [0, 1].

    Parameters
    ----------
    path : image file
    mode : ``"RGB"`` (3 channels) or ``"L"`` (1 channel, grey)
    size : int or (h, w), optional
        Resize (bilinear, Pillow) to this size; an int means a square.

    Returns
    -------
    ndarray, shape (C, H, W), float32

    Raises
    ------
    ValueError
        The file is not a readable image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode: expected 'RGB' or 'L', got {mode!r}")
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from e
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if (img.height, img.width) != (h, w):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _image_mode(path: Path) -> str:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as img:
            return img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from e


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(
            f"folder: {split_dir} has no class subdirectories; expected {split_dir}/<class>/*.png"
        )
    return {
        c: sorted(
            p
            for p in (split_dir / c).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        for c in classes
    }


def folder(
    root: PathLike, image_size: int | tuple[int, int] | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    """Images in class-per-subdirectory folders, read with Pillow.

    Layout::

        root/train/<class_a>/*.png|jpg|...
        root/train/<class_b>/...
        root/test/<class_a>/...
        root/test/<class_b>/...

    Class names are the sorted subdirectory names of ``root/train`` (label ``k`` is the
    ``k``-th); ``root/test`` may lack some classes but must not add new ones. Files are read in
    sorted order; hidden files and files without an image extension are skipped.

    Parameters
    ----------
    root : directory with ``train/`` and ``test/`` subdirectories
    image_size : int or (h, w), optional
        Resize every image (bilinear, Pillow) to this size. Without it all images must already
        have the same size.

    Returns
    -------
    train, test : ArrayDataset
        Images (N, C, H, W) float32 in [0, 1]: C = 1 when every image is greyscale, otherwise
        C = 3 (all images converted to RGB, alpha dropped).

    Raises
    ------
    FileNotFoundError
        ``root``, ``train/`` or ``test/`` missing, or a split without any image.
    ValueError
        An unreadable image (named), unknown test classes, or differing sizes without
        ``image_size``.
    """
    root = Path(root).expanduser().resolve()
    if image_size is not None:
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            size: tuple[int, int] | None = (image_size, image_size)
        elif (
            isinstance(image_size, Sequence)
            and len(image_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in image_size)
        ):
            size = (int(image_size[0]), int(image_size[1]))
        else:
            raise TypeError(f"image_size: expected an int or (h, w), got {image_size!r}")
        if min(size) <= 0:
            raise ValueError(f"image_size: expected positive sizes, got {image_size!r}")
    else:
        size = None
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"folder: expected {root / sub} holding one subdirectory of images per class "
                f"(layout root/train/<class>/*.png and root/test/<class>/*.png)"
            )
    splits = {sub: _list_split(root / sub) for sub in ("train", "test")}
    classes = list(splits["train"])
    extra = sorted(set(splits["test"]) - set(classes))
    if extra:
        raise ValueError(
            f"folder: {root / 'test'} has classes not in {root / 'train'}: {', '.join(extra)}"
        )
    files = {
        sub: [(p, classes.index(c)) for c, paths in splits[sub].items() for p in paths]
        for sub in splits
    }
    for sub, items in files.items():
        if not items:
            raise FileNotFoundError(f"folder: no image files under {root / sub}")
    grey = all(_image_mode(p) in _GREY_MODES for items in files.values() for p, _ in items)
    mode = "L" if grey else "RGB"

    def load(items: list[tuple[Path, int]]) -> ArrayDataset:
        arrays = []
        for p, _ in items:
            a = load_image(p, mode=mode, size=size)
            if arrays and a.shape != arrays[0].shape:
                raise ValueError(
                    f"{p}: image size {a.shape[1:]} differs from {arrays[0].shape[1:]} of "
                    f"{items[0][0]}; pass image_size to resize all images"
                )
            arrays.append(a)
        labels = np.array([k for _, k in items], dtype=np.int64)
        return ArrayDataset(np.stack(arrays), labels, classes=classes)

    train, test = load(files["train"]), load(files["test"])
    if train.image_shape != test.image_shape:
        raise ValueError(
            f"folder: train images are {train.image_shape[1:]} but test images are "
            f"{test.image_shape[1:]}; pass image_size to resize all images"
        )
    return train, test


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------

DATASETS = ("digits", "mnist", "cifar10", "folder")
_DEFAULT_DIRS = {"mnist": Path("data") / "mnist", "cifar10": Path("data") / "cifar10"}


def load_dataset(
    name: str, data_dir: PathLike | None = None, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a dataset by name.

    Parameters
    ----------
    name : ``"digits"``, ``"mnist"``, ``"cifar10"`` or ``"folder"`` (case-insensitive)
    data_dir : path, optional
        Where the files are (ignored by ``digits``). Defaults: ``data/mnist`` and
        ``data/cifar10`` relative to the working directory; ``folder`` requires it.
    download : bool, default False
        Let ``mnist`` and ``cifar10`` fetch missing files.

    Returns
    -------
    train, test : ArrayDataset
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return digits()
    if key == "folder":
        if data_dir is None:
            raise ValueError(
                "data_dir: the 'folder' dataset needs a directory holding train/<class>/ and "
                "test/<class>/ image folders, got None"
            )
        return folder(data_dir)
    if key in _DEFAULT_DIRS:
        root = Path(data_dir) if data_dir is not None else _DEFAULT_DIRS[key]
        if key == "mnist":
            return mnist(root, download=download)
        return cifar10(root, download=download)
    raise ValueError(f"name: expected one of {', '.join(DATASETS)}, got {name!r}")
