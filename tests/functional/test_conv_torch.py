"""The convolution operator against PyTorch float64 autograd, over random configurations.

Every configuration is drawn by hypothesis: spatial rank 1/2/3, stride, dilation, groups
(depthwise included), every padding form (int, per-dimension tuple, per-dimension (low, high)
pairs, "valid", "same" at any stride) and mode, batched or unbatched, float64/float32/float16,
and each forward/backward algorithm. The reference pads explicitly with ``F.pad`` (torch lists
pads last dimension first) and then convolves without padding, so asymmetric padding, 'same'
at stride > 1 (TensorFlow's rule, computed here independently) and the non-zero modes are all
checked against the same oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import foldconv.functional as fc
from tests.functional.conv_cases import (
    MODES,
    PAD_FORMS,
    dim_ok,
    dim_pads,
    draw_geometry,
    same_pad,
    torch_pad_list,
)
from tests.gradcheck import rel_err

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = (np.float64, np.float64, np.float32, np.float16)
FWD_ALGS = ("auto", "direct", "im2col")
BWD_ALGS = ("auto", "direct", "im2col", "full_conv")
# Relative to the reference's max magnitude. A float16 result computed in float32 and rounded
# once to float16 is off by at most half an ulp, 2**-11 = 4.88e-4 of its value; 5e-4 leaves
# room only for that rounding and float32's own error, not for float16 accumulation.
TOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 5e-4}
TORCH_CONV = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
TORCH_CONVT = {1: "conv_transpose1d", 2: "conv_transpose2d", 3: "conv_transpose3d"}
TORCH_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


# ----------------------------------------------------------------------------------------
# Independent helpers: TF 'same' rule, padding normalisation, torch references
# ----------------------------------------------------------------------------------------
def t64(a, grad: bool = False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def np64(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def as_arg(values: tuple[int, ...], scalar: bool):
    """An int when all values agree and ``scalar`` asks for it, else the tuple."""
    if scalar and len(set(values)) == 1:
        return values[0]
    return values


@dataclass
class ConvCase:
    rank: int
    batch: int | None  # None: unbatched
    groups: int
    cin_g: int
    cout_g: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: object
    pads: list[tuple[int, int]]
    mode: str
    sizes: tuple[int, ...]
    stride_arg: object
    dilation_arg: object
    bias: bool
    dtype: type
    seed: int

    def arrays(self):
        rng = np.random.default_rng(self.seed)
        c_in, c_out = self.cin_g * self.groups, self.cout_g * self.groups
        lead = () if self.batch is None else (self.batch,)
        x = rng.standard_normal(lead + (c_in,) + self.sizes).astype(self.dtype)
        w = rng.standard_normal((c_out, self.cin_g) + self.kernel).astype(self.dtype)
        b = rng.standard_normal(c_out).astype(self.dtype) if self.bias else None
        return x, w, b, rng


@st.composite
def conv_cases(draw, modes=MODES, forms=PAD_FORMS, dtypes=DTYPES):
    geo = draw_geometry(draw, modes, forms)
    stride, dilation = geo["stride"], geo["dilation"]
    return ConvCase(
        **geo,
        batch=draw(st.sampled_from((None, 1, 2))),
        stride_arg=as_arg(stride, draw(st.booleans())),
        dilation_arg=as_arg(dilation, draw(st.booleans())),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def torch_conv_reference(case: ConvCase, x, w, b, rng):
    """Forward and the three gradients by torch autograd in float64 (explicit F.pad)."""
    xt, wt = t64(x, True), t64(w, True)
    bt = t64(b if b is not None else np.zeros(w.shape[0]), True)
    xb = xt if case.batch is not None else xt.unsqueeze(0)
    flat = torch_pad_list(case.pads)
    if any(flat):
        xb = F.pad(xb, flat, mode=TORCH_MODE[case.mode])
    conv = getattr(F, TORCH_CONV[case.rank])
    y = conv(xb, wt, bt, stride=case.stride, padding=0, dilation=case.dilation, groups=case.groups)
    if case.batch is None:
        y = y.squeeze(0)
    g = rng.standard_normal(tuple(y.shape)).astype(case.dtype)
    y.backward(t64(g))
    return np64(y), g, np64(xt.grad), np64(wt.grad), np64(bt.grad)


# ----------------------------------------------------------------------------------------
# conv / conv_backward
# ----------------------------------------------------------------------------------------
@given(conv_cases(), st.sampled_from(FWD_ALGS), st.sampled_from(BWD_ALGS))
def test_conv_forward_and_gradients_match_torch(case, fwd_alg, bwd_alg):
    x, w, b, rng = case.arrays()
    y_ref, g, gx_ref, gw_ref, gb_ref = torch_conv_reference(case, x, w, b, rng)
    opts = dict(
        stride=case.stride_arg,
        padding=case.padding,
        dilation=case.dilation_arg,
        groups=case.groups,
        padding_mode=case.mode,
    )
    tol = TOL[case.dtype]

    y = fc.conv(x, w, b, **opts, algorithm=fwd_alg)
    assert y.dtype == case.dtype
    assert rel_err(y, y_ref) <= tol, case

    gx, gw, gb = fc.conv_backward(g, x, w, **opts, algorithm=bwd_alg)
    assert gx.dtype == gw.dtype == gb.dtype == case.dtype
    assert gb.shape == (w.shape[0],)
    assert rel_err(gx, gx_ref) <= tol, case
    assert rel_err(gw, gw_ref) <= tol, case
    assert rel_err(gb, gb_ref) <= tol, case


@settings(max_examples=25)
@given(conv_cases(forms=("same",), dtypes=(np.float64,)))
def test_same_padding_output_is_ceil_of_input_over_stride(case):
    x, w, b, rng = case.arrays()
    y = fc.conv(
        x,
        w,
        b,
        stride=case.stride_arg,
        padding="same",
        dilation=case.dilation_arg,
        groups=case.groups,
        padding_mode=case.mode,
    )
    expected = tuple(-(-n // s) for n, s in zip(case.sizes, case.stride, strict=True))
    assert y.shape[-case.rank :] == expected
    y_ref = torch_conv_reference(case, x, w, b, rng)[0]
    assert rel_err(y, y_ref) <= 1e-10


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kernel,dilation,sizes",
    [((4,), (1,), (7,)), ((3, 2), (2, 1), (6, 5)), ((2, 3, 4), (1, 2, 1), (5, 6, 5))],
)
def test_same_at_stride_one_matches_torch_builtin_same(mode, kernel, dilation, sizes):
    """Cross-checks the reference's TF rule against torch's own padding='same' (stride 1)."""
    rank = len(kernel)
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((2, 3) + sizes)
    w = rng.standard_normal((2, 3) + kernel)
    b = rng.standard_normal(2)
    conv = getattr(F, TORCH_CONV[rank])
    pads = [same_pad(n, k, 1, d) for n, k, d in zip(sizes, kernel, dilation, strict=True)]
    xp = F.pad(t64(x), torch_pad_list(pads), mode=TORCH_MODE[mode])
    mine = conv(xp, t64(w), t64(b), dilation=dilation)
    if mode == "zeros":
        builtin = conv(t64(x), t64(w), t64(b), padding="same", dilation=dilation)
        assert rel_err(np64(mine), np64(builtin)) <= 1e-12
    y = fc.conv(x, w, b, padding="same", dilation=dilation, padding_mode=mode)
    assert rel_err(y, np64(mine)) <= 1e-10


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "c_in,c_out,k,stride,padding,dilation,groups,mode",
    [
        (16, 24, 3, 1, 1, 1, 1, "zeros"),  # VGG-like 3x3
        (16, 16, 3, 1, "same", 2, 1, "reflect"),
        (16, 32, 3, 1, 1, 1, 4, "zeros"),
        (16, 16, 3, 1, 1, 1, 16, "zeros"),  # depthwise
        (16, 32, 3, 2, 1, 1, 16, "replicate"),  # depthwise multiplier 2, strided
        (16, 16, 5, 1, 2, 1, 16, "circular"),
        (16, 32, 1, 1, 0, 1, 1, "zeros"),  # pointwise
        (16, 32, 1, 2, 0, 1, 2, "zeros"),
        (8, 16, (7, 5), 2, ((3, 2), (1, 3)), 1, 1, "zeros"),
    ],
)
def test_realistic_2d_layers_match_torch(
    c_in, c_out, k, stride, padding, dilation, groups, mode, dtype
):
    """Larger layers, where 'auto' may pick its fast paths (e.g. 3x3 or depthwise kernels)."""
    rng = np.random.default_rng(c_in + c_out + groups)
    kernel = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((2, c_in, 20, 18)).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    case = ConvCase(
        rank=2,
        batch=2,
        groups=groups,
        cin_g=c_in // groups,
        cout_g=c_out // groups,
        kernel=kernel,
        stride=(stride, stride),
        dilation=(dilation, dilation),
        padding=padding,
        pads=[dim_pads(padding, i, n, kernel[i], stride, dilation) for i, n in enumerate((20, 18))],
        mode=mode,
        sizes=(20, 18),
        stride_arg=stride,
        dilation_arg=dilation,
        bias=True,
        dtype=dtype,
        seed=0,
    )
    y_ref, g, gx_ref, gw_ref, gb_ref = torch_conv_reference(case, x, w, b, rng)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    opts["padding_mode"] = mode
    tol = TOL[dtype]
    # (the slow 'direct' reference is compared on small shapes elsewhere)
    for alg in ("auto", "im2col"):
        assert rel_err(fc.conv(x, w, b, **opts, algorithm=alg), y_ref) <= tol, alg
    for alg in ("auto", "im2col", "full_conv"):
        gx, gw, gb = fc.conv_backward(g, x, w, **opts, algorithm=alg)
        assert rel_err(gx, gx_ref) <= tol, alg
        assert rel_err(gw, gw_ref) <= tol, alg
        assert rel_err(gb, gb_ref) <= tol, alg


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_rank_specific_wrappers_match_torch(rank):
    rng = np.random.default_rng(10 + rank)
    sizes = (9, 8, 6)[:rank]
    x = rng.standard_normal((2, 4) + sizes)
    w = rng.standard_normal((6, 2) + (3,) * rank)
    b = rng.standard_normal(6)
    ours = getattr(fc, f"conv{rank}d")(x, w, b, stride=2, padding=1, dilation=1, groups=2)
    ref = getattr(F, TORCH_CONV[rank])(t64(x), t64(w), t64(b), stride=2, padding=1, groups=2)
    assert rel_err(ours, np64(ref)) <= 1e-10


# ----------------------------------------------------------------------------------------
# conv_transpose / conv_transpose_backward
# ----------------------------------------------------------------------------------------
@st.composite
def transpose_cases(draw, dtypes=DTYPES):
    rank = draw(st.integers(1, 3))
    smax = (6, 5, 3)[rank - 1]
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    cin_g = draw(st.integers(1, 2))
    cout_g = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(rank))
    outpad = tuple(
        draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
    )
    sizes = []
    for i in range(rank):
        n = draw(st.integers(1, smax))
        while (n - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + outpad[
            i
        ] + 1 < 1:
            n += 1
        sizes.append(n)
    return dict(
        rank=rank,
        batch=draw(st.sampled_from((None, 1, 2))),
        groups=groups,
        cin_g=cin_g,
        cout_g=cout_g,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        output_padding=outpad,
        sizes=tuple(sizes),
        scalar=draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(transpose_cases())
def test_conv_transpose_forward_and_gradients_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    dtype, groups, rank = case["dtype"], case["groups"], case["rank"]
    c_in, c_out = case["cin_g"] * groups, case["cout_g"] * groups
    lead = () if case["batch"] is None else (case["batch"],)
    x = rng.standard_normal(lead + (c_in,) + case["sizes"]).astype(dtype)
    w = rng.standard_normal((c_in, case["cout_g"]) + case["kernel"]).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if case["bias"] else None
    sc = case["scalar"]
    opts = dict(
        stride=as_arg(case["stride"], sc),
        padding=as_arg(case["padding"], sc),
        output_padding=as_arg(case["output_padding"], sc),
        groups=groups,
        dilation=as_arg(case["dilation"], sc),
    )

    xt, wt = t64(x, True), t64(w, True)
    bt = t64(b if b is not None else np.zeros(c_out), True)
    convt = getattr(F, TORCH_CONVT[rank])
    y_t = convt(
        xt if lead else xt.unsqueeze(0),
        wt,
        bt,
        stride=case["stride"],
        padding=case["padding"],
        output_padding=case["output_padding"],
        groups=groups,
        dilation=case["dilation"],
    )
    if not lead:
        y_t = y_t.squeeze(0)
    g = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(t64(g))
    tol = TOL[dtype]

    y = fc.conv_transpose(x, w, b, **opts)
    assert y.dtype == dtype
    assert rel_err(y, np64(y_t)) <= tol, case
    gx, gw, gb = fc.conv_transpose_backward(g, x, w, **opts)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert rel_err(gx, np64(xt.grad)) <= tol, case
    assert rel_err(gw, np64(wt.grad)) <= tol, case
    assert rel_err(gb, np64(bt.grad)) <= tol, case


# ----------------------------------------------------------------------------------------
# unfold / fold
# ----------------------------------------------------------------------------------------
def torch_unfold_any_rank(xt, kernel, dilation, padding, stride):
    """unfold via a grouped conv whose kernel is the identity on the kernel window.

    Output channel c * prod(k) + j reads input channel c at window position j (row-major),
    which is PyTorch's F.unfold layout.
    """
    n, c = xt.shape[:2]
    kk = math.prod(kernel)
    eye = torch.eye(kk, dtype=torch.float64).reshape((kk, 1) + tuple(kernel))
    eye = eye.repeat((c,) + (1,) * (len(kernel) + 1))
    conv = getattr(F, TORCH_CONV[len(kernel)])
    y = conv(xt, eye, stride=stride, padding=padding, dilation=dilation, groups=c)
    return y.reshape(n, c * kk, -1)


def torch_fold_any_rank(cols, output_size, kernel, dilation, padding, stride):
    """fold is the adjoint of unfold: the gradient of <unfold(x), cols> with respect to x."""
    n = cols.shape[0]
    c = cols.shape[1] // math.prod(kernel)
    xt = torch.zeros((n, c) + tuple(output_size), dtype=torch.float64, requires_grad=True)
    (torch_unfold_any_rank(xt, kernel, dilation, padding, stride) * t64(cols)).sum().backward()
    return np64(xt.grad)


@st.composite
def unfold_cases(draw, ranks=(1, 2, 3)):
    rank = draw(st.sampled_from(ranks))
    smax = (8, 7, 4)[rank - 1]
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(rank))
    sizes = []
    for i in range(rank):
        n = draw(st.integers(1, smax))
        while n + 2 * padding[i] < dilation[i] * (kernel[i] - 1) + 1:
            n += 1
        sizes.append(n)
    return dict(
        rank=rank,
        batch=draw(st.sampled_from((None, 1, 2))),
        channels=draw(st.integers(1, 3)),
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        sizes=tuple(sizes),
        scalar=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _unfold_opts(case, scalar_kernel: bool):
    sc = case["scalar"]
    return dict(
        kernel_size=as_arg(case["kernel"], scalar_kernel),
        dilation=as_arg(case["dilation"], sc),
        padding=as_arg(case["padding"], sc),
        stride=as_arg(case["stride"], sc),
    )


@given(unfold_cases())
def test_unfold_and_fold_match_torch(case):
    rng = np.random.default_rng(case["seed"])
    dtype, rank = case["dtype"], case["rank"]
    lead = () if case["batch"] is None else (case["batch"],)
    x = rng.standard_normal(lead + (case["channels"],) + case["sizes"]).astype(dtype)
    # an int kernel_size means rank x.ndim - 2, so only batched input may use it
    opts = _unfold_opts(case, scalar_kernel=bool(lead) and case["scalar"])
    geo = (case["kernel"], case["dilation"], case["padding"], case["stride"])
    xb = x if lead else x[None]
    ref = np64(torch_unfold_any_rank(t64(xb), *geo))
    if rank == 2:  # the identity-kernel construction is itself checked against F.unfold
        builtin = F.unfold(
            t64(xb),
            case["kernel"],
            dilation=case["dilation"],
            padding=case["padding"],
            stride=case["stride"],
        )
        assert rel_err(ref, np64(builtin)) <= 1e-14
    if not lead:
        ref = ref[0]
    tol = TOL[dtype]

    cols = fc.unfold(x, **opts)
    assert cols.dtype == dtype
    assert rel_err(cols, ref) <= tol, case

    c = rng.standard_normal(ref.shape).astype(dtype)
    cb = c if lead else c[None]
    fold_ref = torch_fold_any_rank(cb, case["sizes"], *geo)
    if rank == 2:
        builtin = F.fold(
            t64(cb),
            case["sizes"],
            case["kernel"],
            dilation=case["dilation"],
            padding=case["padding"],
            stride=case["stride"],
        )
        assert rel_err(fold_ref, np64(builtin)) <= 1e-14
    if not lead:
        fold_ref = fold_ref[0]
    folded = fc.fold(c, case["sizes"], **_unfold_opts(case, scalar_kernel=False))
    assert folded.dtype == dtype
    assert rel_err(folded, fold_ref) <= tol, case


def test_fold_2d_with_int_arguments_matches_torch():
    rng = np.random.default_rng(5)
    cols = rng.standard_normal((2, 3 * 9, 25))  # 5 x 5 blocks
    ours = fc.fold(cols, (9, 9), 3, dilation=1, padding=1, stride=2)
    ref = F.fold(t64(cols), (9, 9), 3, dilation=1, padding=1, stride=2)
    assert rel_err(ours, np64(ref)) <= 1e-10


# ----------------------------------------------------------------------------------------
# pad / pad_backward
# ----------------------------------------------------------------------------------------
@st.composite
def pad_cases(draw):
    rank = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(MODES))
    pads, sizes = [], []
    for _ in range(rank):
        lo, hi = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        n = draw(st.integers(1, 5))
        while not dim_ok(n, lo, hi, 1, 1, mode):
            n += 1
        pads.append((lo, hi))
        sizes.append(n)
    return (
        rank,
        mode,
        tuple(pads),
        tuple(sizes),
        draw(st.sampled_from(DTYPES)),
        draw(st.integers(0, 2**32 - 1)),
    )


@given(pad_cases())
def test_pad_and_pad_backward_match_torch(case):
    rank, mode, pads, sizes, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2) + sizes).astype(dtype)
    xt = t64(x, True)
    yt = F.pad(xt, torch_pad_list(pads), mode=TORCH_MODE[mode])
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(t64(g))

    y = fc.pad(x, pads, mode=mode)
    assert y.dtype == dtype
    assert rel_err(y, np64(yt)) == 0.0, case  # padding copies values: exact
    gx = fc.pad_backward(g, x.shape, pads, mode=mode)
    assert gx.dtype == dtype
    assert rel_err(gx, np64(xt.grad)) <= TOL[dtype], case
