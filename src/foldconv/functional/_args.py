"""Argument checking and the geometry of a convolution.

Every public function validates its arguments here first, so that bad input gets a
ValueError or TypeError naming the argument, what was expected and what came, and
the numerical code below can assume consistent shapes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from foldconv.backend import get_array_module

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(a: Any, name: str) -> Any:
    """``a`` as a float16/32/64 array of its own module; TypeError for anything else."""
    if a is None:
        raise TypeError(f"{name}: expected a float array, got None")
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        try:
            a = np.asarray(a)
        except Exception:
            raise TypeError(f"{name}: expected a float array, got {type(a).__name__}") from None
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a float16, float32 or float64 array, got dtype {a.dtype}"
        )
    return a


def check_same_dtype(reference_name: str, reference: Any, **others: Any) -> None:
    for name, a in others.items():
        if a is not None and a.dtype != reference.dtype:
            raise TypeError(
                f"{name}: expected dtype {reference.dtype} (the dtype of {reference_name}), "
                f"got {a.dtype}; {reference_name} and {name} must share one dtype (cast "
                f"{reference_name} with .astype, or a layer's parameters with .to(dtype=...))"
            )


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32 (and the result cast back)."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def array_module(*arrays: Any):
    return get_array_module(*arrays)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}") from None


def int_tuple(value: Any, ndim: int, name: str, *, minimum: int) -> tuple[int, ...]:
    """An int or a length-``ndim`` sequence of ints, each >= ``minimum``, as a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim:
            raise ValueError(
                f"{name}: expected an int or a sequence of {ndim} ints, got {tuple(value)!r}"
            )
        out = tuple(_as_int(v, name) for v in value)
    else:
        out = (_as_int(value, name),) * ndim
    if any(v < minimum for v in out):
        what = "positive ints" if minimum == 1 else f"ints >= {minimum}"
        raise ValueError(f"{name}: expected {what}, got {out if ndim > 1 else out[0]!r}")
    return out


Pads = tuple[tuple[int, int], ...]


def parse_padding(padding: Any, ndim: int, *, allow_strings: bool = True) -> str | Pads:
    """Normalise ``padding`` to per-dimension (low, high) pairs, or 'same'.

    Accepted: an int; a sequence of ``ndim`` ints; a sequence of ``ndim`` (low, high)
    pairs (ints and pairs may be mixed); 'valid'; 'same' (resolved later, when the
    input size is known).
    """
    if isinstance(padding, str):
        if not allow_strings:
            raise ValueError(
                f"padding: expected an int, ints or (low, high) pairs here, got {padding!r}"
            )
        if padding == "valid":
            return ((0, 0),) * ndim
        if padding == "same":
            return "same"
        raise ValueError(f"padding: expected 'same', 'valid', an int or pairs, got {padding!r}")
    if isinstance(padding, Sequence):
        if len(padding) != ndim:
            raise ValueError(
                f"padding: expected an int, {ndim} ints or {ndim} (low, high) pairs, "
                f"got {padding!r}"
            )
        pairs = []
        for p in padding:
            if isinstance(p, Sequence) and not isinstance(p, str):
                if len(p) != 2:
                    raise ValueError(f"padding: expected (low, high) pairs, got {padding!r}")
                pairs.append((_as_int(p[0], "padding"), _as_int(p[1], "padding")))
            else:
                v = _as_int(p, "padding")
                pairs.append((v, v))
        out = tuple(pairs)
    else:
        v = _as_int(padding, "padding")
        out = ((v, v),) * ndim
    if any(lo < 0 or hi < 0 for lo, hi in out):
        raise ValueError(f"padding: expected non-negative amounts, got {padding!r}")
    return out


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' rule, valid at any stride: out = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one N-d convolution, batched, with the padding resolved.

    The convolution reads a padded input of spatial shape ``padded_shape`` at
    positions ``o * stride + t * dilation`` for output position ``o`` and kernel tap
    ``t``; ``out_shape`` is given explicitly so that a transposed convolution can ask
    for fewer outputs than the padded input would allow.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: Pads
    out_shape: tuple[int, ...]
    padding_mode: str = "zeros"

    @property
    def ndim(self) -> int:
        return len(self.kernel)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.in_shape, self.pads, strict=True))

    @property
    def kernel_size(self) -> int:
        return math.prod(self.kernel)


def check_padding_mode(padding_mode: Any, name: str = "padding_mode") -> str:
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(
            f"{name}: expected one of {', '.join(map(repr, PADDING_MODES))}, got {padding_mode!r}"
        )
    return padding_mode


