"""The compiled max-pool kernels (Numba) against their NumPy twin, bit for bit: values,
winning taps, PyTorch's indices and gradients, over many geometries, ties between equal
values and signed zeros, NaN, -inf, dtypes, empty batches, non-contiguous input and any
thread count. (PyTorch and finite differences check both paths in test_pooling.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldconv
from foldconv.functional import pooling_compiled
from foldconv.functional.pooling import max_pool, max_pool_backward
from tests.functional.conv_cases import compiled_and_numpy

pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    foldconv.set_num_threads(None)


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bit patterns: equal bits, not equal values (-0.0 != 0.0, NaN == NaN)."""
    if a.dtype.kind != "f":
        return a
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def _same(fast, plain) -> None:
    if isinstance(fast, tuple):
        assert len(fast) == len(plain)
        for a, b in zip(fast, plain, strict=True):
            _same(a, b)
        return
    assert fast.dtype == plain.dtype and fast.shape == plain.shape
    np.testing.assert_array_equal(_bits(fast), _bits(plain))


def _awkward(rng, shape, dtype, nan: bool = False) -> np.ndarray:
    """Few distinct values (ties in most windows), signed zeros, -inf; NaN if asked."""
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
    x[rng.random(shape) < 0.05] = -np.inf
    if nan:
        x[rng.random(shape) < 0.03] = np.nan
    return x


def _grad(rng, shape, dtype) -> np.ndarray:
    """dy with negative values, signed zeros and non-finite entries (which must reach
    their window's winner only)."""
    g = rng.standard_normal(shape).astype(dtype)
    u = rng.random(shape)
    g[u < 0.05] = -0.0
    g[(u >= 0.05) & (u < 0.08)] = np.inf
    g[(u >= 0.08) & (u < 0.1)] = np.nan
    return g


def _check_both_paths(x, args, rng) -> None:
    """Every output of max_pool and max_pool_backward: compiled == NumPy, bit for bit."""
    assert pooling_compiled.applies(x)
    for mode in (False, True, "argmax"):
        _same(*compiled_and_numpy(lambda mode=mode: max_pool(x, *args, return_indices=mode)))
    y, argmax = max_pool(x, *args, return_indices="argmax")
    _, flat = max_pool(x, *args, return_indices=True)
    g = _grad(rng, y.shape, x.dtype)
    for idx, kind in ((argmax, "argmax"), (flat, "flat")):

        def grad(idx=idx, kind=kind):
            # A window of -inf only (padding included) wins in the padding, whose flat
            # index no backward takes back: both paths must then refuse it alike.
            try:
                with np.errstate(invalid="ignore"):  # inf * 0 in the NumPy path's dy * hit
                    return max_pool_backward(g, idx, x.shape, *args, indices_kind=kind)
            except ValueError as e:
                assert kind == "flat" and np.isneginf(y).any()
                return str(e)

        fast, plain = compiled_and_numpy(grad)
        if isinstance(fast, str) or isinstance(plain, str):
            assert fast == plain
        else:
            _same(fast, plain)


