"""The activations, softmax and the error function on CuPy arrays against the CPU path
(erf, erfc and the exact GELU are one element-wise kernel each there), run to run bit for
bit, and the activation layers on the GPU."""

import numpy as np
import pytest

import foldconv.functional as fc
from foldconv import nn
from tests.gpu._funcs import RTOL, assert_bitwise_repeatable, assert_matches, on_gpu


def _inputs(dtype, shape=(6, 37)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3
    special = [0.0, -0.0, 1.999, 2.0, 2.001, -2.83, 2.83, 6.0, -6.0, 12.0, -30.0]
    x.reshape(-1)[: len(special)] = special
    return x.astype(dtype)


FORWARD_BACKWARD = [
    # (forward(x), backward(dy, x, y))
    (fc.relu, lambda g, x, y: fc.relu_backward(g, y)),
    (lambda x: fc.leaky_relu(x, 0.2), lambda g, x, y: fc.leaky_relu_backward(g, x, 0.2)),
    (fc.tanh, lambda g, x, y: fc.tanh_backward(g, y)),
    (fc.sigmoid, lambda g, x, y: fc.sigmoid_backward(g, y)),
    (fc.gelu, lambda g, x, y: fc.gelu_backward(g, x)),
    (lambda x: fc.gelu(x, "tanh"), lambda g, x, y: fc.gelu_backward(g, x, "tanh")),
    (lambda x: fc.softmax(x, 1), lambda g, x, y: fc.softmax_backward(g, y, 1)),
    (lambda x: fc.softmax(x, 0), lambda g, x, y: fc.softmax_backward(g, y, 0)),
    (lambda x: fc.log_softmax(x, -1), lambda g, x, y: fc.log_softmax_backward(g, y, -1)),
]


@pytest.mark.parametrize("case", range(len(FORWARD_BACKWARD)))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_forward_and_backward(cp, case, dtype):
    forward, backward = FORWARD_BACKWARD[case]
    x = _inputs(dtype)
    g = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    ref = forward(x)
    ref_dx = backward(g, x, ref)
    xd, gd = on_gpu(cp, x, g)
    y = forward(xd)
    assert_matches(cp, y, ref)
    assert_matches(cp, backward(gd, xd, y), ref_dx)
    assert_bitwise_repeatable(cp, lambda: backward(gd, xd, forward(xd)))


@pytest.mark.parametrize("f", [fc.erf, fc.erfc])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_error_function(cp, f, dtype):
    x = _inputs(dtype)
    x.reshape(-1)[-3:] = [np.inf, -np.inf, np.nan]
    ref = f(x)
    (xd,) = on_gpu(cp, x)
    assert_matches(cp, f(xd), ref)
    assert_bitwise_repeatable(cp, lambda: f(xd))


def test_gelu_of_a_large_strided_input(cp):
    """More elements than one grid covers; a non-contiguous view; dy float64, x float32."""
    rng = np.random.default_rng(2)
    full = rng.standard_normal((512, 4096)).astype(np.float32)
    x = full[:, ::2]
    g = rng.standard_normal(x.shape)
    ref, ref_dx = fc.gelu(x), fc.gelu_backward(g, x)
    fulld, gd = on_gpu(cp, full, g)
    xd = fulld[:, ::2]
    assert_matches(cp, fc.gelu(xd), ref)
    # The CPU path evaluates GELU' in x's float32, the GPU in float64: float32 accuracy.
    assert_matches(cp, fc.gelu_backward(gd, xd), ref_dx, rtol=RTOL[np.float32])


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.ReLU(),
        lambda: nn.ReLU(inplace=True),
        lambda: nn.LeakyReLU(0.1),
        lambda: nn.LeakyReLU(0.1, inplace=True),
        lambda: nn.Tanh(),
        lambda: nn.Sigmoid(),
        lambda: nn.GELU(),
        lambda: nn.GELU("tanh"),
        lambda: nn.Softmax(dim=1),
        lambda: nn.LogSoftmax(dim=1),
    ],
)
def test_activation_layers(cp, layer):
    x = _inputs(np.float32)
    g = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    cpu, gpu = layer(), layer().to("cuda")
    xd, gd = on_gpu(cp, x, g)
    ref = cpu(x.copy())
    ref_dx = cpu.backward(g)
    assert_matches(cp, gpu(xd), ref)
    assert_matches(cp, gpu.backward(gd), ref_dx)
