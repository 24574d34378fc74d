"""``interpolate`` / ``interpolate_backward`` against torch.nn.functional.interpolate in
float64 and float64 finite differences: nearest, nearest-exact, linear, bilinear, trilinear,
align_corners, size vs scale_factor, recompute_scale_factor, empty batches, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldconv.functional as fc
from tests.gradcheck import directional_check, numerical_grad, rel_err

TOL = 1e-10
LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_interp(torch, x, g_rng, **kw):
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yt = torch.nn.functional.interpolate(xt, **kw)
    g = g_rng.standard_normal(tuple(yt.shape))
    if yt.numel():
        yt.backward(torch.tensor(g))
    gx = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    return yt.detach().numpy(), g, gx


def _torch_grad_is_not_its_forwards(x, mode, size, scale_factor, recompute):
    """torch 2.13's nearest backward copies (out == in) or halves (out == 2 in) the index in
    1-d and 3-d, where its forward applies floor(o / scale): the two disagree there."""
    dims = x.ndim - 2
    if mode != "nearest" or dims == 2 or size is not None or recompute:
        return False
    factors = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * dims
    return any(int(n * f) in (n, 2 * n) for n, f in zip(x.shape[2:], factors, strict=True))


@st.composite
def cases(draw):
    dims = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["nearest", "nearest-exact", LINEAR[dims]]))
    top = {1: 9, 2: 7, 3: 5}[dims]
    spatial = tuple(draw(st.integers(1, top)) for _ in range(dims))
    align = None if mode.startswith("nearest") else draw(st.booleans())
    if draw(st.booleans()):
        size = tuple(draw(st.integers(1, 2 * top)) for _ in range(dims))
        if draw(st.booleans()) and len(set(size)) == 1:
            size = size[0]
        scale, recompute = None, None
    else:
        size = None
        scale = tuple(
            draw(st.sampled_from([0.5, 0.7, 1.0, 1.3, 1.5, 2.0, 2.5, 3.0, 1.05, 2.05, 0.33]))
            for _ in range(dims)
        )
        if draw(st.booleans()) and len(set(scale)) == 1:
            scale = scale[0]
        recompute = draw(st.sampled_from([None, False, True]))
    return dims, mode, spatial, align, size, scale, recompute, draw(st.integers(0, 2**31 - 1))


@given(cases())
def test_interpolate_and_its_gradient_match_torch(torch, case):
    dims, mode, spatial, align, size, scale, recompute, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3) + spatial)
    kw = dict(
        size=size,
        scale_factor=scale,
        mode=mode,
        align_corners=align,
        recompute_scale_factor=recompute,
    )
    try:
        yt, g, gx_t = _torch_interp(torch, x, rng, **kw)
    except RuntimeError:  # an output size of 0: an error for both
        with pytest.raises(ValueError, match="^scale_factor: expected output sizes greater"):
            fc.interpolate(x, **kw)
        return
    y = fc.interpolate(x, **kw)
    assert y.shape == yt.shape
    assert rel_err(y, yt) <= TOL, case
    gx = fc.interpolate_backward(g, x.shape, **kw)
    if _torch_grad_is_not_its_forwards(x, mode, size, scale, recompute):
        f = lambda v: float(np.sum(fc.interpolate(v, **kw) * g))  # noqa: E731
        assert directional_check(f, x, gx, rng) <= 1e-8, case
    else:
        assert rel_err(gx, gx_t) <= TOL, case


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "linear", "linear-ac"])
@pytest.mark.parametrize("how", ["size", "scale"])
def test_backward_matches_finite_differences(dims, mode, how):
    rng = np.random.default_rng(dims)
    x = rng.standard_normal((1, 2) + (3, 4, 2)[:dims])
    kw = {"mode": mode}
    if mode.startswith("linear"):
        kw = {"mode": LINEAR[dims], "align_corners": mode == "linear-ac"}
    if how == "size":
        kw["size"] = (5, 3, 4)[:dims]
    else:
        kw["scale_factor"] = (1.7, 0.6, 2.0)[:dims]  # 2.0 on a 2: the halving rule
    y = fc.interpolate(x, **kw)
    g = rng.standard_normal(y.shape)
    gx = fc.interpolate_backward(g, x.shape, **kw)
    numeric = numerical_grad(lambda v: float(np.sum(fc.interpolate(v, **kw) * g)), x)
    assert rel_err(gx, numeric) <= 1e-8


def test_scale_factor_and_the_equivalent_size_differ_as_in_torch(torch):
    """With a scale factor the kernel maps by 1 / scale, with a size by in / out."""
    x = np.arange(5.0).reshape(1, 1, 5)
    by_scale = fc.interpolate(x, scale_factor=1.7, mode="linear")
    by_size = fc.interpolate(x, size=8, mode="linear")
    recomputed = fc.interpolate(x, scale_factor=1.7, mode="linear", recompute_scale_factor=True)
    assert by_scale.shape == by_size.shape == (1, 1, 8)
    assert not np.allclose(by_scale, by_size) and np.array_equal(recomputed, by_size)
    xt = torch.tensor(x)
    F = torch.nn.functional
    assert rel_err(by_scale, F.interpolate(xt, scale_factor=1.7, mode="linear")) <= TOL
    assert rel_err(by_size, F.interpolate(xt, size=8, mode="linear")) <= TOL


def test_align_corners_false_clamps_the_source_at_zero(torch):
    x = np.array([[[1.0, 3.0, 7.0]]])
    y = fc.interpolate(x, size=6, mode="linear", align_corners=False)
    # output 0 maps to 0.5 * (0 + 0.5) - 0.5 < 0, clamped to 0: exactly x[0]
    assert y[0, 0, 0] == 1.0 and y[0, 0, -1] == 7.0
    ref = torch.nn.functional.interpolate(torch.tensor(x), size=6, mode="linear")
    assert rel_err(y, ref) <= TOL
    corners = fc.interpolate(x, size=5, mode="linear", align_corners=True)
    assert np.array_equal(corners[0, 0], [1.0, 2.0, 3.0, 5.0, 7.0])


def test_nearest_rules(torch):
    x = np.arange(10.0).reshape(1, 1, 10)
    # floor(o / 1.05) in float32: the 1-d forward does not copy although out == in
    assert fc.interpolate(x, scale_factor=1.05)[0, 0].tolist()[:3] == [0, 0, 1]
    # in 2-d an output of the input's size copies, one of twice its size halves the index
    x2 = np.arange(10.0).reshape(1, 1, 1, 10)
    assert fc.interpolate(x2, scale_factor=(1.0, 1.05))[0, 0, 0].tolist()[:3] == [0, 1, 2]
    assert fc.interpolate(x2, scale_factor=(1.0, 2.05))[0, 0, 0].tolist()[:4] == [0, 0, 1, 1]
    # nearest-exact rounds the centre: floor((o + 0.5) * in / out)
    assert fc.interpolate(x, size=4, mode="nearest-exact")[0, 0].tolist() == [1, 3, 6, 8]
    for kw in ({"scale_factor": 1.05}, {"size": 4, "mode": "nearest-exact"}):
        ref = torch.nn.functional.interpolate(torch.tensor(x), **kw)
        assert np.array_equal(fc.interpolate(x, **kw), ref.numpy())


@pytest.mark.parametrize("shape", [(0, 3, 4), (0, 2, 3, 3), (0, 2, 2, 2, 2)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_empty_batch_gives_an_empty_output(torch, shape, mode):
    dims = len(shape) - 2
    mode = LINEAR[dims] if mode == "linear" else mode
    x = np.zeros(shape)
    y = fc.interpolate(x, scale_factor=2.0, mode=mode)
    yt = torch.nn.functional.interpolate(torch.tensor(x), scale_factor=2.0, mode=mode)
    assert y.shape == tuple(yt.shape)
    gx = fc.interpolate_backward(np.zeros(y.shape), shape, scale_factor=2.0, mode=mode)
    assert gx.shape == shape


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_dtype_is_kept(dtype):
    x = np.ones((1, 2, 3, 3), dtype=dtype)
    y = fc.interpolate(x, size=5, mode="bilinear")
    assert y.dtype == dtype and np.allclose(y, 1.0)
    assert fc.interpolate_backward(y, x.shape, size=5, mode="bilinear").dtype == dtype


X3 = np.zeros((1, 2, 4))
X4 = np.zeros((1, 2, 4, 4))


@pytest.mark.parametrize(
    "x,kwargs,exc,start",
    [
        (X3, {}, ValueError, "size: either size or scale_factor"),
        (X3, {"size": 3, "scale_factor": 2.0}, ValueError, "size: only one of"),
        (X4, {"size": (3, 3, 3)}, ValueError, "size: expected 2 output sizes"),
        (X4, {"scale_factor": (2.0,)}, ValueError, "scale_factor: expected 2 factors"),
        (X4, {"size": (2.5, 3)}, TypeError, "size: expected an int"),
        (X3, {"size": 0}, ValueError, "size: expected output sizes greater than 0"),
        (X3, {"scale_factor": 0.2}, ValueError, "scale_factor: expected output sizes"),
        (X3, {"size": 3, "align_corners": True}, ValueError, "align_corners: only"),
        (X3, {"size": 3, "mode": "bilinear"}, ValueError, "mode: 'bilinear' needs a 4D"),
        (X4, {"size": 3, "mode": "trilinear"}, ValueError, "mode: 'trilinear' needs a 5D"),
        (X3, {"size": 3, "mode": "cubic"}, ValueError, "mode: expected one of"),
        (np.zeros((2, 4)), {"size": 3}, ValueError, "input: expected a 3D, 4D or 5D"),
        (np.zeros((1, 1, 0)), {"size": 3}, ValueError, "input: expected channel and spatial"),
        (np.zeros((2, 0, 3, 3)), {"size": 3}, ValueError, "input: expected channel and spatial"),
        (
            X3,
            {"size": 3, "recompute_scale_factor": True},
            ValueError,
            "recompute_scale_factor: not meaningful",
        ),
        (X3.astype(np.int32), {"size": 3}, TypeError, "input: expected a float"),
    ],
)
def test_bad_input_is_named_and_torch_rejects_it_too(torch, x, kwargs, exc, start):
    with pytest.raises(exc) as info:
        fc.interpolate(x, **kwargs)
    assert str(info.value).startswith(start), str(info.value)
    with pytest.raises((ValueError, TypeError, RuntimeError, NotImplementedError)):
        torch.nn.functional.interpolate(torch.tensor(x), **kwargs)


def test_not_implemented_options_are_clear_errors():
    with pytest.raises(ValueError, match="^mode: .*bicubic and area are not implemented"):
        fc.interpolate(X4, size=3, mode="bicubic")
    with pytest.raises(ValueError, match="^antialias: anti-aliased interpolation is not"):
        fc.interpolate(X4, size=3, mode="bilinear", antialias=True)


def test_interpolate_backward_checks_grad_output():
    with pytest.raises(ValueError, match=r"^grad_output: expected shape \(1, 2, 8\)"):
        fc.interpolate_backward(np.zeros((1, 2, 7)), (1, 2, 4), scale_factor=2.0)
