"""The convolution on CuPy arrays (a real GPU) against the CPU path.

The same cases as the simulator tests (tests/gpu_kernels/test_conv.py), run with CuPy
arrays: the numba-cuda kernels on the device, the GEMMs through cuBLAS in strict float32
(foldconv.set_tf32 off). Plus: two runs are bitwise equal, the layers run on the GPU, the
workspace limit and running out of GPU memory.
"""

from __future__ import annotations

import numpy as np
import pytest

import foldconv
import foldconv.functional as F
from foldconv.cuda.memory import GPUOutOfMemoryError
from foldconv.functional.unfold import fold, unfold
from tests.gpu.conftest import to_cpu
from tests.gpu_kernels.conv_cases import CONV_CASES, TRANSPOSE_CASES, UNFOLD_CASES, close


def _gpu(cp, fn, *arrays):
    """fn on CuPy copies of ``arrays``, results as a tuple of CuPy arrays."""
    out = fn(*(cp.asarray(a) for a in arrays))
    return out if isinstance(out, tuple) else (out,)


def _cpu(fn, *arrays):
    out = fn(*arrays)
    return out if isinstance(out, tuple) else (out,)


def _check(cp, fn, arrays, dtype):
    cpu = _cpu(fn, *arrays)
    gpu = _gpu(cp, fn, *arrays)
    for g_, c_ in zip(gpu, cpu, strict=True):
        assert type(g_) is cp.ndarray
        close(g_, c_, dtype)
    return cpu


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_and_gradients(cp, case, dtype):
    xs, ws, opts = CONV_CASES[case]
    rng = np.random.default_rng(len(case))
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    (y,) = _check(cp, lambda x, w, b: F.conv(x, w, b, **opts), (x, w, b), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    _check(cp, lambda dy, x, w: F.conv_backward(dy, x, w, **opts), (dy, x, w), dtype)


def test_float16(cp):
    xs, ws, opts = CONV_CASES["2d_asym_groups"]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs).astype(np.float16), rng.standard_normal(ws).astype(np.float16)
    (y,) = _check(cp, lambda x, w: F.conv(x, w, **opts), (x, w), np.float16)
    dy = rng.standard_normal(y.shape).astype(np.float16)
    _check(cp, lambda dy, x, w: F.conv_backward(dy, x, w, **opts), (dy, x, w), np.float16)


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_and_gradients(cp, case):
    xs, ws, opts = TRANSPOSE_CASES[case]
    rng = np.random.default_rng(len(case) + 7)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * opts.get("groups", 1))
    (y,) = _check(cp, lambda x, w, b: F.conv_transpose(x, w, b, **opts), (x, w, b), np.float64)
    dy = rng.standard_normal(y.shape)
    fn = lambda dy, x, w: F.conv_transpose_backward(dy, x, w, **opts)  # noqa: E731
    _check(cp, fn, (dy, x, w), np.float64)


