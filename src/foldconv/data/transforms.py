"""Batch transforms: vectorised operations on image batches of shape (N, C, H, W).

Every transform is a callable ``t(x, rng=None) -> y`` on a floating batch ``x`` of shape
``(N, C, H, W)``. Random transforms draw from ``rng`` (a :class:`numpy.random.Generator`, an
int seed, or None for fresh OS entropy); deterministic ones ignore it.
:class:`~foldconv.data.DataLoader` hands each batch a Generator derived from
``(seed, epoch, batch index)``, so an interrupted run that resumes at epoch ``e`` sees exactly
the same augmented batches.

The random draws are made with NumPy on the host and moved to the batch's array module, so the
transforms also run on CuPy batches.

AlexNet's training recipe (Krizhevsky et al., 2012, section 4.1) is::

    Compose([Resize(256), RandomCrop(224), RandomHorizontalFlip()])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from foldconv.backend import get_array_module

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "Transform",
    "as_generator",
]

Transform = Callable[..., Any]
"""Any callable ``t(x, rng=None)`` mapping an (N, C, H, W) batch to a batch."""


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from ``rng``: a Generator as is, an int as a seed, None for fresh entropy."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}"
    )


def _check_batch(x: Any) -> None:
    if not hasattr(x, "ndim") or x.ndim != 4:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"x: expected a 4-D batch (N, C, H, W), got shape {shape}")
    if x.dtype.kind != "f":
        raise TypeError(
            f"x: expected a floating batch (float16/32/64), got dtype {x.dtype}; "
            "scale integer images to [0, 1] first"
        )


def _pair(value: Any, name: str) -> tuple[int, int]:
    """``value`` as (h, w) positive ints; an int means a square."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}: expected an int or a pair of ints (h, w), got {value!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name}: expected positive sizes, got {value!r}")
    return pair


