"""Empty inputs for every convolution function, algorithm, padding mode and layer.

PyTorch's rule, checked against PyTorch itself: a batch of 0 is valid (empty outputs,
zero weight and bias gradients); a zero-length channel or spatial dimension, or a weight
with a zero-length dimension, is an error (ours a ValueError naming the argument).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import foldconv
from foldconv import nn
from foldconv.functional import (
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    dispatch,
    fold,
    unfold,
)
from tests.functional.conv_cases import compiled_and_numpy, torch_pad_list

SPATIAL = {1: (5,), 2: (5, 6), 3: (4, 5, 3)}
ALGORITHMS = ("auto", "direct", "im2col", "winograd", "depthwise", "full_conv")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _runnable(algorithm, nd, groups, stride):
    """Whether an explicitly requested algorithm supports this geometry at all."""
    if algorithm == "winograd":
        return nd == 2 and stride == 1
    if algorithm == "depthwise":
        return groups == 4
    return True


def _torch_conv(torch, x, w, b, nd, stride, padding, groups, mode):
    F = torch.nn.functional
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    if mode != "zeros":
        x = F.pad(x, torch_pad_list([(padding, padding)] * nd), mode=mode)
        padding = 0
    return fn(x, w, b, stride=stride, padding=padding, groups=groups)


CONV_CASES = [
    (nd, algorithm, mode, groups, stride)
    for nd, algorithm, mode, groups, stride in itertools.product(
        (1, 2, 3), ALGORITHMS, ("zeros", "reflect", "replicate", "circular"), (1, 4), (1, 2)
    )
    if _runnable(algorithm, nd, groups, stride)
]


@pytest.mark.parametrize("nd,algorithm,mode,groups,stride", CONV_CASES)
def test_conv_empty_batch_matches_torch(torch, nd, algorithm, mode, groups, stride):
    rng = np.random.default_rng(0)
    x = np.zeros((0, 4) + SPATIAL[nd])
    w = rng.standard_normal((8, 4 // groups) + (3,) * nd)
    b = rng.standard_normal(8)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    ref = _torch_conv(torch, xt, wt, bt, nd, stride, 1, groups, mode)
    ref.sum().backward()
    opts = dict(stride=stride, padding=1, groups=groups, padding_mode=mode)
    fwd_alg = "im2col" if algorithm == "full_conv" else algorithm

    def run():
        y = conv(x, w, b, **opts, algorithm=fwd_alg)
        grads = conv_backward(np.ones_like(y), x, w, **opts, algorithm=algorithm)
        return y, grads

    for y, (dx, dw, db) in compiled_and_numpy(run):
        assert y.shape == tuple(ref.shape) and y.dtype == np.float64
        assert dx.shape == x.shape
        np.testing.assert_array_equal(dw, wt.grad.numpy())
        np.testing.assert_array_equal(db, bt.grad.numpy())
        np.testing.assert_array_equal(dw, 0.0)


TRANSPOSE_CASES = [
    (nd, algorithm, groups, stride)
    for nd, algorithm, groups, stride in itertools.product(
        (1, 2, 3), [a for a in ALGORITHMS if a != "full_conv"], (1, 4), (1, 2)
    )
    if _runnable(algorithm, nd, groups, stride)
]


@pytest.mark.parametrize("nd,algorithm,groups,stride", TRANSPOSE_CASES)
def test_conv_transpose_empty_batch_matches_torch(torch, nd, algorithm, groups, stride):
    rng = np.random.default_rng(1)
    x = np.zeros((0, 4) + SPATIAL[nd])
    w = rng.standard_normal((4, 4 // groups) + (3,) * nd)
    b = rng.standard_normal(4)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    F = torch.nn.functional
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    ref = fn(torch.tensor(x), wt, bt, stride=stride, padding=1, groups=groups)
    ref.sum().backward()
    opts = dict(stride=stride, padding=1, groups=groups)

    def run():
        y = conv_transpose(x, w, b, **opts, algorithm=algorithm)
        return y, conv_transpose_backward(np.ones_like(y), x, w, **opts, algorithm=algorithm)

    for y, (dx, dw, db) in compiled_and_numpy(run):
        assert y.shape == tuple(ref.shape)
        assert dx.shape == x.shape
        np.testing.assert_array_equal(dw, wt.grad.numpy())
        np.testing.assert_array_equal(db, bt.grad.numpy())


def test_ranked_functions_and_unfold_fold_take_an_empty_batch(torch):
    F = torch.nn.functional
    for nd, fn in ((1, conv1d), (2, conv2d), (3, conv3d)):
        x, w = np.zeros((0, 3) + SPATIAL[nd]), np.ones((2, 3) + (2,) * nd)
        assert fn(x, w).shape == (0, 2) + tuple(s - 1 for s in SPATIAL[nd])
    x = np.zeros((0, 3, 5, 6))
    assert unfold(x, 2, padding=1).shape == tuple(F.unfold(torch.tensor(x), 2, padding=1).shape)
    cols = np.zeros((0, 12, 20))
    ref = F.fold(torch.tensor(cols), (5, 6), 2)
    assert fold(cols, (5, 6), 2).shape == tuple(ref.shape)
    with pytest.raises(ValueError, match=r"^x: expected non-zero channel and spatial sizes"):
        unfold(np.zeros((2, 0, 5, 6)), 2)
    with pytest.raises(ValueError, match=r"^x: expected non-zero channel and spatial sizes"):
        unfold(np.zeros((0, 3, 0, 6)), 2, padding=2)
    with pytest.raises(ValueError, match=r"^cols: expected non-zero C·prod\(K\) and L"):
        fold(np.zeros((2, 12, 0)), (5, 6), 2)
    with pytest.raises(ValueError, match=r"^cols: expected non-zero C·prod\(K\) and L"):
        fold(np.zeros((2, 0, 20)), (5, 6), 2)


def test_an_empty_batch_keeps_explicit_algorithm_checks():
    x = np.zeros((0, 4, 6, 6))
    with pytest.raises(ValueError, match=r"^algorithm: 'winograd' does not support"):
        conv(x, np.ones((4, 4, 3, 3)), stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match=r"^algorithm: 'depthwise' does not support"):
        conv(x, np.ones((4, 4, 3, 3)), algorithm="depthwise")


# ---------------------------------------------------------------------------------------
# A zero in each position of the input's and the weight's shape
# ---------------------------------------------------------------------------------------
def _zero_cases():
    for nd, transposed in itertools.product((1, 2, 3), (False, True)):
        x_shape = (2, 4) + (5,) * nd
        w_shape = ((4, 3) if transposed else (6, 4)) + (3,) * nd
        for i in range(len(x_shape)):
            yield nd, transposed, "x", x_shape[:i] + (0,) + x_shape[i + 1 :], w_shape
        for i in range(len(w_shape)):
            yield nd, transposed, "weight", x_shape, w_shape[:i] + (0,) + w_shape[i + 1 :]
        # An empty batch with an empty spatial size that the padding covers is valid.
        yield nd, transposed, "x", (0, 4, 0) + (5,) * (nd - 1), w_shape


@pytest.mark.parametrize("nd,transposed,culprit,x_shape,w_shape", list(_zero_cases()))
def test_a_zero_in_each_shape_position(torch, nd, transposed, culprit, x_shape, w_shape):
    """PyTorch accepts => the same shapes, values and gradients; PyTorch rejects => our
    ValueError naming the argument that holds the zero."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    padding = 2 if not transposed else 0
    F = torch.nn.functional
    if transposed:
        tfn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        fn, bfn = conv_transpose, conv_transpose_backward
    else:
        tfn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        fn, bfn = conv, conv_backward
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    try:
        ref = tfn(xt, wt, padding=padding)
    except RuntimeError:
        ref = None
    if ref is None:
        with pytest.raises(ValueError, match=rf"^{culprit}: "):
            fn(x, w, padding=padding)
        return
    ref.sum().backward()
    y = fn(x, w, padding=padding)
    dx, dw, _ = bfn(np.ones_like(y), x, w, padding=padding)
    assert y.shape == tuple(ref.shape)
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    np.testing.assert_array_equal(dw, wt.grad.numpy())


