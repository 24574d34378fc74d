"""The fast paths behind algorithm='auto' pass the same oracles as the plain path.

Winograd, the direct depthwise kernel, both im2col buffer layouts and the full-convolution
input gradient are checked against PyTorch's float64 autograd (when installed) and,
independently, against the seed's direct sums and float64 finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import foldconv
from foldconv import _openblas_env
from foldconv.functional import (
    _args,
    conv,
    conv_backward,
    conv_transpose,
    conv_transpose_backward,
    dispatch,
    im2col,
    winograd,
)
from foldconv.functional.direct import (
    conv_forward_direct,
    conv_input_grad_direct,
    conv_weight_grad_direct,
)
from foldconv.functional.padding import apply_pad
from tests.functional.conv_cases import finite_difference_errors
from tests.gradcheck import directional_check, rel_err


def _case(rng, n, c, o, size, kernel, stride, padding, dilation, groups, dtype=np.float64):
    x = rng.standard_normal((n, c) + size).astype(dtype)
    w = (rng.standard_normal((o, c // groups) + kernel) / np.sqrt(c * np.prod(kernel))).astype(
        dtype
    )
    return x, w


@st.composite
def winograd_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.integers(1, 4))
    o = groups * draw(st.integers(1, 4))
    r = draw(st.sampled_from([3, 5]))
    # Outputs of 24 and more take F(4x4) (dispatch.winograd_tile), smaller ones F(2x2).
    size = (draw(st.integers(r, 30)), draw(st.integers(r, 30)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    extent_ok = all(
        s + lo + hi >= (r - 1) * d + 1 for s, (lo, hi), d in zip(size, pads, dilation, strict=True)
    )
    if not extent_ok:
        pads = tuple((d * (r - 1) // 2,) * 2 for d in dilation)
    return c, o, size, r, dilation, pads, groups, draw(st.integers(0, 2**16))


@given(winograd_cases())
@settings(max_examples=40)
def test_winograd_matches_direct_sums(case):
    c, o, size, r, dilation, pads, groups, seed = case
    rng = np.random.default_rng(seed)
    x, w = _case(rng, 2, c, o, size, (r, r), 1, pads, dilation, groups)
    y_ref = conv(x, w, padding=pads, dilation=dilation, groups=groups, algorithm="direct")
    y = conv(x, w, padding=pads, dilation=dilation, groups=groups, algorithm="winograd")
    assert rel_err(y, y_ref) <= 1e-10
    dy = rng.standard_normal(y.shape)
    ref = conv_backward(
        dy, x, w, padding=pads, dilation=dilation, groups=groups, algorithm="direct"
    )
    got = conv_backward(
        dy, x, w, padding=pads, dilation=dilation, groups=groups, algorithm="winograd"
    )
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("m,r", [(1, 3), (2, 3), (3, 3), (4, 3), (6, 3), (2, 5), (3, 5), (4, 5)])
def test_every_winograd_tile_size_matches_direct_sums(m, r):
    """Each generated F(m, r), in 1-d and through the 2-d forward and weight gradient."""
    bt, g_mat, at = winograd.transforms(m, r)
    assert bt.shape == (m + r - 1,) * 2 and g_mat.shape == (m + r - 1, r)
    assert at.shape == (m, m + r - 1)
    rng = np.random.default_rng(m * 10 + r)
    d, k = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    want = np.array([d[i : i + r] @ k for i in range(m)])
    assert rel_err(at @ ((g_mat @ k) * (bt @ d)), want) <= 1e-13
    x, w = _case(rng, 2, 4, 6, (11, 9), (r, r), 1, 0, 1, 2)
    g = _args.conv_geometry(x.shape, w.shape, 1, 0, (2, 1), 2, "zeros")
    dy = rng.standard_normal((2, 6) + g.out_shape)
    assert rel_err(winograd.forward(x, w, g, m), conv_forward_direct(x, w, g)) <= 1e-12
    assert rel_err(winograd.weight_grad(dy, x, g, m), conv_weight_grad_direct(dy, x, g)) <= 1e-12


def test_winograd_rejects_a_tile_it_has_no_points_for():
    with pytest.raises(ValueError, match="F\\(m, r\\)"):
        winograd.transforms(8, 3)


@st.composite
def depthwise_cases(draw):
    ndim = draw(st.integers(1, 3))
    c = draw(st.integers(2, 5))
    mult = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(4, 9 if ndim < 3 else 6)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    pad = draw(st.integers(0, 1))
    return ndim, c, mult, size, kernel, stride, dilation, pad, mode, draw(st.integers(0, 2**16))


@given(depthwise_cases())
@settings(max_examples=40)
def test_depthwise_matches_direct_sums(case):
    ndim, c, mult, size, kernel, stride, dilation, pad, mode, seed = case
    rng = np.random.default_rng(seed)
    x, w = _case(rng, 2, c, c * mult, size, kernel, stride, pad, dilation, c)
    opts = dict(stride=stride, padding=pad, dilation=dilation, groups=c, padding_mode=mode)
    y = conv(x, w, **opts, algorithm="depthwise")
    assert rel_err(y, conv(x, w, **opts, algorithm="direct")) <= 1e-10
    dy = rng.standard_normal(y.shape)
    got = conv_backward(dy, x, w, **opts, algorithm="depthwise")
    ref = conv_backward(dy, x, w, **opts, algorithm="direct")
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) <= 1e-10


LAYOUT_CASES = [  # size, kernel, stride, pads, dilation, groups
    ((9, 10), (3, 2), (1, 1), ((2, 0), (1, 3)), (2, 1), 2),
    ((6, 5, 7), (2, 3, 2), (1, 1, 1), ((1, 0), (0, 2), (1, 1)), (2, 1, 3), 3),
    ((7, 8), (3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    ((9,), (3,), (1,), ((2, 2),), (2,), 3),
    ((5, 6, 5), (2, 3, 2), (1, 2, 1), ((1, 1),) * 3, (1, 1, 1), 1),
    ((6, 6), (1, 1), (1, 1), ((0, 0),) * 2, (1, 1), 1),  # pointwise: no unfold
    ((6, 6), (1, 1), (2, 2), ((0, 0),) * 2, (1, 1), 3),  # strided pointwise
]


@pytest.mark.parametrize(
    "layout,size,kernel,stride,pads,dilation,groups",
    [(layout, *case) for layout in ("sample", "batch", "flat") for case in LAYOUT_CASES],
)
def test_im2col_layouts_match_direct_sums(layout, size, kernel, stride, pads, dilation, groups):
    rng = np.random.default_rng(0)
    x, w = _case(rng, 3, 6, 6, size, kernel, stride, pads, dilation, groups)
    g = _args.conv_geometry(x.shape, w.shape, stride, pads, dilation, groups, "zeros")
    xp_ = apply_pad(x, g.pads, "zeros")
    y = conv_forward_direct(xp_, w, g)
    dy = rng.standard_normal(y.shape)
    assert rel_err(im2col.forward(xp_, w, g, layout), y) <= 1e-12
    assert rel_err(im2col.input_grad(dy, w, g, layout), conv_input_grad_direct(dy, w, g)) <= 1e-12
    assert (
        rel_err(im2col.weight_grad(dy, xp_, g, layout), conv_weight_grad_direct(dy, xp_, g))
        <= 1e-12
    )


@pytest.mark.parametrize("algorithm", ["winograd", "depthwise", "full_conv"])
def test_fast_paths_pass_finite_differences(algorithm):
    rng = np.random.default_rng(5)
    if algorithm == "depthwise":
        x, w = _case(rng, 2, 3, 6, (7, 6), (3, 3), 1, 1, 1, 3)
        opts = dict(padding=1, groups=3, stride=(2, 1))
    else:
        x, w = _case(rng, 2, 4, 6, (7, 6), (3, 3), 1, 1, 1, 2)
        opts = dict(padding=((2, 1), (1, 1)), dilation=(2, 1), groups=2)
    y = conv(x, w, **opts, algorithm="auto")
    r = rng.standard_normal(y.shape)

    def loss_x(xv):
        return float(np.sum(conv(xv, w, **opts, algorithm="direct") * r))

    def loss_w(wv):
        return float(np.sum(conv(x, wv, **opts, algorithm="direct") * r))

    dx, dw, _ = conv_backward(r, x, w, **opts, algorithm=algorithm)
    assert directional_check(loss_x, x, dx, rng) < 1e-7
    assert directional_check(loss_w, w, dw, rng) < 1e-7


@pytest.mark.parametrize("r,size", [(3, (26, 25)), (5, (9, 8))])
def test_winograd_tiles_pass_finite_differences(r, size):
    """F(4x4, 3x3) (outputs of 24 and more) and F(2x2, 5x5) against float64 central
    differences of the direct sums."""
    rng = np.random.default_rng(9)
    x, w = _case(rng, 2, 3, 4, size, (r, r), 1, 1, 1, 1)
    opts = dict(padding=r // 2)
    g = _args.conv_geometry(x.shape, w.shape, 1, r // 2, 1, 1, "zeros")
    assert dispatch.winograd_tile(np.dtype(np.float64), r, g.out_shape) == (4 if r == 3 else 2)
    err_x, err_w = finite_difference_errors(x, w, opts, "winograd", rng)
    assert err_x < 1e-7
    assert err_w < 1e-7


@pytest.mark.parametrize(
    "c,k,size,r,m",
    [
        (256, 384, (13, 13), 3, 2),
        (64, 64, (30, 30), 3, 4),
        (256, 128, (26, 25), 3, 4),
        (128, 96, (9, 17), 3, 2),
        (48, 128, (27, 27), 5, 2),
        (6, 16, (14, 14), 5, 2),
    ],
)
def test_winograd_float32_error_within_promise(c, k, size, r, m):
    """The tiles float32 takes keep all three passes within 1e-5 of a float64 reference
    (max |err| / max |ref|; F(4x4, 5x5) and F(4x4, 3x3) on the points 0, ±1, ±2 do not)."""
    rng = np.random.default_rng(1)
    pad = r // 2
    x, w = _case(rng, 2, c, k, size, (r, r), 1, 1, 1, 1)
    ref = conv(x, w, padding=pad, algorithm="im2col")
    assert dispatch.winograd_tile(np.dtype(np.float32), r, ref.shape[2:]) == m
    y32 = conv(x.astype(np.float32), w.astype(np.float32), padding=pad, algorithm="winograd")
    assert y32.dtype == np.float32
    assert rel_err(y32, ref) <= 1e-5
    dy = rng.standard_normal(ref.shape)
    dx_ref, dw_ref, _ = conv_backward(dy, x, w, padding=pad, algorithm="im2col")
    dx32, dw32, _ = conv_backward(
        dy.astype(np.float32),
        x.astype(np.float32),
        w.astype(np.float32),
        padding=pad,
        algorithm="winograd",
    )
    assert rel_err(dx32, dx_ref) <= 1e-5
    assert rel_err(dw32, dw_ref) <= 1e-5


def test_winograd_tiles_over_the_batch_within_the_workspace_limit():
    rng = np.random.default_rng(2)
    x, w = _case(rng, 5, 8, 8, (12, 12), (3, 3), 1, 1, 1, 1)
    ref = conv(x, w, padding=1, algorithm="winograd")
    g = _args.conv_geometry(x.shape, w.shape, 1, 1, 1, 1, "zeros")
    per_sample = winograd._bytes_per_sample(g, 4, 8, g.out_shape)
    previous = foldconv.set_workspace_limit(2 * per_sample)
    try:
        assert winograd.fits(g, 4, 8)
        tiled = conv(x, w, padding=1, algorithm="winograd")
        foldconv.set_workspace_limit(per_sample // 2)
        assert not winograd.fits(g, 4, 8)
        assert dispatch.cost_model("forward", g, np.dtype(np.float64)) != "winograd"
    finally:
        foldconv.set_workspace_limit(previous)
    assert rel_err(tiled, ref) <= 1e-14


def test_transposed_convolution_runs_every_fast_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 6, 7))
    w = rng.standard_normal((8, 4, 3, 3))
    ref = conv_transpose(x, w, padding=1, algorithm="direct")
    y = conv_transpose(x, w, padding=1, algorithm="winograd")
    assert rel_err(y, ref) <= 1e-10
    dy = rng.standard_normal(y.shape)
    got = conv_transpose_backward(dy, x, w, padding=1, algorithm="winograd")
    want = conv_transpose_backward(dy, x, w, padding=1, algorithm="direct")
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) <= 1e-10


@pytest.mark.parametrize(
    ("compiled", "cores", "sleep"),
    [(True, 2, True), (True, 64, True), (False, 2, True), (True, 2, False)],
)
def test_cost_model_on_the_suite(monkeypatch, compiled, cores, sleep):
    """``sleep``: whether OpenBLAS's idle workers sleep at once (foldconv/_openblas_env.py)."""
    if compiled:
        pytest.importorskip("numba")
    monkeypatch.setattr(dispatch, "available_cores", lambda: cores)
    monkeypatch.setattr(_openblas_env, "workers_sleep", lambda: sleep)
    previous = foldconv.set_compiled(compiled)
    try:
        blocks = compiled and cores == 2 and sleep
        _check_cost_model_on_the_suite("im2col_compiled" if blocks else "im2col")
    finally:
        foldconv.set_compiled(previous)