class Compose:
    """Apply transforms in order, passing the same Generator to each.

    Parameters
    ----------
    transforms : sequence of callables ``t(x, rng=None)``
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(
                    f"transforms: expected callables, got {type(t).__name__} at position {i}"
                )
        self.transforms = transforms

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Apply every transform to the batch ``x`` of shape (N, C, H, W)."""
        gen = as_generator(rng)
        for t in self.transforms:
            x = t(x, gen)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Normalize:
    """Per-channel standardisation ``y[:, c] = (x[:, c] - mean[c]) / std[c]``.

    Parameters
    ----------
    mean, std : float or sequence of C floats
        A scalar applies to every channel; ``std`` must be positive.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1:
            raise ValueError(f"mean: expected a scalar or a 1-D sequence, got {mean!r}")
        if self.std.ndim != 1:
            raise ValueError(f"std: expected a scalar or a 1-D sequence, got {std!r}")
        if not np.all(self.std > 0):
            raise ValueError(f"std: expected positive values, got {std!r}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(
                f"std: expected as many values as mean ({len(self.mean)}), got {len(self.std)}"
            )

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Return the normalised batch, same shape (N, C, H, W) and dtype as ``x``."""
        _check_batch(x)
        xp = get_array_module(x)
        c = x.shape[1]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, c):
                raise ValueError(
                    f"{name}: expected 1 or {c} values for a batch with {c} channels, got {len(v)}"
                )
        mean = xp.asarray(np.broadcast_to(self.mean, (c,)).reshape(1, c, 1, 1), dtype=x.dtype)
        std = xp.asarray(np.broadcast_to(self.std, (c,)).reshape(1, c, 1, 1), dtype=x.dtype)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Crop each image at its own random offset, after optional zero padding.

    Parameters
    ----------
    size : int or (h, w)
        Output spatial size.
    padding : int or (pad_h, pad_w), default 0
        Zeros added on each side (top and bottom get ``pad_h``, left and right ``pad_w``)
        before cropping, as in the CIFAR recipe ``RandomCrop(32, padding=4)``.

    Notes
    -----
    For a padded image of size (Hp, Wp) the offsets are uniform over ``0..Hp-h`` and
    ``0..Wp-w``, drawn independently per image.
    """

    def __init__(self, size: int | tuple[int, int], padding: int | tuple[int, int] = 0) -> None:
        self.size = _pair(size, "size")
        if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
            pad = (int(padding), int(padding))
        elif (
            isinstance(padding, Sequence)
            and len(padding) == 2
            and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in padding)
        ):
            pad = (int(padding[0]), int(padding[1]))
        else:
            raise TypeError(f"padding: expected an int or a pair of ints, got {padding!r}")
        if pad[0] < 0 or pad[1] < 0:
            raise ValueError(f"padding: expected non-negative ints, got {padding!r}")
        self.padding = pad

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Return the batch of crops, shape (N, C, h, w)."""
        _check_batch(x)
        xp = get_array_module(x)
        gen = as_generator(rng)
        n, c, height, width = x.shape
        ph, pw = self.padding
        h, w = self.size
        hp, wp = height + 2 * ph, width + 2 * pw
        if h > hp or w > wp:
            raise ValueError(
                f"size: expected at most the padded image size ({hp}, {wp}), got ({h}, {w})"
            )
        if ph or pw:
            x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        top = gen.integers(0, hp - h + 1, size=n)
        left = gen.integers(0, wp - w + 1, size=n)
        # One gather for the whole batch: rows[i] = top[i] + 0..h-1, cols[i] = left[i] + 0..w-1.
        rows = xp.asarray(top[:, None] + np.arange(h)[None, :])
        cols = xp.asarray(left[:, None] + np.arange(w)[None, :])
        batch = xp.arange(n)[:, None, None, None]
        chan = xp.arange(c)[None, :, None, None]
        return x[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``, independently per image.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Return a new batch (N, C, H, W) with the chosen images flipped along W."""
        _check_batch(x)
        xp = get_array_module(x)
        gen = as_generator(rng)
        flip = xp.asarray(gen.random(x.shape[0]) < self.p)
        return xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class CenterCrop:
    """Crop the central (h, w) window of every image.

    Parameters
    ----------
    size : int or (h, w)

    Notes
    -----
    The top-left corner is ``(round((H - h) / 2), round((W - w) / 2))`` with Python's rounding,
    as torchvision does.
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _pair(size, "size")

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Return the central crops, shape (N, C, h, w)."""
        _check_batch(x)
        height, width = x.shape[2:]
        h, w = self.size
        if h > height or w > width:
            raise ValueError(
                f"size: expected at most the image size ({height}, {width}), got ({h}, {w})"
            )
        top = int(round((height - h) / 2.0))
        left = int(round((width - w) / 2.0))
        return x[:, :, top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for one axis of a bilinear resize.

    Half-pixel centres (``align_corners=False``): output pixel ``d`` samples the input at
    ``s = max((d + 0.5) * in_size / out_size - 0.5, 0)``, between ``i0 = floor(s)`` and
    ``i1 = min(i0 + 1, in_size - 1)`` with weights ``1 - (s - i0)`` and ``s - i0``
    (the formula of PyTorch's ``upsample_bilinear2d`` without antialiasing).
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


class Resize:
    """Bilinear resize of every image (half-pixel centres, no antialiasing).

    Parameters
    ----------
    size : int or (h, w)
        ``(h, w)``: the exact output size. An int: the shorter side becomes ``size`` and the
        longer side keeps the aspect ratio, ``int(size * long / short)`` (torchvision's rule);
        a square image becomes ``size x size``.

    Notes
    -----
    Matches ``torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear",
    align_corners=False, antialias=False)``. The interpolation is separable, so it is done as
    two gathers with precomputed index and weight arrays (rows, then columns), computed in the
    batch's dtype with float64 weights for float64 batches. Downscaling by large factors aliases,
    as it does in PyTorch without ``antialias``.
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            if size <= 0:
                raise ValueError(f"size: expected a positive int, got {size!r}")
            self.size: int | tuple[int, int] = int(size)
        else:
            self.size = _pair(size, "size")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) that an (height, width) image is resized to."""
        if isinstance(self.size, tuple):
            return self.size
        s = self.size
        if height <= width:
            return s, int(s * width / height)
        return int(s * height / width), s

    def __call__(self, x: Any, rng: np.random.Generator | int | None = None) -> Any:
        """Return the resized batch, shape (N, C, h, w), same dtype as ``x``."""
        _check_batch(x)
        xp = get_array_module(x)
        height, width = x.shape[2:]
        h, w = self.output_size(height, width)
        if (h, w) == (height, width):
            return x.copy()
        r0, r1, wr = _bilinear_taps(height, h)
        c0, c1, wc = _bilinear_taps(width, w)
        wr = xp.asarray(wr, dtype=x.dtype)[:, None]
        wc = xp.asarray(wc, dtype=x.dtype)
        r0, r1, c0, c1 = (xp.asarray(a) for a in (r0, r1, c0, c1))
        rows = x[:, :, r0, :] * (1 - wr) + x[:, :, r1, :] * wr
        return rows[..., c0] * (1 - wc) + rows[..., c1] * wc

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"
