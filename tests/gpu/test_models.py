"""Every model of foldconv.models, forward and backward on CuPy arrays against the CPU path,
and Module.to moving a model (parameters, gradients, buffers, saved activations) both ways.

Float64 (every builder takes ``dtype``): <= 1e-10 relative to the largest magnitude of each
array; float32 for two of them: <= 1e-4. Dropout layers run in eval mode (their masks come
from different generators on the two devices); everything else in training mode, so
BatchNorm uses and updates batch statistics.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from foldconv.models import get_model
from foldconv.nn import Dropout
from tests.gpu.conftest import to_cpu

# name -> (input side, in_channels); small batches keep the CPU side short.
MODELS = {
    "lenet5": (28, 1),
    "alexnet": (63, 3),
    "alexnet_paper": (227, 3),
    "vgg11": (32, 3),
    "vgg16": (32, 3),
    "resnet18": (32, 3),
}


def _close(got, ref, tol, what):
    got, ref = to_cpu(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) / scale if ref.size else 0.0
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def _step(model, x, g):
    """Forward and backward: (logits, dx, {name: grad}, {name: buffer})."""
    model.zero_grad()
    logits = model(x)
    dx = model.backward(g)
    grads = {n: p.grad for n, p in model.named_parameters()}
    return logits, dx, grads, dict(model.named_buffers())


def _build(name, dtype):
    """The model with seed 0, in training mode but for its Dropout layers."""
    _, c = MODELS[name]
    m = get_model(name, 10, in_channels=c, rng=np.random.default_rng(0), dtype=dtype)
    m.train()
    for mod in m.modules():
        if isinstance(mod, Dropout):
            mod.eval()
    return m


def _inputs(name, dtype):
    side, c = MODELS[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, c, side, side)).astype(dtype)
    return x, rng.standard_normal((2, 10)).astype(dtype)


def _pair(name, dtype):
    """The same model twice (a copy: VGG's initialisation takes seconds): one stays on the
    CPU, one goes to the GPU; and x, dL/dy."""
    cpu_model = _build(name, dtype)
    return (cpu_model, copy.deepcopy(cpu_model).to("cuda"), *_inputs(name, dtype))


def _compare(cpu_model, gpu_model, x, g, cp, tol):
    ref = _step(cpu_model, x, g)
    got = _step(gpu_model, cp.asarray(x), cp.asarray(g))
    _close(got[0], ref[0], tol, "logits")
    _close(got[1], ref[1], tol, "dx")
    for n in ref[2]:
        _close(got[2][n], ref[2][n], tol, f"grad {n}")
    for n in ref[3]:
        _close(got[3][n], ref[3][n], tol, f"buffer {n}")
    return got


@pytest.mark.parametrize("name", list(MODELS))
def test_model_forward_backward_float64_matches_cpu(cp, name):
    cpu_model, gpu_model, x, g = _pair(name, np.float64)
    assert all(type(p.data).__module__.startswith("cupy") for p in gpu_model.parameters())
    _compare(cpu_model, gpu_model, x, g, cp, 1e-10)


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_model_forward_backward_float32_matches_cpu_and_repeats_bitwise(cp, name):
    cpu_model, gpu_model, x, g = _pair(name, np.float32)
    first = _compare(cpu_model, gpu_model, x, g, cp, 1e-4)
    first = [to_cpu(first[0]), to_cpu(first[1])] + [to_cpu(v) for v in first[2].values()]
    # BatchNorm's running statistics moved on; logits and gradients use batch statistics.
    again = _step(gpu_model, cp.asarray(x), cp.asarray(g))
    again = [to_cpu(again[0]), to_cpu(again[1])] + [to_cpu(v) for v in again[2].values()]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_module_to_moves_parameters_grads_buffers_and_saved_activations(cp):
    """Forward on the CPU, move, backward on the GPU (the saved activations moved too);
    then back to the CPU: NumPy everywhere again. State dicts load across devices."""
    x, g = _inputs("resnet18", np.float64)
    ref = _step(_build("resnet18", np.float64), x, g)
    model = _build("resnet18", np.float64)
    model.zero_grad()
    model(x)
    model.to("cuda")
    for n, p in model.named_parameters():
        assert type(p.data).__module__.startswith("cupy"), n
    for n, b in model.named_buffers():
        assert type(b).__module__.startswith("cupy"), n
    dx = model.backward(cp.asarray(g))
    _close(dx, ref[1], 1e-10, "dx after the move")
    for n, p in model.named_parameters():
        assert type(p.grad).__module__.startswith("cupy"), n
        _close(p.grad, ref[2][n], 1e-10, f"grad {n}")
    model.to("cpu")
    for n, p in model.named_parameters():
        assert isinstance(p.data, np.ndarray) and isinstance(p.grad, np.ndarray), n
        _close(p.grad, ref[2][n], 1e-10, f"grad {n} back on the CPU")
    for n, b in model.named_buffers():
        assert isinstance(b, np.ndarray), n
        np.testing.assert_array_equal(b, ref[3][n], err_msg=n)  # updated on the CPU
    gpu_model = _build("resnet18", np.float64).to("cuda")
    gpu_model.load_state_dict(model.state_dict())
    back = _build("resnet18", np.float64)
    back.load_state_dict(gpu_model.state_dict())
    for n, a in model.state_dict().items():
        assert isinstance(back.state_dict()[n], np.ndarray), n
        np.testing.assert_array_equal(back.state_dict()[n], a, err_msg=n)