def _check_cost_model_on_the_suite(gemm):
    """``gemm``: what runs the layers that need a GEMM: blocks of samples on foldconv's
    pool (im2col_compiled) where the batch gives every core a block, else im2col."""
    f32 = np.dtype(np.float32)

    def geometry(n, c, o, size, k, s=1, p=0, d=1, groups=1):
        return _args.conv_geometry((n, c) + size, (o, c // groups, k, k), s, p, d, groups, "zeros")

    assert dispatch.cost_model(
        "forward", geometry(16, 32, 32, (112, 112), 3, 1, 1, 1, 32), f32
    ) == ("depthwise")
    assert dispatch.cost_model("forward", geometry(8, 256, 256, (56, 56), 3, 1, 1), f32) == (
        "winograd"
    )
    # A 1x1 stride-1 layer's columns are its input: plain im2col, no copy.
    assert dispatch.cost_model("forward", geometry(16, 256, 64, (56, 56), 1), f32) == "im2col"
    assert dispatch.cost_model("weight_grad", geometry(8, 256, 256, (56, 56), 3, 1, 1), f32) == (
        "winograd"
    )
    # Below 128 channels Winograd's transforms cost more than they save; dilated
    # layers' phases are too small for the forward.
    assert dispatch.cost_model("forward", geometry(8, 64, 64, (64, 64), 3, 1, 2, 2), f32) == gemm
    assert dispatch.cost_model("weight_grad", geometry(8, 64, 64, (56, 56), 3, 1, 1), f32) == gemm
    # The input gradient takes Winograd where it runs F(4x4): not on AlexNet's 13x13.
    vgg, alexnet_c3 = (
        geometry(8, 256, 256, (56, 56), 3, 1, 1),
        geometry(16, 256, 384, (13, 13), 3, 1, 1),
    )
    assert dispatch.cost_model("input_grad", vgg, f32) == "winograd"
    assert dispatch.cost_model("input_grad", alexnet_c3, f32) == gemm
    assert dispatch.cost_model("forward", alexnet_c3, f32) == "winograd"
    assert dispatch.cost_model("input_grad", geometry(8, 64, 64, (64, 64), 3, 1, 2, 2), f32) == (
        gemm
    )
    # F(2x2) below 256 channels a group gives way to the blocks where they can run
    # (AlexNet's grouped conv4: 192).
    alexnet_c4 = geometry(16, 384, 384, (13, 13), 3, 1, 1, 1, 2)
    for pass_ in ("forward", "weight_grad"):
        want = "winograd" if gemm == "im2col" else gemm
        assert dispatch.cost_model(pass_, alexnet_c4, f32) == want
    # 5x5 layers stay on a GEMM (F(2x2, 5x5) saves no time), though Winograd can run them.
    c2 = geometry(16, 96, 256, (27, 27), 5, 1, 2, 1, 2)
    assert "winograd" in dispatch.candidates("forward", c2, f32)
    assert dispatch.cost_model("forward", c2, f32) == gemm
    # A batch of one is one block: BLAS's threads share its GEMM.
    assert dispatch.cost_model("forward", geometry(1, 96, 256, (27, 27), 5, 1, 2), f32) == (
        "im2col"
    )


def test_autotuner_caches_a_supported_winner_and_keeps_results():
    rng = np.random.default_rng(4)
    x, w = _case(rng, 2, 8, 8, (10, 10), (3, 3), 1, 1, 1, 1)
    ref = conv(x, w, padding=1, algorithm="im2col")
    dispatch.clear_benchmark_cache()
    previous = foldconv.set_benchmark(True)
    try:
        y = conv(x, w, padding=1)
        conv_backward(np.ones_like(y), x, w, padding=1)
        tuned = dispatch.tuned_algorithms()
    finally:
        foldconv.set_benchmark(previous)
        dispatch.clear_benchmark_cache()
    assert rel_err(y, ref) <= 1e-12
    passes = {key[0]: name for key, name in tuned.items()}
    assert set(passes) == {"forward", "input_grad", "weight_grad"}
    # The winner of each pass is one of its candidates (timing decides which).
    g = next(key[1] for key in tuned)
    for pass_, name in passes.items():
        assert name in dispatch.candidates(pass_, g, x.dtype), (pass_, name)
    assert passes["forward"] in ("im2col", "winograd", "direct_compiled", "im2col_compiled")


def test_bad_algorithm_requests():
    x = np.zeros((1, 4, 6, 6))
    with pytest.raises(ValueError, match="algorithm"):
        conv(x, np.zeros((4, 4, 3, 3)), stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm"):
        conv(x, np.zeros((4, 4, 3, 3)), algorithm="depthwise")
    with pytest.raises(ValueError, match="algorithm"):
        conv(x, np.zeros((4, 4, 3, 3)), algorithm="fft")
    with pytest.raises(ValueError, match="algorithm"):
        conv(x, np.zeros((4, 4, 3, 3)), algorithm="full_conv")  # a backward-only form
    with pytest.raises(TypeError, match="enabled"):
        foldconv.set_benchmark("yes")
    with pytest.raises(ValueError, match="n"):
        foldconv.set_num_threads(0)


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(6)
    x, w = _case(rng, 4, 16, 16, (20, 20), (3, 3), 1, 1, 1, 16, dtype=np.float32)
    previous = foldconv.set_num_threads(1)
    try:
        one = [conv(x, w, padding=1, groups=16)] + list(
            conv_backward(np.ones((4, 16, 20, 20), np.float32), x, w, padding=1, groups=16)
        )
        foldconv.set_num_threads(2)
        two = [conv(x, w, padding=1, groups=16)] + list(
            conv_backward(np.ones((4, 16, 20, 20), np.float32), x, w, padding=1, groups=16)
        )
    finally:
        foldconv.set_num_threads(previous)
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize(
    "algorithm,opts,c,o,k,size",
    [
        ("winograd", dict(padding=1), 16, 24, 3, (14, 13)),  # F(2x2, 3x3)
        ("winograd", dict(padding=1), 16, 24, 3, (27, 26)),  # F(4x4, 3x3)
        ("winograd", dict(padding=2, dilation=2, groups=2), 16, 8, 3, (14, 13)),
        ("winograd", dict(padding=2, groups=2), 16, 8, 5, (14, 13)),  # F(2x2, 5x5)
        ("depthwise", dict(padding=1, groups=12), 12, 12, 3, (14, 13)),
        ("depthwise", dict(padding=2, stride=2, groups=6), 6, 12, 3, (14, 13)),
        ("full_conv", dict(padding=1, stride=2, dilation=(1, 2)), 6, 10, 3, (14, 13)),
    ],
)
def test_fast_paths_match_torch(algorithm, opts, c, o, k, size, dtype, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    groups = opts.get("groups", 1)
    x, w = _case(rng, 3, c, o, size, (k, k), 1, 1, 1, groups)
    b = rng.standard_normal(o)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, **opts)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    cast = [a.astype(dtype) for a in (x, w, b, dy)]
    fwd_alg = "im2col" if algorithm == "full_conv" else algorithm
    y = conv(cast[0], cast[1], cast[2], **opts, algorithm=fwd_alg)
    dx, dw, db = conv_backward(cast[3], cast[0], cast[1], **opts, algorithm=algorithm)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    assert rel_err(y, yt.detach().numpy()) <= tol
    assert rel_err(dx, xt.grad.numpy()) <= tol
    assert rel_err(dw, wt.grad.numpy()) <= tol
    assert rel_err(db, bt.grad.numpy()) <= tol


def test_threaded_kernels_work_in_a_forked_child():
    """The pool is rebuilt after fork (a child inherits no worker threads)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    x = np.random.default_rng(0).standard_normal((4, 16, 64, 64)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((16, 1, 3, 3)).astype(np.float32)
    parent = conv(x, w, padding=1, groups=16)  # starts the pool in the parent
    with mp.get_context("fork").Pool(1) as pool:
        # Without the rebuild the child would wait forever on threads it does not have.
        child = pool.apply_async(conv, (x, w), dict(padding=1, groups=16)).get(timeout=60)
    assert np.array_equal(parent, child)


def test_transposed_1x1_with_output_padding_under_dilation():
    """Found by hypothesis: output_padding < dilation makes the output longer than a 1x1
    convolution's input; the pointwise fast path must not assume they are equal."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((3, 2, 1))
    opts = dict(stride=1, dilation=2, output_padding=1)
    y = conv_transpose(x, w, **opts)
    assert y.shape == (2, 2, 5)
    assert rel_err(y, conv_transpose(x, w, **opts, algorithm="direct")) <= 1e-12
    dy = rng.standard_normal(y.shape)
    got = conv_transpose_backward(dy, x, w, **opts)
    want = conv_transpose_backward(dy, x, w, **opts, algorithm="direct")
    for a, b in zip(got, want, strict=True):
        assert rel_err(a, b) <= 1e-12
