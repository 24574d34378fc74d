"""The compiled col2im of the flat grid against its NumPy twin (equal to the last bit),
and through conv_backward against PyTorch and the seed's direct sums."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import _args, conv_backward, flat, flat_compiled
from tests.functional.conv_cases import compiled_and_numpy, torch_pad_list
from tests.gradcheck import rel_err

pytest.importorskip("numba")

CASES = [  # size, kernel, stride, dilation, padding, groups
    ((14, 14), (5, 5), (1, 1), (1, 1), 0, 1),
    ((13, 11), (3, 3), (1, 1), (2, 1), ((2, 1), (0, 3)), 2),
    ((12, 13), (3, 2), (2, 3), (1, 2), 1, 1),
    ((19,), (4,), (2,), (3,), 2, 2),
    ((6, 7, 5), (2, 3, 2), (1, 2, 1), (2, 1, 1), 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_compiled_col2im_is_the_numpy_one_to_the_last_bit(case, dtype):
    size, kernel, stride, dilation, padding, groups = case
    rng = np.random.default_rng(len(size) + groups)
    c, o = 2 * groups, 3 * groups
    g = _args.conv_geometry((3, c) + size, (o, c // groups) + kernel, stride, padding,
                            dilation, groups, "zeros")  # fmt: skip
    w = rng.standard_normal((o, c // groups) + kernel).astype(dtype)
    dy = rng.standard_normal((3, o) + g.out_shape).astype(dtype)
    fast, plain = compiled_and_numpy(lambda: flat.input_grad(dy, w, g))
    assert fast.dtype == dtype
    assert np.array_equal(fast, plain)


@pytest.mark.parametrize("case", CASES)
def test_compiled_col2im_through_conv_backward_matches_torch_and_direct(case):
    size, kernel, stride, dilation, padding, groups = case
    rng = np.random.default_rng(3)
    c, o = 2 * groups, 3 * groups
    x = rng.standard_normal((3, c) + size)
    w = rng.standard_normal((o, c // groups) + kernel)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = _args.conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, "zeros")
    dy = rng.standard_normal((3, o) + g.out_shape)
    foldconv.set_compiled(True)
    dx, _, _ = conv_backward(dy, x, w, **opts, algorithm="im2col")
    ref, _, _ = conv_backward(dy, x, w, **opts, algorithm="direct")
    assert rel_err(dx, ref) <= 1e-12
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    xin = xt
    pads = _args.parse_padding(padding, len(size)) if not isinstance(padding, int) else None
    if pads is not None:
        xin = torch.nn.functional.pad(xt, torch_pad_list(pads))
    conv_t = [None, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
              torch.nn.functional.conv3d][len(size)]  # fmt: skip
    yt = conv_t(xin, torch.tensor(w), stride=stride, dilation=dilation, groups=groups,
                padding=0 if pads is not None else padding)  # fmt: skip
    yt.backward(torch.tensor(dy))
    assert rel_err(dx, xt.grad.numpy()) <= 1e-10


def test_the_numpy_path_runs_when_the_switch_is_off(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the compiled kernel ran")

    monkeypatch.setattr(flat_compiled, "add_taps", fail)
    rng = np.random.default_rng(5)
    g = _args.conv_geometry((2, 3, 9, 9), (4, 3, 3, 3), 1, 1, 1, 1, "zeros")
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 9, 9))
    previous = foldconv.set_compiled(False)
    try:
        flat.input_grad(dy, w, g)
    finally:
        foldconv.set_compiled(previous)
    with pytest.raises(AssertionError, match="compiled kernel ran"):
        flat.input_grad(dy, w, g)
