"""conv_backward / conv_transpose_backward with ``output_mask``: PyTorch's
``aten.convolution_backward`` semantics (a gradient not asked for is None), the others
bitwise what the unmasked call returns, and bad masks rejected."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import foldconv.functional as fc

MASKS = list(itertools.product((False, True), repeat=3))
# (x shape, weight shape, stride, padding, dilation, groups): LeNet-5's two layers, a
# strided/dilated one, a grouped one, a 1-d and a 3-d one, an empty batch.
CASES = [
    ((4, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1, 1),
    ((4, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, 1),
    ((2, 4, 11, 9), (6, 2, 3, 3), 2, 1, 2, 2),
    ((3, 2, 13), (4, 2, 3), 1, 1, 1, 1),
    ((2, 2, 5, 6, 4), (3, 2, 2, 3, 2), 1, 0, 1, 1),
    ((0, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1),
]


def _arrays(case, dtype, transposed=False, seed=0):
    xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    if transposed:  # weight (C_in, C_out/groups, *K)
        ws = (xs[1], ws[0] // groups) + ws[2:]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_conv_backward_mask_skips_and_keeps_the_rest_bitwise(case, dtype):
    x, w, kw = _arrays(case, dtype)
    y = fc.conv(x, w, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    full = fc.conv_backward(dy, x, w, **kw)
    for mask in MASKS:
        got = fc.conv_backward(dy, x, w, **kw, output_mask=mask)
        for want, g, f in zip(mask, got, full, strict=True):
            if want:
                assert g.dtype == f.dtype and g.shape == f.shape
                np.testing.assert_array_equal(g, f)
            else:
                assert g is None


@pytest.mark.parametrize("case", CASES[:3])
def test_conv_transpose_backward_mask_skips_and_keeps_the_rest_bitwise(case):
    x, w, kw = _arrays(case, np.float64, transposed=True)
    y = fc.conv_transpose(x, w, **kw)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    full = fc.conv_transpose_backward(dy, x, w, **kw)
    for mask in MASKS:
        got = fc.conv_transpose_backward(dy, x, w, **kw, output_mask=mask)
        for want, g, f in zip(mask, got, full, strict=True):
            if want:
                np.testing.assert_array_equal(g, f)
            else:
                assert g is None


def test_unbatched_input_with_mask():
    x, w, kw = _arrays(CASES[1], np.float64)
    dy = np.ones(fc.conv(x[0], w, **kw).shape)
    dx, dw, db = fc.conv_backward(dy, x[0], w, **kw, output_mask=(True, False, True))
    assert dx.shape == x[0].shape and dw is None and db.shape == (w.shape[0],)
    np.testing.assert_array_equal(dx, fc.conv_backward(dy, x[0], w, **kw)[0])


def test_mask_matches_torch_convolution_backward():
    torch = pytest.importorskip("torch")
    x, w, kw = _arrays(CASES[0], np.float64)
    dy = np.random.default_rng(2).standard_normal(fc.conv(x, w, **kw).shape)
    mask = (False, True, True)
    ref = torch.ops.aten.convolution_backward(
        torch.tensor(dy),
        torch.tensor(x),
        torch.tensor(w),
        [w.shape[0]],
        [1, 1],
        [2, 2],
        [1, 1],
        False,
        [0, 0],
        1,
        list(mask),
    )
    got = fc.conv_backward(dy, x, w, **kw, output_mask=mask)
    assert ref[0] is None and got[0] is None
    for r, g in zip(ref[1:], got[1:], strict=True):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "mask", [(True, True), (True, True, True, True), "yes", (1, 1, 1), (True, None, True), None]
)
@pytest.mark.parametrize("fn", ["conv_backward", "conv_transpose_backward"])
def test_bad_mask_is_a_value_error_naming_it(mask, fn):
    x, w, kw = _arrays(CASES[1], np.float64, transposed=fn == "conv_transpose_backward")
    fwd = fc.conv if fn == "conv_backward" else fc.conv_transpose
    dy = np.ones(fwd(x, w, **kw).shape)
    with pytest.raises(ValueError, match="output_mask: expected 3 bools.*got"):
        getattr(fc, fn)(dy, x, w, **kw, output_mask=mask)