def check_mode_fits(pads: Pads, in_shape: tuple[int, ...], mode: str) -> None:
    """reflect needs pad < size (no edge repeat), circular needs pad <= size (one wrap)."""
    for d, ((lo, hi), n) in enumerate(zip(pads, in_shape, strict=True)):
        if mode == "reflect" and (lo >= n or hi >= n) and (lo or hi):
            raise ValueError(
                f"padding: reflect padding must be smaller than the input size {n} "
                f"in spatial dim {d}, got ({lo}, {hi})"
            )
        if mode == "circular" and (lo > n or hi > n):
            raise ValueError(
                f"padding: circular padding must not exceed the input size {n} "
                f"in spatial dim {d}, got ({lo}, {hi})"
            )


def split_batch(x: Any, ndim: int, name: str = "x") -> tuple[Any, bool]:
    """Add a batch axis to unbatched (C, *spatial) input; returns (array, was_unbatched)."""
    if x.ndim == ndim + 2:
        return x, False
    if x.ndim == ndim + 1:
        return x[None], True
    raise ValueError(
        f"{name}: expected a {ndim + 2}-d (N, C, *spatial) or {ndim + 1}-d (C, *spatial) "
        f"array for a {ndim}-d convolution, got shape {tuple(x.shape)}"
    )


def check_weight_rank(weight: Any) -> int:
    if weight.ndim not in (3, 4, 5):
        raise ValueError(
            "weight: expected a 3-d, 4-d or 5-d array (C_out, C_in/groups, *kernel), "
            f"got shape {tuple(weight.shape)}"
        )
    if any(k <= 0 for k in weight.shape[2:]):
        raise ValueError(
            f"weight: expected a positive kernel size, got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        # PyTorch rejects a weight without filters (C_out = 0 for a convolution, C_in = 0
        # for a transposed one) rather than returning an empty result.
        raise ValueError(
            f"weight: expected at least one channel in dimension 0, got shape {tuple(weight.shape)}"
        )
    return weight.ndim - 2


def check_nonempty_input(x_shape: tuple[int, ...], name: str = "x") -> None:
    """A batch of 0 is valid (an empty result); zero channels or a zero-length spatial
    dimension are not (PyTorch rejects them too, for a non-empty batch)."""
    if x_shape[1] == 0:
        raise ValueError(
            f"{name}: expected at least one channel (dimension 1 of (N, C, *spatial)), got "
            f"shape {tuple(x_shape)}"
        )
    if x_shape[0] and any(s == 0 for s in x_shape[2:]):
        raise ValueError(
            f"{name}: expected non-zero spatial sizes (only the batch may be 0), got shape "
            f"{tuple(x_shape)}"
        )


def check_groups(groups: Any, in_channels: int, out_channels: int) -> int:
    g = _as_int(groups, "groups")
    if g < 1 or in_channels % g or out_channels % g:
        raise ValueError(
            f"groups: expected a positive int dividing in_channels={in_channels} and "
            f"out_channels={out_channels}, got {groups!r}"
        )
    return g


def _check_extent(padded: tuple[int, ...], kernel, dilation, what: str) -> None:
    for d, (p, k, dil) in enumerate(zip(padded, kernel, dilation, strict=True)):
        extent = dil * (k - 1) + 1
        if extent > p:
            raise ValueError(
                f"weight: the kernel's extent dilation*(k-1)+1 = {extent} in spatial dim {d} "
                f"exceeds the {what} size {p}"
            )


# Geometries already resolved, by their arguments: a layer asks for the same one every
# call (LeNet-5's step: 4 calls, ~15 us each to validate and resolve again).
_GEOMETRIES: dict[tuple, ConvGeometry] = {}
_GEOMETRIES_MAX = 1024


def _plain(v: Any) -> bool:
    """An int or str, or a tuple of them or of tuples of ints, exactly: such arguments key
    the cache (a bool, float or NumPy integer would compare equal to an int and skip
    validation). Two levels cover every form a convolution's arguments take."""
    t = type(v)
    if t is int or t is str:
        return True
    if t is not tuple:
        return False
    for e in v:
        te = type(e)
        if te is tuple:
            for f in e:
                if type(f) is not int:
                    return False
        elif te is not int and te is not str:
            return False
    return True


def conv_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: Any,
) -> ConvGeometry:
    """Validate a convolution's arguments (x batched) and resolve its shapes."""
    key = (tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups, padding_mode)
    plain = all(_plain(v) for v in key)
    if plain:
        g = _GEOMETRIES.get(key)
        if g is not None:
            return g
    g = _resolve_geometry(x_shape, w_shape, stride, padding, dilation, groups, padding_mode)
    if plain:
        if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = g
    return g


