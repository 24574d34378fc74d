"""The compiled depthwise kernels (Numba) against PyTorch, finite differences, the seed's
direct sums and the NumPy path they replace; and the NumPy path when they are off."""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
from foldconv.functional import (
    _args,
    conv,
    conv_backward,
    conv_transpose,
    depthwise,
    depthwise_compiled,
)
from foldconv.functional.padding import apply_pad, pad_adjoint
from tests.functional.conv_cases import compiled_and_numpy, torch_pad_list
from tests.gradcheck import directional_check, rel_err

pytest.importorskip("numba")

CASES = [  # size, kernel, stride, dilation, padding, multiplier
    ((13, 12), (3, 3), (1, 1), (1, 1), 1, 1),
    ((14, 11), (3, 2), (2, 1), (1, 2), 2, 2),
    ((9, 16), (5, 5), (1, 2), (2, 1), ((1, 3), (2, 0)), 1),
    ((17,), (4,), (3,), (2,), 2, 3),
    ((20,), (3,), (1,), (1,), 1, 1),
    # Padding wider than the kernel's reach: border outputs read nothing but zeros.
    ((7, 6), (2, 2), (1, 1), (1, 1), 3, 1),
    ((10, 11), (3, 3), (3, 2), (1, 2), ((4, 1), (0, 5)), 2),
    ((8,), (2,), (2,), (3,), ((5, 4),), 1),
]


def _data(rng, size, kernel, mult, dtype=np.float64, c=5, n=3):
    x = rng.standard_normal((n, c) + size).astype(dtype)
    w = rng.standard_normal((c * mult, 1) + kernel).astype(dtype)
    return x, w


@pytest.mark.parametrize("case", CASES)
def test_compiled_matches_direct_sums_and_the_numpy_path(case):
    size, kernel, stride, dilation, padding, mult = case
    rng = np.random.default_rng(len(size) * 7 + mult)
    x, w = _data(rng, size, kernel, mult)
    opts = dict(stride=stride, dilation=dilation, padding=padding, groups=x.shape[1])
    y, y_np = compiled_and_numpy(lambda: conv(x, w, **opts, algorithm="depthwise"))
    assert rel_err(y, conv(x, w, **opts, algorithm="direct")) <= 1e-12
    # Same additions in the same order as the NumPy path: equal to the last bit.
    assert np.array_equal(y, y_np)
    dy = rng.standard_normal(y.shape)
    got, got_np = compiled_and_numpy(lambda: conv_backward(dy, x, w, **opts, algorithm="depthwise"))
    ref = conv_backward(dy, x, w, **opts, algorithm="direct")
    for a, b, c in zip(got, got_np, ref, strict=True):
        assert rel_err(a, c) <= 1e-12
        assert rel_err(b, c) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES)
def test_compiled_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    size, kernel, stride, dilation, padding, mult = case
    rng = np.random.default_rng(11)
    x, w = _data(rng, size, kernel, mult)
    nd = len(size)
    opts = dict(stride=stride, dilation=dilation, groups=x.shape[1])
    pads = _args.parse_padding(padding, nd) if not isinstance(padding, int) else None
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    xin = xt
    if pads is not None:  # torch takes no asymmetric padding: pad first
        xin = torch.nn.functional.pad(xt, torch_pad_list(pads))
    conv_t = [None, torch.nn.functional.conv1d, torch.nn.functional.conv2d][nd]
    yt = conv_t(xin, wt, padding=0 if pads is not None else padding, **opts)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    assert depthwise_compiled.applies(
        _args.conv_geometry(x.shape, w.shape, stride, padding, dilation, x.shape[1], "zeros"),
        x.astype(dtype),
        w.astype(dtype),
    )
    xc, wc, dyc = (a.astype(dtype) for a in (x, w, dy))
    y = conv(xc, wc, padding=padding, **opts, algorithm="depthwise")
    dx, dw, _ = conv_backward(dyc, xc, wc, padding=padding, **opts, algorithm="depthwise")
    assert y.dtype == dx.dtype == dw.dtype == dtype
    assert rel_err(y, yt.detach().numpy()) <= tol
    assert rel_err(dx, xt.grad.numpy()) <= tol
    assert rel_err(dw, wt.grad.numpy()) <= tol


@pytest.mark.parametrize("case", CASES)
def test_kernels_pad_by_themselves_as_on_a_padded_input(case):
    """padded=False (the kernels skip the taps in the zero padding) against the same
    kernels on an explicitly padded input."""
    size, kernel, stride, dilation, padding, mult = case
    rng = np.random.default_rng(21)
    x, w = _data(rng, size, kernel, mult)
    g = _args.conv_geometry(x.shape, w.shape, stride, padding, dilation, x.shape[1], "zeros")
    x_pad = apply_pad(x, g.pads, "zeros")
    dy = rng.standard_normal((3, w.shape[0]) + g.out_shape)
    y = depthwise_compiled.forward(x, w, g, padded=False)
    assert np.array_equal(y, depthwise_compiled.forward(x_pad, w, g))
    dx = depthwise_compiled.input_grad(dy, w, g, padded=False)
    dx_pad = depthwise_compiled.input_grad(dy, w, g)
    assert rel_err(dx, pad_adjoint(dx_pad, g.in_shape, g.pads, "zeros")) <= 1e-14
    dw = depthwise_compiled.weight_grad(dy, x, g, padded=False)
    assert rel_err(dw, depthwise_compiled.weight_grad(dy, x_pad, g)) <= 1e-14