@st.composite
def geometries(draw):
    nd = draw(st.integers(1, 3))
    kmax = 4 if nd < 3 else 3
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
    stride = draw(st.none() | st.tuples(*[st.integers(1, 3)] * nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    sizes = []
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        least = max(1, d * (k - 1) + 1 - 2 * p)
        sizes.append(draw(st.integers(least, least + (7 if nd < 3 else 3))))
    unbatched = draw(st.booleans())
    lead = (draw(st.integers(1, 3)),) if unbatched else (draw(st.integers(1, 2)), 2)
    return lead + tuple(sizes), (kernel, stride, padding, dilation, ceil_mode)


@given(
    case=geometries(),
    dtype=st.sampled_from([np.float32, np.float64]),
    nan=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_compiled_is_the_numpy_path_bit_for_bit(case, dtype, nan, seed):
    shape, args = case
    rng = np.random.default_rng(seed)
    _check_both_paths(_awkward(rng, shape, dtype, nan), args, rng)


# The kernels' specialised windows (2x2 and 3x3, stride 2 or not), each with windows
# inside the input and windows reaching into padding or past the input (ceil_mode).
SPECIALISED = [
    ((3, 4, 28, 28), ((2, 2), 2, 0, 1, False)),  # LeNet's pool1
    ((3, 4, 27, 13), ((2, 2), 2, 0, 1, False)),  # odd sizes: a last row/column no window reads
    ((3, 4, 11, 9), ((2, 2), 2, 1, 1, True)),
    ((3, 4, 10, 10), ((2, 2), 1, 0, 1, False)),
    ((2, 3, 9, 11), ((2, 2), (1, 3), (1, 0), (1, 2), True)),
    ((2, 3, 27, 27), ((3, 3), 2, 0, 1, False)),  # AlexNet's pool2
    ((2, 3, 13, 12), ((3, 3), 2, 1, 1, True)),
    ((2, 3, 12, 13), ((3, 3), 1, 1, 1, False)),
    ((2, 3, 13, 14), ((3, 3), 2, 1, 2, True)),  # stride 2, dilation 2: not specialised
    ((2, 3, 2, 9, 9), ((1, 2, 2), 2, 0, 1, False)),  # 3-d: not specialised
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, args", SPECIALISED)
def test_specialised_windows_are_the_numpy_path(shape, args, dtype):
    rng = np.random.default_rng(len(shape) + shape[-1])
    _check_both_paths(_awkward(rng, shape, dtype), args, rng)
    _check_both_paths(rng.standard_normal(shape).astype(dtype), args, rng)


def test_signed_zero_ties_keep_numpys_choice():
    """np.maximum keeps the later of two equal values (so -0.0 after 0.0 wins the value),
    the winning tap is the first maximal one; with a NaN anywhere, the NumPy path redoes
    every window by PyTorch's rule, which keeps the earlier one: so do the kernels."""
    x = np.array([[[[0.0, -0.0, -0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]]])
    for nan in (False, True):
        xx = np.concatenate([x, np.full_like(x, np.nan if nan else 1.0)], axis=1)
        fast, plain = compiled_and_numpy(lambda xx=xx: max_pool(xx, (2, 2), return_indices=True))
        _same(fast, plain)
        assert list(np.signbit(fast[0][0, 0, 0])) == ([False, True] if nan else [True, False])
        _same(*compiled_and_numpy(lambda xx=xx: max_pool(xx, (2, 2))))


def test_nan_propagates_as_the_numpy_path():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 9))
    x[0, 1, 4, 4] = np.nan  # inside several overlapping windows
    x[1, 2, 0, 0] = np.nan
    x[1, 2, 0, 1] = -np.nan  # two NaNs in one window: whose bits win matters
    _check_both_paths(x, ((3, 3), 2, 1, 1, True), rng)
    y = max_pool(x, 3, 2, 1, dims=2)
    assert np.isnan(y[0, 1, 2, 2]) and np.isnan(y[0]).sum() == 1


def test_windows_of_minus_inf_and_padding_only():
    """A window of -inf only gives -inf and its first tap (padding, or the first -inf);
    a window made only of padding (dilation on a tiny input) likewise."""
    rng = np.random.default_rng(6)
    x = np.full((2, 2, 5, 5), -np.inf)
    x[0, 0, 2, 2] = 1.0
    _check_both_paths(x, ((3, 3), 2, 1, 1, True), rng)
    tiny = rng.standard_normal((1, 2, 1, 3))  # rows -1 and 1 only: all padding
    args = ((2, 2), 1, 1, 2, False)
    _check_both_paths(tiny, args, rng)
    y, argmax = max_pool(tiny, *args, return_indices="argmax")
    assert np.isneginf(y).all() and (argmax == 0).all()


def test_empty_batch_and_non_contiguous_input():
    rng = np.random.default_rng(8)
    for shape in ((0, 3, 8, 8), (0, 2, 7)):
        x = np.zeros(shape)
        nd = len(shape) - 2
        args = ((2,) * nd, 2, 0, 1, True)
        _check_both_paths(x, args, rng)
        y, argmax = max_pool(x, *args, return_indices="argmax")
        assert y.shape[0] == 0
    base = _awkward(rng, (4, 9, 12, 3), np.float32)
    for x in (base.transpose(0, 3, 1, 2), base[::2, ..., ::-1].transpose(0, 3, 2, 1)):
        assert not x.flags.c_contiguous
        _check_both_paths(x, ((3, 3), 2, 1, 1, True), rng)
        _same(max_pool(x, (2, 2)), max_pool(np.ascontiguousarray(x), (2, 2)))


def test_float16_is_pooled_in_float32_on_both_paths():
    rng = np.random.default_rng(10)
    x = _awkward(rng, (2, 3, 9, 9), np.float16)
    _same(*compiled_and_numpy(lambda: max_pool(x, (3, 3), 2, 1, return_indices=True)))
    y, argmax = max_pool(x, (3, 3), 2, 1, return_indices="argmax")
    assert y.dtype == np.float16
    g = rng.standard_normal(y.shape).astype(np.float16)
    got = compiled_and_numpy(lambda: max_pool_backward(g, argmax, x.shape, (3, 3), 2, 1))
    _same(*got)
    assert got[0].dtype == np.float16


def test_the_kernels_run_when_they_apply(monkeypatch):
    calls = []
    for name in ("max_pool", "max_pool_backward"):
        real = getattr(pooling_compiled, name)

        def spy(*args, real=real, name=name, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(pooling_compiled, name, spy)
    x = np.ones((1, 2, 4, 4), np.float32)
    y, argmax = max_pool(x, (2, 2), return_indices="argmax")
    max_pool_backward(y, argmax, x.shape, (2, 2))
    assert calls == ["max_pool", "max_pool_backward"]
    previous = foldconv.set_compiled(False)
    try:
        max_pool(x, (2, 2))
    finally:
        foldconv.set_compiled(previous)
    assert calls == ["max_pool", "max_pool_backward"]


@pytest.mark.parametrize(
    "shape, args",
    [
        ((4, 16, 24, 24), ((2, 2), 2, 0, 1, False)),  # disjoint windows
        ((4, 16, 23, 23), ((3, 3), 2, 1, 1, True)),  # overlapping windows
        ((4, 16, 6, 7, 7), ((2, 3, 2), 1, 1, 1, False)),
    ],
)
def test_results_do_not_depend_on_the_thread_count(monkeypatch, shape, args):
    monkeypatch.setattr(pooling_compiled, "_PARALLEL_BYTES", 0)  # blocks even when small
    rng = np.random.default_rng(12)
    x = _awkward(rng, shape, np.float32)
    y0, _ = max_pool(x, *args, return_indices="argmax")
    g = _grad(rng, y0.shape, np.float32)
    runs = []
    for n in (1, 2, 3):
        foldconv.set_num_threads(n)
        y, argmax = max_pool(x, *args, return_indices="argmax")
        with np.errstate(invalid="ignore"):
            dx = max_pool_backward(g, argmax, shape, *args)
        runs.append((y, argmax, max_pool(x, *args), dx))
    for other in runs[1:]:
        _same(runs[0], other)
    foldconv.set_num_threads(1)
    previous = foldconv.set_compiled(False)
    try:
        y, argmax = max_pool(x, *args, return_indices="argmax")
        with np.errstate(invalid="ignore"):
            plain = (y, argmax, max_pool(x, *args), max_pool_backward(g, argmax, shape, *args))
    finally:
        foldconv.set_compiled(previous)
    _same(runs[0], plain)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(
    "kernel, stride, dtype, bad",
    [
        ((2, 2), 2, np.uint8, 4),  # disjoint windows
        ((3, 3), 2, np.uint8, 9),  # overlapping windows
        ((3, 3), 2, np.int64, -1),
        ((2, 2), 1, np.uint16, 200),
    ],
)
def test_taps_outside_the_window_are_refused(compiled, kernel, stride, dtype, bad):
    x = np.random.default_rng(13).standard_normal((2, 3, 9, 9))
    y, argmax = max_pool(x, kernel, stride, return_indices="argmax")
    argmax = argmax.astype(dtype)
    argmax[1, 2, 0, 0] = bad
    previous = foldconv.set_compiled(compiled)
    try:
        with pytest.raises(ValueError, match=r"^indices: expected winning-tap indices in \[0, "):
            max_pool_backward(y, argmax, x.shape, kernel, stride)
    finally:
        foldconv.set_compiled(previous)
