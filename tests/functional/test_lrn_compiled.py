"""The compiled LRN kernels (Numba) against their NumPy twin, PyTorch and finite
differences; results independent of the thread count."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import lrn_compiled, threads
from foldconv.functional.lrn import local_response_norm, local_response_norm_backward
from tests.functional.conv_cases import compiled_and_numpy
from tests.gradcheck import directional_check, numerical_grad, rel_err

pytest.importorskip("numba")

# (shape, size, alpha, beta, k)
CASES = {
    "alexnet": ((3, 9, 5, 4), 5, 5e-4, 0.75, 2.0),
    "strong": ((2, 8, 3, 3), 3, 1.5, 0.75, 1.0),
    "size_even": ((2, 7, 3, 2), 4, 0.3, 0.75, 1.5),
    "size_1": ((1, 4, 2, 3), 1, 0.5, 0.75, 1.0),
    "size_2": ((2, 5, 7), 2, 0.5, 0.75, 1.0),
    "size_over_channels": ((2, 3, 4), 12, 0.8, 0.75, 0.7),
    "size_twice_channels_even": ((2, 4, 3, 2), 8, 0.8, 0.75, 0.7),
    "one_channel": ((2, 1, 6), 3, 0.8, 0.75, 1.0),
    "3d_input": ((2, 5, 6), 3, 0.2, 0.75, 1.0),
    "5d_input": ((1, 6, 2, 2, 3), 5, 0.4, 0.75, 1.0),
    # more positions than a tile (lrn_compiled._TILE): three tiles, the last one short
    "tiles": ((2, 6, 2 * lrn_compiled._TILE + 5), 5, 0.4, 0.75, 1.0),
    "empty_batch": ((0, 4, 3, 3), 5, 1e-2, 0.75, 1.0),
    "empty_positions": ((2, 4, 0, 3), 3, 1e-2, 0.75, 1.0),
    # other exponents take pow, NumPy's and Numba's (see test_other_betas_within_an_ulp)
    "beta_0.6": ((2, 7, 3, 2), 4, 0.3, 0.6, 1.5),
    "beta_1.2": ((2, 3, 4), 12, 0.8, 1.2, 0.7),
    "beta_0.5": ((1, 6, 2, 2, 3), 5, 0.4, 0.5, 1.0),
}
BITWISE = [name for name, case in CASES.items() if case[3] == 0.75]
OTHER = [name for name in CASES if name not in BITWISE]


def _data(shape, dtype, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    return x, rng.standard_normal(shape).astype(dtype)


def _both(x, g, size, alpha, beta, k):
    """(y, s, p, dx with the cache, dx without it) from the compiled kernels and the twin."""

    def run():
        y, (s, p) = local_response_norm(x, size, alpha, beta, k, return_cache=True)
        dx = local_response_norm_backward(g, x, size, alpha, beta, k, cache=(s, p))
        dx_fresh = local_response_norm_backward(g, x, size, alpha, beta, k)
        return y, s, p, dx, dx_fresh

    return compiled_and_numpy(run)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", BITWISE)
def test_compiled_is_the_numpy_twin_to_the_last_bit(name, dtype):
    """beta = 0.75: the same operations in the same order, so the same bits."""
    shape, size, alpha, beta, k = CASES[name]
    x, g = _data(shape, dtype, seed=len(name))
    fast, plain = _both(x, g, size, alpha, beta, k)
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == dtype and a.shape == shape
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast[3], fast[4])  # the recomputed cache is the same


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OTHER)
def test_other_betas_within_an_ulp(name, dtype):
    """Other betas: s is bitwise the same; s^(-beta) comes from two libm-quality pows
    (NumPy's, Numba's), at most an ulp or two apart, and y and dx follow it."""
    shape, size, alpha, beta, k = CASES[name]
    x, g = _data(shape, dtype, seed=len(name))
    (y, s, p, dx, dx2), (y0, s0, p0, dx0, _) = _both(x, g, size, alpha, beta, k)
    eps = np.finfo(dtype).eps
    np.testing.assert_array_equal(s, s0)
    assert np.max(np.abs(p - p0) / p0) <= 2 * eps
    assert rel_err(y, y0) <= 4 * eps
    assert rel_err(dx, dx0) <= 16 * eps
    np.testing.assert_array_equal(dx, dx2)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_both_paths_match_torch_float64(name, compiled):
    torch = pytest.importorskip("torch")
    shape, size, alpha, beta, k = CASES[name]
    x, g = _data(shape, np.float64, seed=7)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    yt.backward(torch.tensor(g))
    previous = foldconv.set_compiled(compiled)
    try:
        y, cache = local_response_norm(x, size, alpha, beta, k, return_cache=True)
        dx = local_response_norm_backward(g, x, size, alpha, beta, k, cache=cache)
    finally:
        foldconv.set_compiled(previous)
    assert rel_err(y, yt.detach().numpy()) <= 1e-10
    assert rel_err(dx, xt.grad.numpy()) <= 1e-10


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_both_paths_match_torch_float32(name, compiled):
    """float32 against torch's float32 on the same data: the existing float32 LRN
    tolerance (1e-6) for y, 1e-5 for the gradient (a difference of two rounded terms, as
    in the compiled depthwise tests)."""
    torch = pytest.importorskip("torch")
    shape, size, alpha, beta, k = CASES[name]
    x, g = _data(shape, np.float32, seed=8)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    yt.backward(torch.tensor(g))
    previous = foldconv.set_compiled(compiled)
    try:
        y = local_response_norm(x, size, alpha, beta, k)
        dx = local_response_norm_backward(g, x, size, alpha, beta, k)
    finally:
        foldconv.set_compiled(previous)
    assert y.dtype == dx.dtype == np.float32
    assert rel_err(y, yt.detach().numpy()) <= 1e-6
    assert rel_err(dx, xt.grad.numpy()) <= 1e-5


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", ["alexnet", "size_even", "size_over_channels", "beta_0.6"])
def test_both_paths_finite_differences(name, compiled):
    shape, size, alpha, beta, k = CASES[name]
    x, w = _data(shape, np.float64, seed=9, scale=1.0)
    previous = foldconv.set_compiled(compiled)
    try:
        analytic = local_response_norm_backward(w, x, size, alpha, beta, k)

        def f(z):
            return float(np.sum(local_response_norm(z, size, alpha, beta, k) * w))

        assert rel_err(analytic, numerical_grad(f, x)) <= 1e-7
        assert directional_check(f, x, analytic, np.random.default_rng(10)) <= 1e-7
    finally:
        foldconv.set_compiled(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_the_thread_count(dtype):
    shape, size, alpha, beta, k = (5, 11, 6, 7), 5, 5e-4, 0.75, 2.0
    x, g = _data(shape, dtype, seed=11, scale=10.0)
    adaptive = threads.set_adaptive(False)
    results = []
    try:
        for n in (1, 2, 3, 8):
            foldconv.set_num_threads(n)
            y, cache = local_response_norm(x, size, alpha, beta, k, return_cache=True)
            results.append((y, *cache, local_response_norm_backward(g, x, size, alpha, beta, k)))
    finally:
        foldconv.set_num_threads(None)
        threads.set_adaptive(adaptive)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_float16_and_strided_inputs_take_the_kernels():
    """float16 is computed in float32 (and cast back); a non-contiguous input is copied."""
    x, g = _data((2, 6, 5, 4), np.float32, seed=12)
    for xin, gin in [
        (x.astype(np.float16), g.astype(np.float16)),
        (x.transpose(0, 1, 3, 2), g.transpose(0, 1, 3, 2)),
        (x[:, ::2], g[:, ::2]),
    ]:
        fast, plain = _both(xin, gin, 5, 0.3, 0.75, 1.0)
        assert fast[0].dtype == xin.dtype and fast[3].dtype == xin.dtype
        for a, b in zip(fast, plain, strict=True):
            np.testing.assert_array_equal(a, b)


def test_zero_scale_gives_torchs_nan_and_no_error():
    """k = 0 and an all-zero window: s = 0, s^(-0.75) = inf, y = 0 · inf = NaN, as in
    torch (0 / 0); the kernels divide by zero as NumPy does (no ZeroDivisionError)."""
    torch = pytest.importorskip("torch")
    x, g = _data((2, 6, 3, 3), np.float64, seed=13)
    x[0, :, 1, 1] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # the twin's NumPy passes warn
        fast, plain = _both(x, g, 3, 0.5, 0.75, 0.0)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_array_equal(a, b)  # NaNs in the same places
    y, s, p = fast[:3]
    assert np.all(s[0, :, 1, 1] == 0) and np.all(np.isposinf(p[0, :, 1, 1]))
    yt = torch.nn.functional.local_response_norm(torch.tensor(x), 3, 0.5, 0.75, 0.0).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    finite = ~np.isnan(y)
    assert rel_err(y[finite], yt[finite]) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neg_power_075_error_bound(dtype):
    """The twin's (and the kernels') s^(-0.75) = 1 / (sqrt(s) · sqrt(sqrt(s))): four
    correctly rounded operations, of which the first counts 1.5 times, so a relative error
    of at most 4.5 half-epsilons (2.25 eps), against the exact power over s from 1e-30 to
    1e30 and at the ends of the range; and the special values come out as the power's."""
    from foldconv.functional.lrn import _neg_power

    rng = np.random.default_rng(14)
    s = (10.0 ** rng.uniform(-30, 30, 20000)).astype(dtype)
    info = np.finfo(dtype)
    s = np.concatenate([s, np.array([info.tiny, info.smallest_subnormal, info.max], dtype)])
    got = _neg_power(s, 0.75, True).astype(np.float64)
    if dtype == np.float32:
        ref = s.astype(np.float64) ** -0.75
    else:  # float64's reference: from extended precision
        ref = (s.astype(np.longdouble) ** np.longdouble(-0.75)).astype(np.float64)
    assert np.max(np.abs(got - ref) / ref) <= 2.25 * np.finfo(dtype).eps
    edge = np.array([0.0, -0.0, np.inf, -1.0, np.nan], dtype=dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(_neg_power(edge, 0.75, True), np.power(edge, dtype(-0.75)))


@pytest.mark.parametrize("compiled", [True, False])
def test_minus_infinite_scale_follows_power(compiled):
    """alpha < 0 (or k = -inf) can make s = -inf, where power gives s^(-0.75) = 0 and
    torch's y = x / (-inf)^0.75 = 0: the square-root form (NaN there) is not used."""
    torch = pytest.importorskip("torch")
    x = np.array([[[1e200, 1.0], [2.0, 3.0], [0.5, 4.0]]])
    previous = foldconv.set_compiled(compiled)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            y, (s, _) = local_response_norm(x, 2, -1.0, 0.75, 1.0, return_cache=True)
    finally:
        foldconv.set_compiled(previous)
    assert np.isneginf(s[0, 0, 0])
    yt = torch.nn.functional.local_response_norm(torch.tensor(x), 2, -1.0, 0.75, 1.0).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    finite = ~np.isnan(y)
    assert rel_err(y[finite], yt[finite]) <= 1e-12