@pytest.mark.parametrize("groups", [1, 2])
def test_empty_batch(cp, groups):
    x, w = np.zeros((0, 2, 5, 5)), np.ones((2, 2 // groups, 3, 3))
    (y,) = _check(cp, lambda x, w: F.conv(x, w, padding=1, groups=groups), (x, w), np.float64)
    fn = lambda dy, x, w: F.conv_backward(dy, x, w, padding=1, groups=groups)  # noqa: E731
    _check(cp, fn, (y, x, w), np.float64)


@pytest.mark.parametrize("case", ["2d_asym_groups", "depthwise_2d_mult2", "3d_groups"])
def test_two_runs_are_bitwise_equal(cp, case):
    xs, ws, opts = CONV_CASES[case]
    rng = np.random.default_rng(5)
    x = cp.asarray(rng.standard_normal(xs).astype(np.float32))
    w = cp.asarray(rng.standard_normal(ws).astype(np.float32))
    y1, y2 = F.conv(x, w, **opts), F.conv(x, w, **opts)
    assert cp.array_equal(y1, y2)
    dy = cp.asarray(rng.standard_normal(y1.shape).astype(np.float32))
    first, second = F.conv_backward(dy, x, w, **opts), F.conv_backward(dy, x, w, **opts)
    for a, b in zip(first, second, strict=True):
        assert cp.array_equal(a, b)


@pytest.mark.parametrize("xs,kernel,opts", UNFOLD_CASES)
def test_unfold_and_fold(cp, xs, kernel, opts):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(xs)
    (cols,) = _check(cp, lambda x: unfold(x, kernel, **opts), (x,), np.float64)
    c = rng.standard_normal(cols.shape)
    size = xs[-len(kernel) :]
    _check(cp, lambda c: fold(c, size, kernel, **opts), (c,), np.float64)


def test_workspace_limit_tiles_and_changes_nothing(cp):
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    opts = dict(padding=((1, 0), (1, 2)), stride=(1, 2), dilation=(2, 1))
    y = F.conv(x, w, **opts)
    dy = rng.standard_normal(y.shape)
    cpu = (y,) + F.conv_backward(dy, x, w, **opts)
    previous = foldconv.set_workspace_limit(700)  # one output row of one sample per tile
    try:
        xg, wg, dyg = cp.asarray(x), cp.asarray(w), cp.asarray(dy)
        gpu = (F.conv(xg, wg, **opts),) + F.conv_backward(dyg, xg, wg, **opts)
    finally:
        foldconv.set_workspace_limit(previous)
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


def test_out_of_gpu_memory_is_a_clear_error(cp):
    pool = cp.get_default_memory_pool()
    x = cp.ones((4, 8, 64, 64), dtype=cp.float32)
    w = cp.ones((16, 8, 3, 3), dtype=cp.float32)
    cp.cuda.get_current_stream().synchronize()
    pool.free_all_blocks()  # the limit counts cached free blocks too
    # 1 MiB more than x and w hold: the 4.5 MiB column buffer cannot be allocated.
    pool.set_limit(size=pool.total_bytes() + (1 << 20))
    try:
        with pytest.raises(GPUOutOfMemoryError) as info:
            F.conv(x, w, padding=1)
    finally:
        pool.set_limit(size=0)  # no limit
    err = info.value
    assert isinstance(err, MemoryError)
    assert err.requested_bytes is not None and err.requested_bytes > 1 << 20
    assert "forward pass" in str(err) and "(4, 8, 64, 64)" in str(err)
    assert isinstance(err.__cause__, cp.cuda.memory.OutOfMemoryError)


def test_conv_layers_forward_and_backward(cp):
    from foldconv.nn import Conv1d, Conv2d, Conv3d, ConvTranspose2d

    rng = np.random.default_rng(4)
    cases = (
        (Conv1d(2, 4, 3, padding=1, groups=2, rng=0), (2, 2, 7)),
        (Conv2d(3, 6, 3, stride=2, padding=1, rng=0), (2, 3, 8, 8)),
        (Conv2d(4, 4, 3, padding=1, groups=4, rng=0), (2, 4, 6, 6)),  # depthwise
        (Conv3d(2, 3, 2, padding=(1, 0, 1), rng=0), (1, 2, 3, 4, 3)),
        (ConvTranspose2d(2, 3, 3, stride=2, output_padding=1, rng=0), (1, 2, 3, 3)),
    )
    for layer, xs in cases:
        layer.to(dtype=np.float64)
        x = rng.standard_normal(xs)
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        dw, db = layer.weight.grad.copy(), layer.bias.grad.copy()
        layer.zero_grad()
        layer.to("cuda")
        close(layer.forward(cp.asarray(x)), y, np.float64)
        close(layer.backward(cp.asarray(dy)), dx, np.float64)
        close(layer.weight.grad, dw, np.float64)
        close(layer.bias.grad, db, np.float64)
        layer.to("cpu")
        assert type(to_cpu(layer.weight.data)) is np.ndarray
