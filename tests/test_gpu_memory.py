"""Running out of GPU memory names the layer, its input shape and the bytes asked for.

There is no GPU here: these tests drive the real translation code in Module.__call__ and
the wrapped ``backward`` methods with test layers that raise what a GPU would raise: a
:class:`GPUOutOfMemoryError` from foldconv's own GPU code, or a stand-in for CuPy's
``cupy.cuda.memory.OutOfMemoryError`` (a MemoryError subclass carrying ``_size``, as
CuPy's does). tests/gpu/test_trainer.py makes a real GPU run out of memory.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from foldconv import nn
from foldconv.cuda.memory import GPUOutOfMemoryError, is_gpu_oom
from foldconv.models import lenet5, resnet18


class StandInCupyOOM(MemoryError):
    """Stand-in for cupy.cuda.memory.OutOfMemoryError(size, total, limit): same base
    class, same attributes, same message."""

    def __init__(self, size, total, limit=0):
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        )
        self._size, self._total, self._limit = size, total, limit


@pytest.fixture
def stand_in_cupy(monkeypatch):
    """A ``cupy`` module in sys.modules whose cuda.memory.OutOfMemoryError is the stand-in
    (the translation looks CuPy's class up there, never importing CuPy)."""
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=StandInCupyOOM))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


class OOMConv2d(nn.Conv2d):
    """A Conv2d whose forward (or backward) raises what ``raise_`` makes, as CuPy would
    when an allocation inside it fails."""

    def __init__(self, *args, raise_=None, where="forward", **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "raise_", raise_)
        object.__setattr__(self, "where", where)

    def forward(self, x):
        if self.where == "forward" and self.raise_ is not None:
            raise self.raise_()
        return super().forward(x)

    def backward(self, grad_output):
        if self.where == "backward" and self.raise_ is not None:
            raise self.raise_()
        return super().backward(grad_output)


class OOMLinear(nn.Linear):
    def __init__(self, *args, raise_=None, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "raise_", raise_)

    def backward(self, grad_output):
        raise self.raise_()


def _lenet_with(index_path, layer):
    model = lenet5(10, rng=0)
    seq, idx = index_path
    getattr(model, seq).add_module(str(idx), layer)
    return model


def test_translation_of_cupy_oom_in_forward_names_the_qualified_layer(stand_in_cupy):
    layer = OOMConv2d(6, 16, 5, rng=0, raise_=lambda: StandInCupyOOM(123_456_789, 10**9))
    model = _lenet_with(("features", 3), layer)
    x = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(GPUOutOfMemoryError) as exc:
        model(x)
    err = exc.value
    assert err.layer == "features.3 (OOMConv2d)"
    assert err.phase == "forward"
    assert err.input_shape == (4, 6, 14, 14)
    assert err.requested_bytes == 123_456_789
    assert isinstance(err, MemoryError)
    assert isinstance(err.__cause__, StandInCupyOOM)  # CuPy's error stays attached
    msg = str(err)
    for needle in (
        "out of GPU memory in features.3 (OOMConv2d) forward",
        "input shape (4, 6, 14, 14)",
        "requested 123,456,789 bytes (117.74 MiB)",
        "Out of memory allocating 123,456,789 bytes",
        "--batch-size",
    ):
        assert needle in msg, msg
    assert err.args == (msg,)


def test_translation_in_backward_names_the_layer_and_grad_output_shape(stand_in_cupy):
    layer = OOMLinear(120, 84, rng=0, raise_=lambda: StandInCupyOOM(4096, 0))
    model = _lenet_with(("classifier", 2), layer)
    logits = model(np.zeros((3, 1, 28, 28), np.float32))
    with pytest.raises(GPUOutOfMemoryError) as exc:
        model.backward(np.ones_like(logits))
    err = exc.value
    assert err.layer == "classifier.2 (OOMLinear)" and err.phase == "backward"
    assert err.input_shape == (3, 84) and err.requested_bytes == 4096
    assert "classifier.2 (OOMLinear) backward (grad_output shape (3, 84)" in str(err)


def test_translation_through_residual_blocks(stand_in_cupy):
    model = resnet18(10, rng=0)
    block = model.layer2[0]
    block.add_module(
        "conv2",
        OOMConv2d(128, 128, 3, padding=1, bias=False, rng=0, raise_=lambda: StandInCupyOOM(8, 0)),
    )
    with pytest.raises(GPUOutOfMemoryError) as exc:
        model(np.zeros((2, 3, 16, 16), np.float32))
    assert exc.value.layer == "layer2.0.conv2 (OOMConv2d)"
    assert exc.value.input_shape == (2, 128, 8, 8)


