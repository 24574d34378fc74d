"""``pad`` / ``pad_backward`` in torch's form against torch.nn.functional.pad (float64) and
finite differences: every mode, negative padding, 1-3 padded dims, unbatched and empty
batches, and the inputs torch rejects."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldconv.functional as fc
from tests.gradcheck import numerical_grad, rel_err

TOL = 1e-10
MODES = ("constant", "reflect", "replicate", "circular")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_pad(torch, x, pad, mode, value=None):
    """torch's result and input gradient for a random output gradient; None if torch errs."""
    xt = torch.tensor(x, requires_grad=True)
    try:
        yt = torch.nn.functional.pad(xt, pad, mode=mode, value=value)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return None
    g = np.random.default_rng(0).standard_normal(tuple(yt.shape))
    if yt.numel():
        yt.backward(torch.tensor(g))
    gx = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    return yt.detach().numpy(), g, gx


def _circular_wraps_past_the_crop(n: int, lo: int, hi: int) -> bool:
    """torch accepts these circular pads but reads memory it never wrote (garbage values)."""
    kept = n - max(-lo, 0) - max(-hi, 0)
    return kept < 0 or (n + lo + hi > 0 and (kept < 1 or max(lo, hi) > kept))


@pytest.mark.parametrize("mode", MODES)
def test_every_1d_pad_against_torch(torch, mode):
    """All (size, low, high) in a grid, negative values included: where we pad, torch gives
    the same values and gradient; where we raise, torch raises too (or, circular only,
    returns values read from uninitialised memory)."""
    rng = np.random.default_rng(1)
    for n in range(1, 6):
        for lo in range(-6, 7):
            for hi in range(-6, 7):
                x = rng.standard_normal((2, 3, n))
                ref = _torch_pad(torch, x, (lo, hi), mode)
                try:
                    y = fc.pad(x, (lo, hi), mode=mode)
                except ValueError as e:
                    assert str(e).startswith("pad: ")
                    assert ref is None or (
                        mode == "circular" and _circular_wraps_past_the_crop(n, lo, hi)
                    ), (n, lo, hi)
                    continue
                assert ref is not None, (mode, n, lo, hi)
                yt, g, gx_t = ref
                assert y.shape == yt.shape and np.array_equal(y, yt), (n, lo, hi)
                gx = fc.pad_backward(g, x.shape, (lo, hi), mode=mode)
                assert rel_err(gx, gx_t) <= TOL, (n, lo, hi)


@st.composite
def pad_cases(draw):
    mode = draw(st.sampled_from(MODES))
    k = draw(st.integers(1, 3))
    if mode == "constant":
        ndim = draw(st.integers(k, 5))
    else:
        ndim = draw(st.sampled_from((k + 1, k + 2)))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim - k)]
    pad = []
    for _ in range(k):
        n = draw(st.integers(1, 5))
        shape.append(n)
        if mode == "reflect":
            lo, hi = draw(st.integers(-n + 1, n - 1)), draw(st.integers(-n + 1, n - 1))
            if n + lo + hi < 1:
                lo, hi = max(lo, 0), max(hi, 0)
        elif mode == "circular":
            lo, hi = draw(st.integers(0, n)), draw(st.integers(0, n))
            if draw(st.booleans()):  # a crop on one side, a wrap no longer than what is left
                crop = draw(st.integers(0, n - 1))
                lo, hi = -crop, min(hi, n - crop)
        elif mode == "replicate":
            lo, hi = draw(st.integers(-n + 1, 4)), draw(st.integers(-n + 1, 4))
            if n + lo + hi < 1:
                lo, hi = max(lo, 0), max(hi, 0)
        else:
            lo, hi = draw(st.integers(-n, 4)), draw(st.integers(-n, 4))
            if n + min(lo, 0) + min(hi, 0) < 0:
                lo, hi = max(lo, 0), max(hi, 0)
        pad = [lo, hi, *pad]  # torch lists the last dim first
    value = draw(st.sampled_from([None, 0.0, -1.5])) if mode == "constant" else None
    return mode, tuple(shape), tuple(pad), value, draw(st.integers(0, 2**31 - 1))


@given(pad_cases())
def test_pad_and_its_gradient_match_torch(torch, case):
    mode, shape, pad, value, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    ref = _torch_pad(torch, x, pad, mode, value)
    assert ref is not None, case
    yt, g, gx_t = ref
    y = fc.pad(x, pad, mode, value)
    assert y.shape == yt.shape and np.array_equal(y, yt), case
    gx = fc.pad_backward(g, x.shape, pad, mode)
    assert gx.shape == x.shape
    assert rel_err(gx, gx_t) <= TOL, case