def _resolve_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: Any,
) -> ConvGeometry:
    ndim = len(w_shape) - 2
    check_nonempty_input(x_shape)
    n, c_in, *in_shape = x_shape
    c_out, c_in_per_group, *kernel = w_shape
    g = check_groups(groups, c_in, c_out)
    if c_in_per_group * g != c_in:
        raise ValueError(
            f"weight: expected shape (C_out, C_in/groups = {c_in // g}, *kernel) for an input "
            f"x with {c_in} channels and groups={g}, got weight shape {tuple(w_shape)}"
        )
    stride = int_tuple(stride, ndim, "stride", minimum=1)
    dilation = int_tuple(dilation, ndim, "dilation", minimum=1)
    mode = check_padding_mode(padding_mode)
    pads = parse_padding(padding, ndim)
    if pads == "same":
        pads = tuple(
            same_padding(s, k, st, dl)
            for s, k, st, dl in zip(in_shape, kernel, stride, dilation, strict=True)
        )
    if mode != "zeros":
        check_mode_fits(pads, tuple(in_shape), mode)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(in_shape, pads, strict=True))
    _check_extent(padded, kernel, dilation, "padded input")
    out_shape = tuple(
        (p - dl * (k - 1) - 1) // st + 1
        for p, k, st, dl in zip(padded, kernel, stride, dilation, strict=True)
    )
    return ConvGeometry(
        batch=n,
        in_channels=c_in,
        out_channels=c_out,
        groups=g,
        in_shape=tuple(in_shape),
        kernel=tuple(kernel),
        stride=stride,
        dilation=dilation,
        pads=pads,
        out_shape=out_shape,
        padding_mode=mode,
    )


def conv_transpose_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    padding: Any,
    output_padding: Any,
    groups: Any,
    dilation: Any,
) -> ConvGeometry:
    """The geometry of the convolution whose input gradient this transposed convolution is.

    A transposed convolution of x (N, C_in, *in) with weight (C_in, C_out/groups, *k)
    maps to a convolution from (N, C_out, *out) to (N, C_in, *in), with
    out = (in - 1) * stride - (low + high) + dilation * (k - 1) + output_padding + 1.
    """
    ndim = len(w_shape) - 2
    check_nonempty_input(x_shape)
    n, c_in, *in_shape = x_shape
    w_in, c_out_per_group, *kernel = w_shape
    if c_out_per_group == 0:
        raise ValueError(
            f"weight: expected at least one output channel per group (dimension 1 of "
            f"(C_in, C_out/groups, *kernel)), got shape {tuple(w_shape)}"
        )
    if w_in != c_in:
        raise ValueError(
            f"weight: expected shape (C_in = {c_in}, C_out/groups, *kernel) for an input x with "
            f"{c_in} channels, got weight shape {tuple(w_shape)}"
        )
    g = _as_int(groups, "groups")
    if g < 1 or c_in % g:
        raise ValueError(
            f"groups: expected a positive int dividing in_channels={c_in}, got {groups!r}"
        )
    c_out = c_out_per_group * g
    stride = int_tuple(stride, ndim, "stride", minimum=1)
    dilation = int_tuple(dilation, ndim, "dilation", minimum=1)
    pads = parse_padding(padding, ndim)
    if pads == "same":
        raise ValueError(
            "padding: 'same' is not defined for a transposed convolution; "
            "give explicit padding (and output_padding)"
        )
    output_padding = int_tuple(output_padding, ndim, "output_padding", minimum=0)
    for d, (op, st, dl) in enumerate(zip(output_padding, stride, dilation, strict=True)):
        if op >= st and op >= dl:
            raise ValueError(
                f"output_padding: expected a value smaller than stride ({st}) or dilation ({dl}) "
                f"in spatial dim {d}, got {op}"
            )
    out_shape = tuple(
        (i - 1) * st - (lo + hi) + dl * (k - 1) + op + 1
        for i, st, (lo, hi), dl, k, op in zip(
            in_shape, stride, pads, dilation, kernel, output_padding, strict=True
        )
    )
    if any(o <= 0 for o in out_shape):
        raise ValueError(
            f"padding: the output size {out_shape} of this transposed convolution is not "
            f"positive for input size {tuple(in_shape)}, kernel {tuple(kernel)}, "
            f"padding {pads}"
        )
    return ConvGeometry(
        batch=n,
        in_channels=c_out,
        out_channels=c_in,
        groups=g,
        in_shape=out_shape,
        kernel=tuple(kernel),
        stride=stride,
        dilation=dilation,
        pads=pads,
        out_shape=tuple(in_shape),
    )


def check_grad_output(grad_output: Any, expected: tuple[int, ...], name: str = "grad_output"):
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape {tuple(expected)} (the output's shape), "
            f"got {tuple(grad_output.shape)}"
        )


def check_bias(bias: Any, channels: int) -> None:
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(
            f"bias: expected shape ({channels},) (one per output channel), got {tuple(bias.shape)}"
        )