def test_foldconv_gpu_oom_without_layer_gets_it_filled_in():
    """foldconv's own GPU code (e.g. a workspace that does not fit) raises
    GPUOutOfMemoryError knowing the bytes but not the layer."""
    layer = OOMConv2d(
        6,
        16,
        5,
        rng=0,
        where="backward",
        raise_=lambda: GPUOutOfMemoryError("workspace", requested_bytes=2**31),
    )
    model = _lenet_with(("features", 3), layer)
    logits = model(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(GPUOutOfMemoryError) as exc:
        model.backward(np.ones_like(logits))
    err = exc.value
    assert err.layer == "features.3 (OOMConv2d)" and err.phase == "backward"
    assert err.input_shape == (2, 16, 10, 10) and err.requested_bytes == 2**31
    assert "requested 2,147,483,648 bytes (2.00 GiB)): workspace;" in str(err)


def test_a_layer_called_on_its_own_and_a_loss_are_named_by_type(stand_in_cupy):
    layer = OOMConv2d(1, 2, 3, rng=0, raise_=lambda: StandInCupyOOM(1, 0))
    with pytest.raises(GPUOutOfMemoryError, match=r"in OOMConv2d forward \(input shape"):
        layer(np.zeros((1, 1, 5, 5)))

    class OOMLoss(nn.CrossEntropyLoss):
        def forward(self, input, target):
            raise StandInCupyOOM(16, 0)

    with pytest.raises(GPUOutOfMemoryError, match=r"in OOMLoss forward \(input shape \(2, 3\)"):
        OOMLoss()(np.zeros((2, 3)), np.zeros(2, np.int64))


def test_cuda_runtime_allocation_errors_count_as_out_of_memory():
    """cuBLAS workspaces and numba-cuda report a failed allocation as a CUDA error."""

    class CUDARuntimeError(RuntimeError):
        pass

    CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"
    assert is_gpu_oom(CUDARuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not is_gpu_oom(CUDARuntimeError("cudaErrorIllegalAddress"))
    layer = OOMConv2d(
        1, 2, 3, rng=0, raise_=lambda: CUDARuntimeError("cudaErrorMemoryAllocation: out of memory")
    )
    with pytest.raises(GPUOutOfMemoryError, match="cudaErrorMemoryAllocation"):
        nn.Sequential(layer)(np.zeros((1, 1, 5, 5)))


def test_other_errors_pass_through_unchanged(stand_in_cupy):
    boom = ValueError("x: expected 4-d input")
    layer = OOMConv2d(1, 2, 3, rng=0, raise_=lambda: boom)
    with pytest.raises(ValueError) as exc:
        nn.Sequential(nn.Sequential(layer))(np.zeros((1, 1, 5, 5)))
    assert exc.value is boom
    # A host MemoryError (NumPy's) is not a GPU one: it is left as it was.
    host = MemoryError("Unable to allocate 8.00 EiB for an array")
    layer = OOMConv2d(1, 2, 3, rng=0, raise_=lambda: host)
    with pytest.raises(MemoryError) as exc:
        nn.Sequential(layer)(np.zeros((1, 1, 5, 5)))
    assert exc.value is host and not isinstance(exc.value, GPUOutOfMemoryError)


def test_backward_wrapping_keeps_names_docs_and_super_calls():
    # The wrapper is applied once per class, keeps the method's name and docstring, and a
    # subclass calling super().backward still computes the same gradient.
    assert nn.Conv2d.backward.__name__ == "backward"
    assert nn.Conv2d.backward.__doc__ == nn.Conv2d.backward.__wrapped__.__doc__
    assert OOMConv2d.backward.__wrapped__.__qualname__ == "OOMConv2d.backward"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6))
    a = nn.Conv2d(1, 2, 3, rng=0, dtype=np.float64)
    b = OOMConv2d(1, 2, 3, rng=0, dtype=np.float64)
    g = rng.standard_normal(a(x).shape)
    b(x)
    np.testing.assert_array_equal(a.backward(g), b.backward(g))
    np.testing.assert_array_equal(a.weight.grad, b.weight.grad)


def test_the_error_pickles_with_its_fields(stand_in_cupy):
    import pickle

    layer = OOMConv2d(1, 2, 3, rng=0, raise_=lambda: StandInCupyOOM(1024, 0))
    with pytest.raises(GPUOutOfMemoryError) as exc:
        nn.Sequential(layer)(np.zeros((1, 1, 5, 5)))
    err = exc.value
    err.context = "training stopped at epoch 1, step 1"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is GPUOutOfMemoryError and str(back) == str(err)
    assert back.args == (str(err),) and back.layer == "0 (OOMConv2d)"
    assert (back.requested_bytes, back.input_shape) == (1024, (1, 1, 5, 5))