def test_zero_channels_on_both_sides_is_rejected(torch):
    """PyTorch returns an (N, 0, *out) output for x (N, 0, *S) with a weight (C_out, 0, *K)
    (its empty-input shortcut drops the C_out filters and the bias); a convolution with
    C_out filters has C_out output channels, so foldconv rejects this input instead of
    matching that shape (a deliberate difference, documented in the README)."""
    x, w = np.zeros((2, 0, 5, 5)), np.zeros((6, 0, 3, 3))
    assert tuple(torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)).shape) == (
        2,
        0,
        3,
        3,
    )
    with pytest.raises(ValueError, match=r"^x: expected at least one channel"):
        conv(x, w)


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------
LAYERS = [
    (cls, nd, mode)
    for (cls, nd) in (
        ("Conv1d", 1),
        ("Conv2d", 2),
        ("Conv3d", 3),
        ("ConvTranspose1d", 1),
        ("ConvTranspose2d", 2),
        ("ConvTranspose3d", 3),
    )
    for mode in (("zeros",) if "Transpose" in cls else ("zeros", "reflect", "circular"))
]


@pytest.mark.parametrize("name,nd,mode", LAYERS)
def test_conv_layers_take_an_empty_batch(torch, name, nd, mode):
    ours = getattr(nn, name)(4, 6, 3, 2, 1, groups=2, padding_mode=mode, dtype=np.float64, rng=0)
    theirs = getattr(torch.nn, name)(4, 6, 3, 2, 1, groups=2, padding_mode=mode).double()
    x = np.zeros((0, 4) + SPATIAL[nd])
    ref = theirs(torch.tensor(x, requires_grad=True))
    ref.sum().backward()
    y = ours(x)
    assert y.shape == tuple(ref.shape)
    assert ours.backward(np.ones_like(y)).shape == x.shape
    np.testing.assert_array_equal(ours.weight.grad, theirs.weight.grad.numpy())
    np.testing.assert_array_equal(ours.bias.grad, theirs.bias.grad.numpy())


def test_compiled_setting_is_restored():
    assert isinstance(foldconv.set_compiled(foldconv.get_compiled()), bool)


def test_an_empty_batch_under_the_autotuner_runs_no_kernel():
    previous = foldconv.set_benchmark(True)
    dispatch.clear_benchmark_cache()
    try:
        x, w = np.zeros((0, 4, 6, 6)), np.ones((8, 4, 3, 3))
        y = conv(x, w, padding=1)
        dx, dw, db = conv_backward(np.ones_like(y), x, w, padding=1)
        assert y.shape == (0, 8, 6, 6) and dx.shape == x.shape
        np.testing.assert_array_equal(dw, 0.0)
        assert dispatch.tuned_algorithms() == {}  # nothing timed for a batch of 0
    finally:
        foldconv.set_benchmark(previous)
        dispatch.clear_benchmark_cache()