@pytest.mark.parametrize("output_padding", [0, 1])
def test_transposed_depthwise_takes_the_compiled_input_gradient(output_padding):
    """conv_transpose is eq. BX applied to x: with zero padding it runs the compiled input
    gradient on the unpadded geometry, equal to the direct sums and the NumPy twin."""
    rng = np.random.default_rng(13)
    x, w = _data(rng, (9, 8), (3, 3), 1, c=6, n=2)
    opts = dict(stride=2, padding=1, output_padding=output_padding, groups=6)
    y, y_np = compiled_and_numpy(lambda: conv_transpose(x, w, **opts, algorithm="depthwise"))
    ref = conv_transpose(x, w, **opts, algorithm="direct")
    assert rel_err(y, ref) <= 1e-12
    assert rel_err(y_np, ref) <= 1e-12


def test_compiled_passes_finite_differences():
    rng = np.random.default_rng(3)
    x, w = _data(rng, (9, 8), (3, 3), 2)
    opts = dict(stride=(2, 1), dilation=(1, 2), padding=1, groups=5)
    r = rng.standard_normal(conv(x, w, **opts, algorithm="direct").shape)

    def loss_x(xv):
        return float(np.sum(conv(xv, w, **opts, algorithm="depthwise") * r))

    def loss_w(wv):
        return float(np.sum(conv(x, wv, **opts, algorithm="depthwise") * r))

    foldconv.set_compiled(True)
    dx, dw, _ = conv_backward(r, x, w, **opts, algorithm="depthwise")
    assert directional_check(loss_x, x, dx, rng) < 1e-7
    assert directional_check(loss_w, w, dw, rng) < 1e-7


def test_float32_weight_gradient_sums_in_float64():
    """A suite-sized layer: 200,704 terms per weight. Summed in float64, the float32
    weight gradient is as accurate as its inputs allow."""
    rng = np.random.default_rng(4)
    x, w = _data(rng, (112, 112), (3, 3), 1, c=4, n=16)
    dy = rng.standard_normal((16, 4, 112, 112))
    ref = conv_backward(dy, x, w, padding=1, groups=4, algorithm="direct")[1]
    got = conv_backward(
        dy.astype(np.float32),
        x.astype(np.float32),
        w.astype(np.float32),
        padding=1,
        groups=4,
        algorithm="depthwise",
    )[1]
    assert rel_err(got, ref) <= 2e-7


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(6)
    x, w = _data(rng, (20, 20), (3, 3), 1, dtype=np.float32, c=16, n=4)
    dy = rng.standard_normal((4, 16, 20, 20)).astype(np.float32)
    runs = []
    for threads in (1, 2, 3):
        previous = foldconv.set_num_threads(threads)
        try:
            runs.append(
                [conv(x, w, padding=1, groups=16)]
                + list(conv_backward(dy, x, w, padding=1, groups=16))
            )
        finally:
            foldconv.set_num_threads(previous)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a, b)


def test_what_takes_the_numpy_path(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the compiled kernel ran")

    monkeypatch.setattr(depthwise_compiled, "forward", fail)
    rng = np.random.default_rng(8)
    x3, w3 = _data(rng, (4, 5, 4), (2, 2, 2), 1)  # a 3-d layer
    y = conv(x3, w3, groups=5, algorithm="depthwise")
    assert rel_err(y, conv(x3, w3, groups=5, algorithm="direct")) <= 1e-12
    x, w = _data(rng, (6, 6), (3, 3), 1)
    previous = foldconv.set_compiled(False)
    try:
        assert not foldconv.get_compiled()
        y = conv(x, w, groups=5, algorithm="depthwise")
    finally:
        foldconv.set_compiled(previous)
    assert rel_err(y, conv(x, w, groups=5, algorithm="direct")) <= 1e-12
    with pytest.raises(AssertionError, match="compiled kernel ran"):
        conv(x, w, groups=5, algorithm="depthwise")


def test_set_compiled_checks_its_argument():
    with pytest.raises(TypeError, match="enabled"):
        foldconv.set_compiled(1)
    assert foldconv.get_compiled() is True
    g = _args.conv_geometry((2, 3, 8), (3, 1, 3), 1, 0, 1, 3, "zeros")
    assert depthwise.supports(g)
