"""The convolution's GPU path (foldconv.cuda.conv) against the CPU path, in CI.

Inside gpu_path_on_cpu() the public functions take their GPU branch for NumPy arrays:
the numba-cuda kernels (im2col, col2im as a gather, the depthwise kernels) run in Numba's
CUDA simulator, the GEMMs in NumPy. Outside it the same call runs the CPU path, which the
torch and finite-difference tests of tests/functional check. Shapes are small: the
simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import foldconv  # noqa: E402
import foldconv.functional as F  # noqa: E402
from foldconv.cuda import conv as gpu_conv  # noqa: E402
from foldconv.cuda import kernels_conv  # noqa: E402
from foldconv.cuda.memory import GPUOutOfMemoryError  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402
from foldconv.functional import dispatch  # noqa: E402
from foldconv.functional._args import conv_geometry  # noqa: E402
from foldconv.functional.unfold import fold, unfold  # noqa: E402
from tests.functional.conv_cases import draw_geometry, torch_pad_list  # noqa: E402
from tests.gpu_kernels.conv_cases import (  # noqa: E402
    CONV_CASES,
    TRANSPOSE_CASES,
    UNFOLD_CASES,
    close,
)
from tests.gradcheck import directional_check, rel_err  # noqa: E402


def both(fn):
    """(fn() on the CPU path, fn() on the GPU path) as tuples of arrays."""
    cpu = fn()
    with gpu_path_on_cpu():
        gpu = fn()
    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    return as_tuple(cpu), as_tuple(gpu)


class Counter:
    """Counts the launches of the convolution kernels (to check which path ran)."""

    NAMES = ("im2col", "col2im_gather", "depthwise_forward", "depthwise_input_grad")
    NAMES += ("depthwise_weight_grad",)

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            k = getattr(kernels_conv, name)
            monkeypatch.setattr(kernels_conv, name, self._wrap(name, k))

    def _wrap(self, name, k):
        def launch(*args):
            self.calls.append(name)
            return k(*args)

        return launch


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_and_gradients_match_the_cpu_path(case, monkeypatch):
    xs, ws, opts = CONV_CASES[case]
    rng = np.random.default_rng(len(case))
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0])
    counter = Counter(monkeypatch)
    (y,), (yg,) = both(lambda: F.conv(x, w, b, **opts))
    close(yg, y, np.float64)
    dy = rng.standard_normal(y.shape)
    cpu, gpu = both(lambda: F.conv_backward(dy, x, w, **opts))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)
    # 'auto' on the GPU: the depthwise kernels for groups == C_in, im2col otherwise.
    depthwise = ws[1] == 1 and opts.get("groups", 1) > 1  # groups == C_in > 1
    assert ("depthwise_forward" in counter.calls) == depthwise
    assert ("im2col" in counter.calls) == (not depthwise)
    # A stride-1 1x1 layer's forward and input gradient are GEMMs alone (no fold).
    pointwise = all(k == 1 for k in ws[2:]) and opts.get("stride", 1) == 1
    assert ("col2im_gather" in counter.calls) == (not depthwise and not pointwise)
    if pointwise:
        assert counter.calls == ["im2col"]  # the weight gradient's columns only


@pytest.mark.parametrize("case", ["2d_asym_groups", "depthwise_2d_mult2", "3d_groups"])
def test_gpu_path_against_torch_and_finite_differences(case):
    """The two oracles of every hand-written gradient, applied to the GPU path directly."""
    torch = pytest.importorskip("torch")
    xs, ws, opts = CONV_CASES[case]
    rng = np.random.default_rng(21)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    g = conv_geometry(xs, ws, opts.get("stride", 1), opts.get("padding", 0),
                      opts.get("dilation", 1), opts.get("groups", 1), "zeros")  # fmt: skip
    with gpu_path_on_cpu():
        y = F.conv(x, w, b, **opts)
        r = rng.standard_normal(y.shape)
        dx, dw, db = F.conv_backward(r, x, w, **opts)
        worst = [
            directional_check(lambda v: float(np.sum(F.conv(v, w, b, **opts) * r)), x, dx, rng),
            directional_check(lambda v: float(np.sum(F.conv(x, v, b, **opts) * r)), w, dw, rng),
        ]
    assert max(worst) < 1e-7
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    conv = (None, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
            torch.nn.functional.conv3d)[len(ws) - 2]  # fmt: skip
    padded = torch.nn.functional.pad(tx, torch_pad_list(g.pads))
    ty = conv(padded, tw, tb, stride=g.stride, dilation=g.dilation, groups=g.groups)
    ty.backward(torch.tensor(r))
    assert rel_err(y, ty.detach().numpy()) <= 1e-10
    for ours, theirs in ((dx, tx), (dw, tw), (db, tb)):
        assert rel_err(ours, theirs.grad.numpy()) <= 1e-10


@pytest.mark.parametrize("threads,shares", [(1, 1), (2 * 2 * 9 * 2, 2), (2 * 2 * 9 * 3, 3)])
def test_depthwise_weight_grad_shares_of_rows(threads, shares, monkeypatch):
    # 2 samples x 2 channels x 9 taps per share; 7 output rows split unevenly.
    monkeypatch.setattr(gpu_conv, "DEPTHWISE_WEIGHT_GRAD_THREADS", threads)
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((2, 2, 7, 5)), rng.standard_normal((2, 1, 3, 3))
    g = conv_geometry(x.shape, w.shape, 1, 1, 1, 2, "zeros")
    assert gpu_conv.depthwise_weight_grad_shares(g) == shares
    dy = rng.standard_normal((2, 2, 7, 5))
    cpu, gpu = both(lambda: F.conv_backward(dy, x, w, padding=1, groups=2))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


@settings(max_examples=25)
@given(data=st.data())
def test_random_geometries_match_the_cpu_path(data):
    geo = data.draw(st.composite(draw_geometry)())
    n = data.draw(st.integers(1, 2))
    cin, cout = geo["groups"] * geo["cin_g"], geo["groups"] * geo["cout_g"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin) + geo["sizes"])
    w = rng.standard_normal((cout, geo["cin_g"]) + geo["kernel"])
    opts = dict(
        stride=geo["stride"],
        padding=geo["padding"],
        dilation=geo["dilation"],
        groups=geo["groups"],
        padding_mode=geo["mode"],
    )
    (y,), (yg,) = both(lambda: F.conv(x, w, **opts))
    close(yg, y, np.float64)
    dy = rng.standard_normal(y.shape)
    cpu, gpu = both(lambda: F.conv_backward(dy, x, w, **opts))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


@pytest.mark.parametrize("case", ["2d_asym_groups", "3d_groups", "depthwise_2d_mult2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float32_and_float16(case, dtype):
    xs, ws, opts = CONV_CASES[case]
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    (y,), (yg,) = both(lambda: F.conv(x, w, b, **opts))
    close(yg, y, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    cpu, gpu = both(lambda: F.conv_backward(dy, x, w, **opts))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, dtype)


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_and_gradients_match_the_cpu_path(case):
    xs, ws, opts = TRANSPOSE_CASES[case]
    rng = np.random.default_rng(len(case) + 7)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * opts.get("groups", 1))
    (y,), (yg,) = both(lambda: F.conv_transpose(x, w, b, **opts))
    close(yg, y, np.float64)
    dy = rng.standard_normal(y.shape)
    cpu, gpu = both(lambda: F.conv_transpose_backward(dy, x, w, **opts))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


@pytest.mark.parametrize("groups", [1, 2])
def test_empty_batch(groups):
    x, w = np.zeros((0, 2, 5, 5)), np.ones((2, 2 // groups, 3, 3))
    (y,), (yg,) = both(lambda: F.conv(x, w, np.ones(2), padding=1, groups=groups))
    assert yg.shape == y.shape == (0, 2, 5, 5)
    cpu, gpu = both(lambda: F.conv_backward(y, x, w, padding=1, groups=groups))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)
    assert not np.any(gpu[1])  # a weight gradient summed over no samples is zero
    cpu, gpu = both(lambda: F.conv_transpose_backward(x, x, w, padding=1, groups=groups))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


# ----------------------------------------------------------------------------------------
# Algorithm names on the GPU
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd", "full_conv"])
def test_explicit_algorithms_run_the_gpu_im2col(algorithm, monkeypatch):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((2, 2, 3, 3))
    dy = rng.standard_normal((1, 2, 6, 6))
    counter = Counter(monkeypatch)
    cpu, gpu = both(lambda: F.conv_backward(dy, x, w, padding=1, algorithm=algorithm))
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)
    assert counter.calls == ["im2col", "col2im_gather"]
    if algorithm != "full_conv":  # a backward-only name
        (y,), (yg,) = both(lambda: F.conv(x, w, padding=1, algorithm=algorithm))
        close(yg, y, np.float64)


@pytest.mark.parametrize("algorithm", ["auto", "im2col", "direct", "winograd", "depthwise"])
def test_no_cpu_kernel_runs_on_the_gpu_path(algorithm, monkeypatch):
    def cpu_kernel(*args, **kwargs):
        raise AssertionError("a CPU convolution kernel ran on the GPU path")

    poisoned = {
        p: {name: (ok, cpu_kernel) for name, (ok, _) in table.items()}
        for p, table in dispatch._KERNELS.items()
    }
    monkeypatch.setattr(dispatch, "_KERNELS", poisoned)
    monkeypatch.setattr(dispatch, "_pads_itself", cpu_kernel)
    monkeypatch.setattr(dispatch, "gemm_ready", cpu_kernel)
    rng = np.random.default_rng(8)
    groups = 2 if algorithm == "depthwise" else 1
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2 // groups, 3, 3))
    with gpu_path_on_cpu():
        y = F.conv(x, w, padding=1, groups=groups, algorithm=algorithm)
        F.conv_backward(y, x, w, padding=1, groups=groups, algorithm=algorithm)
        y = F.conv_transpose(x, w, padding=1, groups=groups, algorithm=algorithm)
        F.conv_transpose_backward(y, x, w, padding=1, groups=groups, algorithm=algorithm)


def test_unsupported_explicit_algorithms_are_the_same_error_on_both_paths():
    x, w = np.ones((1, 2, 9, 9)), np.ones((2, 2, 5, 5))
    for algorithm, match in (("winograd", "does not support"), ("depthwise", "does not support")):
        with pytest.raises(ValueError, match=match):
            F.conv(x, w, stride=2, algorithm=algorithm)
        with gpu_path_on_cpu(), pytest.raises(ValueError, match=match):
            F.conv(x, w, stride=2, algorithm=algorithm)
        with gpu_path_on_cpu(), pytest.raises(ValueError, match=match):
            F.conv(x[:0], w, stride=2, algorithm=algorithm)  # even with nothing to compute


def test_auto_algorithm_reports_the_gpu_choice():
    g = conv_geometry((2, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4, "zeros")
    g1 = conv_geometry((2, 256, 16, 16), (256, 256, 3, 3), 1, 1, 1, 1, "zeros")
    with gpu_path_on_cpu():
        assert dispatch.auto_algorithm("forward", g, np.float32, np) == "depthwise"
        assert dispatch.auto_algorithm("input_grad", g1, np.float32, np) == "im2col"
    assert dispatch.auto_algorithm("forward", g1, np.float32, np) == "winograd"  # the CPU's


# ----------------------------------------------------------------------------------------
# The workspace limit
# ----------------------------------------------------------------------------------------
@pytest.fixture
def restore_limit():
    previous = foldconv.get_workspace_limit()
    try:
        yield
    finally:
        foldconv.set_workspace_limit(previous)


@pytest.mark.parametrize("limit", [2000, 700, 150])
def test_workspace_limit_tiles_the_columns_and_changes_nothing(limit, restore_limit):
    # 2 input channels x 9 taps x 8 bytes = 144 bytes per output position, 3 x 4
    # positions per sample: 2000 bytes take one sample per tile, 700 one row of one
    # sample, 150 a single position.
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    opts = dict(padding=((1, 0), (1, 2)), stride=(1, 2), dilation=(2, 1))
    y = F.conv(x, w, **opts)
    dy = rng.standard_normal(y.shape)
    cpu = (y,) + F.conv_backward(dy, x, w, **opts)
    foldconv.set_workspace_limit(limit)
    g = conv_geometry(
        x.shape, w.shape, opts["stride"], opts["padding"], opts["dilation"], 1, "zeros"
    )
    plan = gpu_conv.tiles(g, 8)
    assert len(plan) > 1
    assert all(t.positions * 144 <= limit for t in plan)
    assert sum(t.positions for t in plan) == 3 * int(np.prod(g.out_shape))
    with gpu_path_on_cpu():
        gpu = (F.conv(x, w, **opts),) + F.conv_backward(dy, x, w, **opts)
    for g_, c_ in zip(gpu, cpu, strict=True):
        close(g_, c_, np.float64)


def test_workspace_limit_too_small_is_a_clear_error(restore_limit):
    foldconv.set_workspace_limit(100)  # one position needs 144 bytes
    x, w = np.ones((1, 2, 4, 4)), np.ones((1, 2, 3, 3))
    with gpu_path_on_cpu(), pytest.raises(ValueError, match="workspace limit"):
        F.conv(x, w)


# ----------------------------------------------------------------------------------------
# Out of memory
# ----------------------------------------------------------------------------------------
def test_out_of_memory_names_the_pass_the_shapes_and_the_bytes():
    # A 1x1 input padded by 10^7 on each side: a (1, 1, 20000001, 20000001) float64
    # output, 3.2 PB, which no allocator grants (beyond the address space, too).
    x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    with gpu_path_on_cpu(), pytest.raises(GPUOutOfMemoryError) as info:
        F.conv(x, w, padding=10**7)
    err = info.value
    assert isinstance(err, MemoryError)
    assert "forward pass" in str(err) and "(1, 1, 20000001, 20000001)" in str(err)
    assert err.requested_bytes == 8 * 20000001**2
    assert f"{8 * 20000001**2:,} bytes" in str(err)
    assert err.shapes["output"] == (1, 1, 20000001, 20000001)
    assert "set_workspace_limit" in str(err)


def test_out_of_memory_in_a_layer_names_the_layer_and_the_pass():
    from foldconv import nn

    model = nn.Sequential(nn.Identity(), nn.Conv2d(1, 1, 1, padding=10**7, dtype=np.float64))
    with gpu_path_on_cpu(), pytest.raises(GPUOutOfMemoryError) as info:
        model(np.ones((1, 1, 1, 1)))
    message = str(info.value)
    assert message.startswith("out of GPU memory in 1 (Conv2d) forward (input shape (1, 1, 1, 1)")
    assert "the convolution's forward pass" in message


# ----------------------------------------------------------------------------------------
# Reproducibility, layers, unfold / fold
# ----------------------------------------------------------------------------------------
def test_two_runs_are_bitwise_equal():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 4, 5, 5)).astype(np.float32), None
    for ws, groups in (((4, 2, 3, 3), 2), ((4, 1, 3, 3), 4)):
        w = rng.standard_normal(ws).astype(np.float32)
        dy = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
        with gpu_path_on_cpu():
            first = F.conv_backward(dy, x, w, padding=1, groups=groups)
            second = F.conv_backward(dy, x, w, padding=1, groups=groups)
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(a, b)


def test_conv_layers_forward_and_backward():
    from foldconv.nn import Conv1d, ConvTranspose2d

    rng = np.random.default_rng(4)
    for layer, xs in ((Conv1d(2, 4, 3, padding=1, groups=2, rng=0), (2, 2, 7)),
                      (ConvTranspose2d(2, 3, 3, stride=2, rng=0), (1, 2, 3, 3))):  # fmt: skip
        layer.to(dtype=np.float64)
        x = rng.standard_normal(xs)
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        dw, db = layer.weight.grad.copy(), layer.bias.grad.copy()
        layer.zero_grad()
        with gpu_path_on_cpu():
            close(layer.forward(x), y, np.float64)
            close(layer.backward(dy), dx, np.float64)
        close(layer.weight.grad, dw, np.float64)
        close(layer.bias.grad, db, np.float64)


@pytest.mark.parametrize("xs,kernel,opts", UNFOLD_CASES)
def test_unfold_and_fold_match_the_cpu_path(xs, kernel, opts):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(xs)
    (cols,), (cols_g,) = both(lambda: unfold(x, kernel, **opts))
    close(cols_g, cols, np.float64)
    size = xs[-len(kernel) :]
    c = rng.standard_normal(cols.shape)
    (back,), (back_g,) = both(lambda: fold(c, size, kernel, **opts))
    close(back_g, back, np.float64)
    x32 = x.astype(np.float32)
    (cols,), (cols_g,) = both(lambda: unfold(x32, kernel, **opts))
    close(cols_g, cols, np.float32)