@pytest.mark.parametrize(
    "mode,shape,pad",
    [
        ("constant", (2, 3, 4), (1, -2)),
        ("constant", (2, 3, 3), (2, 1, -1, 2)),
        ("reflect", (1, 2, 4, 5), (2, -1, 3, 1)),
        ("replicate", (2, 3, 2, 3), (2, 1, 0, 3, 1, 2)),
        ("circular", (2, 2, 4, 3), (-1, 2, 4, 0)),
        ("circular", (2, 3, 3), (3, 3, 2, -1)),
    ],
)
def test_pad_backward_matches_finite_differences(mode, shape, pad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    g = rng.standard_normal(fc.pad(x, pad, mode).shape)
    gx = fc.pad_backward(g, x.shape, pad, mode)
    numeric = numerical_grad(lambda v: float(np.sum(fc.pad(v, pad, mode) * g)), x)
    assert rel_err(gx, numeric) <= 1e-8


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_empty_batch_gives_an_empty_output(torch, mode, k):
    x = np.zeros((0, 2) + (3,) * k)
    pad = (1, 2) * k
    y = fc.pad(x, pad, mode)
    yt = torch.nn.functional.pad(torch.tensor(x), pad, mode=mode)
    assert y.shape == tuple(yt.shape) == (0, 2) + (6,) * k
    assert fc.pad_backward(np.zeros(y.shape), x.shape, pad, mode).shape == x.shape


def test_constant_padding_of_an_empty_dim_and_any_rank(torch):
    for shape, pad in [((2, 0), (1, 1)), ((3,), (2, 0)), ((2, 1, 2, 1, 2), (1,) * 10)]:
        x = np.random.default_rng(0).standard_normal(shape)
        y = fc.pad(x, pad, value=2.0)
        yt = torch.nn.functional.pad(torch.tensor(x), pad, value=2.0)
        assert np.array_equal(y, yt.numpy())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_dtype_is_kept_and_the_result_is_new(mode, dtype):
    x = np.ones((1, 2, 3, 3), dtype=dtype)
    y = fc.pad(x, (1, 1, 1, 1), mode)
    assert y.dtype == dtype
    assert fc.pad_backward(y, x.shape, (1, 1, 1, 1), mode).dtype == dtype
    same = fc.pad(x, (0, 0, 0, 0), mode)
    assert same is not x and np.array_equal(same, x)


def test_the_convolution_pairs_form_is_still_accepted():
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 5))
    # pairs list the first padded dim first, torch's tuple the last dim first
    assert np.array_equal(fc.pad(x, ((1, 2), (0, 3))), fc.pad(x, (0, 3, 1, 2)))
    assert np.array_equal(
        fc.pad(x, ((1, 2), (0, 3)), "reflect"), fc.pad(x, (0, 3, 1, 2), "reflect")
    )


X4 = np.zeros((1, 2, 4, 4))


@pytest.mark.parametrize(
    "args,kwargs,exc,start",
    [
        ((X4, (1, 2, 3)), {}, ValueError, "pad: expected an even number"),
        ((X4, (1,) * 10), {}, ValueError, "pad: expected at most 2 values per dim"),
        ((X4, (1.5, 1)), {}, TypeError, "pad: expected a tuple of ints"),
        ((X4, (True, 1)), {}, TypeError, "pad: expected a tuple of ints"),
        ((X4, 1), {}, TypeError, "pad: expected a tuple of ints"),
        ((X4, (1, 1)), {"mode": "zeros"}, ValueError, "mode: expected one of"),
        ((X4, (1, 1)), {"mode": "mirror"}, ValueError, "mode: expected one of"),
        ((X4, (1, 1)), {"mode": "reflect"}, ValueError, "pad: reflect padding takes"),
        ((X4, (1,) * 8), {"mode": "replicate"}, ValueError, "pad: replicate padding takes"),
        ((X4[0, 0, 0], (1, 1)), {"mode": "circular"}, ValueError, "pad: circular padding takes"),
        ((X4, (4, 0, 0, 0)), {"mode": "reflect"}, ValueError, "pad: reflect padding must be"),
        ((X4, (5, 0, 0, 0)), {"mode": "circular"}, ValueError, "pad: circular padding of more"),
        ((X4, (-4, -1, 0, 0)), {"mode": "replicate"}, ValueError, "pad: (-4, -1) leaves no"),
        ((X4, (-5, 2)), {}, ValueError, r"pad: cropping \(-5, 2\)"),
        ((X4, (1, 1, 1, 1)), {"mode": "reflect", "value": 1.0}, ValueError, "value: padding"),
        ((np.zeros((2, 0, 4)), (1, 1)), {"mode": "reflect"}, ValueError, "input: reflect"),
        ((np.zeros((0, 4)), (1, 1)), {"mode": "replicate"}, ValueError, "input: replicate"),
        ((X4.astype(np.int64), (1, 1)), {}, TypeError, "input: expected a float"),
    ],
)
def test_bad_input_is_named(torch, args, kwargs, exc, start):
    with pytest.raises(exc) as info:
        fc.pad(*args, **kwargs)
    assert str(info.value).startswith(start.replace("\\", "")), str(info.value)
    if args[0].dtype == np.float64:  # torch rejects each of these too
        with pytest.raises((RuntimeError, NotImplementedError, TypeError, ValueError)):
            torch.nn.functional.pad(torch.tensor(args[0]), *args[1:], **kwargs)


def test_pad_backward_checks_grad_output():
    with pytest.raises(ValueError, match=r"^grad_output: expected shape \(1, 2, 4, 6\)"):
        fc.pad_backward(np.zeros((1, 2, 4, 5)), (1, 2, 4, 4), (1, 1))
    with pytest.raises(TypeError, match="^input_shape: expected a tuple of ints"):
        fc.pad_backward(np.zeros((1, 2, 4, 5)), None, (1, 1))
