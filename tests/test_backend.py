"""The array-module helper: NumPy by default, CuPy for CuPy arrays, never a mix."""

import numpy as np
import pytest

from foldconv.backend import get_array_module, is_cupy_array, to_device


class _FakeCupyArray:
    """Stands in for a cupy.ndarray: the helper recognises CuPy by the type's module."""

    __module__ = "cupy._core.core"
    shape = (2,)


def test_numpy_arrays_give_numpy():
    assert get_array_module(np.zeros(2), None, np.ones(3)) is np
    assert not is_cupy_array(np.zeros(2))
    assert is_cupy_array(_FakeCupyArray())


def test_mixing_numpy_and_cupy_is_a_type_error():
    with pytest.raises(TypeError, match="arrays: expected all NumPy or all CuPy"):
        get_array_module(np.zeros(2), _FakeCupyArray())


def test_devices():
    a = np.arange(3.0)
    assert to_device(a, "cpu") is a
    with pytest.raises(ValueError, match="device"):
        to_device(a, "tpu")
    try:
        import cupy  # noqa: F401
    except Exception:
        with pytest.raises(RuntimeError, match="CuPy"):
            to_device(a, "cuda")


def _no_cupy():
    from foldconv.backend import _cupy

    if _cupy() is not None:
        pytest.skip("CuPy is installed")


def test_cuda_without_cupy_names_the_device_and_the_install():
    _no_cupy()
    install = r"pip install 'foldconv\[cuda12\]' \(CUDA 12\) or 'foldconv\[cuda13\]'"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=f"device: '{device}' needs CuPy.*{install}"):
            to_device(np.zeros(2), device)
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:<index>'"):
        to_device(np.zeros(2), "cuda:x")


def test_module_to_cuda_without_cupy_moves_nothing():
    _no_cupy()
    from foldconv.models import lenet5

    model = lenet5(10, rng=0)
    logits = model(np.zeros((2, 1, 28, 28), np.float32))
    model.backward(np.ones_like(logits))
    before = {k: v for k, v in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"device: 'cuda' needs CuPy.*foldconv\[cuda12\]"):
        model.to("cuda")
    after = model.state_dict()
    assert all(after[k] is v for k, v in before.items())  # the very same host arrays
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    with pytest.raises(TypeError, match="device: expected 'cpu' or 'cuda', got int 0"):
        model.to(0)
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:<index>'"):
        model.to("tpu")
    assert all(after[k] is v for k, v in before.items())


def test_module_to_cpu_keeps_saved_activations_usable():
    """to() moves what forward kept for backward (here to the CPU: they stay NumPy), so a
    backward may follow the move."""
    from foldconv.models import lenet5

    model = lenet5(10, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    g = np.ones((2, 10))
    ref = lenet5(10, rng=0, dtype=np.float64)
    ref(x)
    dx_ref = ref.backward(g)
    model(x)
    model.to("cpu")
    np.testing.assert_array_equal(model.backward(g), dx_ref)


def test_cupy_without_a_usable_gpu_is_a_clear_error(monkeypatch):
    """CuPy that imports but finds no driver or device (a stand-in module: CuPy is not
    installed here) gives CUDA's reason, not a failure deep inside the first copy."""
    import types

    from foldconv import backend

    class CUDARuntimeError(RuntimeError):
        pass

    def no_driver():
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace()))
    fake.cuda.runtime.getDeviceCount = no_driver
    monkeypatch.setattr(backend, "_cupy", lambda: fake)
    monkeypatch.setattr(backend, "_gpu_count", None)
    with pytest.raises(RuntimeError, match="device: 'cuda': CuPy is installed but CUDA cannot"):
        to_device(np.zeros(2), "cuda")
    fake.cuda.runtime.getDeviceCount = lambda: 2
    with pytest.raises(ValueError, match=r"'cuda:0' .. 'cuda:1' \(2 GPU\(s\)\), got 'cuda:2'"):
        to_device(np.zeros(2), "cuda:2")


def test_the_trainers_device_feed_is_a_no_op_on_the_cpu():
    from foldconv.trainer.pipeline import _DeviceFeeder

    x = np.zeros((2, 1, 4, 4), np.float32)
    assert _DeviceFeeder("cpu")(x, "x") is x


def test_an_unusable_device_is_one_error_everywhere(monkeypatch):
    # Module.to and the trainer raise the same error, catchable as either kind.
    from foldconv import backend
    from foldconv.models import lenet5
    from foldconv.trainer.config import _check_device

    monkeypatch.setattr(backend, "_cupy", lambda: None)
    errors = []
    for call in (lambda: lenet5(10, rng=0).to("cuda"), lambda: _check_device("cuda")):
        with pytest.raises(backend.DeviceUnavailableError) as info:
            call()
        assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and errors[0].startswith("device: 'cuda' needs CuPy")
