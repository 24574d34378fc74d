"""Properties of the convolution operator that need no PyTorch.

Float64 central finite differences for every gradient; an independent loop-over-the-output
NumPy reference (the seed's summation formula, padding done by ``np.pad``); the algorithms
agree (direct == im2col, col2im input gradient == full convolution input gradient);
adjointness and linearity; unfold/fold and pad/pad_backward adjointness; inputs never
modified; non-contiguous, negatively-strided and broadcast inputs; NaN/inf propagation;
'same' output shapes at strides 1..3; float16 in, float16 out, computed in float32.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import foldconv.functional as fc
from tests.functional.conv_cases import MODES, PAD_FORMS, dim_ok, draw_geometry, same_pad
from tests.gradcheck import numerical_grad, rel_err

NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
FWD_ALGS = ("direct", "im2col", "auto")
BWD_ALGS = ("direct", "im2col", "full_conv", "auto")


# ----------------------------------------------------------------------------------------
# Configurations and independent references
# ----------------------------------------------------------------------------------------
def tup(v, rank: int) -> tuple[int, ...]:
    return (v,) * rank if isinstance(v, int) else tuple(v)


@dataclass
class Case:
    rank: int
    batch: int | None
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
    bias: bool
    seed: int

    @property
    def opts(self) -> dict:
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.mode,
        )

    def arrays(self, dtype=np.float64):
        rng = np.random.default_rng(self.seed)
        c_in, c_out = self.cin_g * self.groups, self.cout_g * self.groups
        lead = () if self.batch is None else (self.batch,)
        x = rng.standard_normal(lead + (c_in,) + self.sizes).astype(dtype)
        w = rng.standard_normal((c_out, self.cin_g) + self.kernel).astype(dtype)
        b = rng.standard_normal(c_out).astype(dtype) if self.bias else None
        return x, w, b, rng


@st.composite
def cases(draw, modes=MODES, forms=PAD_FORMS, max_rank=3):
    geo = draw_geometry(draw, modes, forms, max_rank)
    return Case(
        **geo,
        batch=draw(st.sampled_from((None, 1, 2))),
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def naive_conv(x, w, b, stride, pads, dilation, groups, mode):
    """The seed's sum, one output position and one kernel tap at a time (np.pad for padding)."""
    unbatched = x.ndim == w.ndim - 1
    if unbatched:
        x = x[None]
    rank = w.ndim - 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(pads), mode=NP_MODE[mode])
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(rank)]
    c_out, cin_g = w.shape[0], w.shape[1]
    cout_g = c_out // groups
    y = np.zeros((x.shape[0], c_out, *out))
    for o in np.ndindex(*out):
        for t in np.ndindex(*k):
            idx = tuple(o[i] * stride[i] + t[i] * dilation[i] for i in range(rank))
            xv = xp[(slice(None), slice(None)) + idx]
            for g in range(groups):
                wg = w[(slice(g * cout_g, (g + 1) * cout_g), slice(None)) + t]
                y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + o] += (
                    xv[:, g * cin_g : (g + 1) * cin_g] @ wg.T
                )
    if b is not None:
        y += b.reshape((1, -1) + (1,) * rank)
    return y[0] if unbatched else y


def naive_conv_transpose(x, w, b, stride, padding, output_padding, groups, dilation):
    """Each input value scatters its kernel into the output (PyTorch's definition)."""
    unbatched = x.ndim == w.ndim - 1
    if unbatched:
        x = x[None]
    rank = w.ndim - 2
    k = w.shape[2:]
    n_in = x.shape[2:]
    out = [
        (n_in[i] - 1) * stride[i]
        - 2 * padding[i]
        + dilation[i] * (k[i] - 1)
        + output_padding[i]
        + 1
        for i in range(rank)
    ]
    c_in, cout_g = w.shape[0], w.shape[1]
    cin_g = c_in // groups
    y = np.zeros((x.shape[0], cout_g * groups, *out))
    for p in np.ndindex(*n_in):
        for t in np.ndindex(*k):
            idx = tuple(p[i] * stride[i] + t[i] * dilation[i] - padding[i] for i in range(rank))
            if any(j < 0 or j >= out[i] for i, j in enumerate(idx)):
                continue
            for g in range(groups):
                xv = x[(slice(None), slice(g * cin_g, (g + 1) * cin_g)) + p]
                wg = w[(slice(g * cin_g, (g + 1) * cin_g), slice(None)) + t]
                y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + idx] += xv @ wg
    if b is not None:
        y += b.reshape((1, -1) + (1,) * rank)
    return y[0] if unbatched else y


def vdot(a, b) -> float:
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def assert_inner_equal(lhs_terms, rhs_terms, tol=1e-12):
    """<a, b> == <c, d>, relative to the sum of |products| (robust to cancellation)."""
    (a, b), (c, d) = lhs_terms, rhs_terms
    lhs, rhs = vdot(a, b), vdot(c, d)
    scale = max(float(np.sum(np.abs(a * b))), float(np.sum(np.abs(c * d))), 1e-300)
    assert abs(lhs - rhs) <= tol * scale, (lhs, rhs)


# ----------------------------------------------------------------------------------------
# The forward pass against an independent NumPy reference
# ----------------------------------------------------------------------------------------
@settings(max_examples=30)
@given(cases(), st.sampled_from(FWD_ALGS))
def test_conv_matches_naive_summation(case, algorithm):
    x, w, b, _ = case.arrays()
    y = fc.conv(x, w, b, **case.opts, algorithm=algorithm)
    ref = naive_conv(x, w, b, case.stride, case.pads, case.dilation, case.groups, case.mode)
    assert rel_err(y, ref) <= 1e-12, case


@settings(max_examples=30)
@given(cases(modes=("zeros",), forms=("int", "tuple")), st.data())
def test_conv_transpose_matches_naive_scatter(case, data):
    rng = np.random.default_rng(case.seed)
    c_in, c_out = case.cin_g * case.groups, case.cout_g * case.groups
    lead = () if case.batch is None else (case.batch,)
    x = rng.standard_normal(lead + (c_in,) + case.sizes)
    w = rng.standard_normal((c_in, case.cout_g) + case.kernel)
    b = rng.standard_normal(c_out) if case.bias else None
    padding = tup(case.padding, case.rank)
    outpad = tuple(
        data.draw(st.integers(0, max(s, d) - 1))
        for s, d in zip(case.stride, case.dilation, strict=True)
    )
    out = [
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, s, p, d, k, op in zip(
            case.sizes, case.stride, padding, case.dilation, case.kernel, outpad, strict=True
        )
    ]
    if min(out) < 1:
        padding = (0,) * case.rank
    y = fc.conv_transpose(
        x,
        w,
        b,
        stride=case.stride,
        padding=padding,
        output_padding=outpad,
        groups=case.groups,
        dilation=case.dilation,
    )
    ref = naive_conv_transpose(x, w, b, case.stride, padding, outpad, case.groups, case.dilation)
    assert rel_err(y, ref) <= 1e-12, case


def test_padding_forms_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    for mode in MODES:
        a = fc.conv(x, w, padding=1, padding_mode=mode)
        b = fc.conv(x, w, padding=(1, 1), padding_mode=mode)
        c = fc.conv(x, w, padding=((1, 1), (1, 1)), padding_mode=mode)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-13)
        v = fc.conv(x, w, padding="valid", padding_mode=mode)
        np.testing.assert_allclose(v, fc.conv(x, w, padding=0), rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------
# rank, batch, c_in, c_out, groups, kernel, sizes, stride, padding, dilation, mode
FD_CONV = [
    (1, 2, 2, 3, 1, (3,), (7,), 2, 1, 1, "zeros"),
    (1, None, 4, 2, 2, (2,), (6,), 1, ((2, 1),), 2, "reflect"),
    (1, 1, 2, 2, 1, (3,), (4,), 3, "same", 1, "circular"),
    (2, 1, 2, 2, 2, (3, 2), (5, 4), (2, 1), "same", 1, "circular"),
    (2, 2, 3, 3, 3, (3, 3), (4, 5), 1, ((1, 0), (2, 1)), (1, 2), "replicate"),
    (2, None, 1, 2, 1, (2, 2), (5, 5), 3, "same", 2, "reflect"),
    (2, 1, 2, 1, 1, (2, 3), (4, 5), (1, 2), (1, 2), 1, "reflect"),
    (3, 1, 2, 2, 1, (2, 2, 2), (3, 4, 3), (1, 2, 1), 1, 1, "zeros"),
    (3, None, 2, 4, 2, (2, 1, 2), (3, 3, 4), 2, "same", (1, 1, 2), "circular"),
    (3, 1, 1, 1, 1, (3, 2, 2), (4, 3, 3), 1, ((1, 1), (0, 1), (1, 0)), 1, "replicate"),
]


@pytest.mark.parametrize("cfg", FD_CONV, ids=[f"conv{i}" for i in range(len(FD_CONV))])
def test_conv_gradients_by_finite_differences(cfg):
    rank, batch, c_in, c_out, groups, k, sizes, stride, padding, dilation, mode = cfg
    rng = np.random.default_rng(sum(sizes) + rank)
    lead = () if batch is None else (batch,)
    x = rng.standard_normal(lead + (c_in,) + sizes)
    w = rng.standard_normal((c_out, c_in // groups) + k)
    b = rng.standard_normal(c_out)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    opts["padding_mode"] = mode
    g = rng.standard_normal(fc.conv(x, w, b, **opts).shape)

    num_x = numerical_grad(lambda v: vdot(fc.conv(v, w, b, **opts), g), x)
    num_w = numerical_grad(lambda v: vdot(fc.conv(x, v, b, **opts), g), w)
    num_b = numerical_grad(lambda v: vdot(fc.conv(x, w, v, **opts), g), b)
    for algorithm in BWD_ALGS:
        gx, gw, gb = fc.conv_backward(g, x, w, **opts, algorithm=algorithm)
        assert rel_err(gx, num_x) <= 1e-7, algorithm
        assert rel_err(gw, num_w) <= 1e-7, algorithm
        assert rel_err(gb, num_b) <= 1e-7, algorithm


# rank, batch, c_in, c_out, groups, kernel, sizes, stride, padding, output_padding, dilation
FD_CONVT = [
    (1, 2, 2, 3, 1, (3,), (4,), 2, 1, 1, 1),
    (1, None, 2, 2, 2, (2,), (3,), 3, 0, 2, 2),
    (2, None, 4, 2, 2, (2, 3), (3, 3), (2, 1), (0, 1), (1, 0), 1),
    (2, 1, 3, 3, 3, (3, 3), (3, 2), 1, 1, (1, 1), 2),
    (3, 1, 2, 2, 1, (2, 2, 2), (2, 3, 2), (2, 1, 2), 0, (1, 0, 1), 1),
]


@pytest.mark.parametrize("cfg", FD_CONVT, ids=[f"convt{i}" for i in range(len(FD_CONVT))])
def test_conv_transpose_gradients_by_finite_differences(cfg):
    rank, batch, c_in, c_out, groups, k, sizes, stride, padding, outpad, dilation = cfg
    rng = np.random.default_rng(7 * rank + len(sizes))
    lead = () if batch is None else (batch,)
    x = rng.standard_normal(lead + (c_in,) + sizes)
    w = rng.standard_normal((c_in, c_out // groups) + k)
    b = rng.standard_normal(c_out)
    opts = dict(stride=stride, padding=padding, output_padding=outpad, groups=groups)
    opts["dilation"] = dilation
    g = rng.standard_normal(fc.conv_transpose(x, w, b, **opts).shape)

    gx, gw, gb = fc.conv_transpose_backward(g, x, w, **opts)
    num_x = numerical_grad(lambda v: vdot(fc.conv_transpose(v, w, b, **opts), g), x)
    num_w = numerical_grad(lambda v: vdot(fc.conv_transpose(x, v, b, **opts), g), w)
    num_b = numerical_grad(lambda v: vdot(fc.conv_transpose(x, w, v, **opts), g), b)
    assert rel_err(gx, num_x) <= 1e-7
    assert rel_err(gw, num_w) <= 1e-7
    assert rel_err(gb, num_b) <= 1e-7


# ----------------------------------------------------------------------------------------
# The algorithms agree
# ----------------------------------------------------------------------------------------
@given(cases())
def test_direct_equals_im2col_forward_and_backward(case):
    x, w, b, rng = case.arrays()
    y_direct = fc.conv(x, w, b, **case.opts, algorithm="direct")
    y_im2col = fc.conv(x, w, b, **case.opts, algorithm="im2col")
    assert rel_err(y_im2col, y_direct) <= 1e-12, case
    assert rel_err(fc.conv(x, w, b, **case.opts), y_direct) <= 1e-12, case

    g = rng.standard_normal(y_direct.shape)
    ref = fc.conv_backward(g, x, w, **case.opts, algorithm="direct")
    for algorithm in ("im2col", "full_conv", "auto"):
        got = fc.conv_backward(g, x, w, **case.opts, algorithm=algorithm)
        for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), got, ref, strict=True):
            assert rel_err(a, r) <= 1e-12, (algorithm, name, case)


@given(cases())
def test_col2im_and_full_conv_input_gradients_agree(case):
    x, w, _, rng = case.arrays()
    g = rng.standard_normal(fc.conv(x, w, **case.opts).shape)
    gx_col2im = fc.conv_backward(g, x, w, **case.opts, algorithm="im2col")[0]
    gx_full = fc.conv_backward(g, x, w, **case.opts, algorithm="full_conv")[0]
    assert gx_col2im.shape == x.shape
    assert rel_err(gx_full, gx_col2im) <= 1e-12, case


# ----------------------------------------------------------------------------------------
# Adjointness and linearity
# ----------------------------------------------------------------------------------------
@given(cases(modes=("zeros",), forms=("int", "tuple", "valid")))
def test_conv_transpose_is_adjoint_of_conv(case):
    x, w, _, rng = case.arrays()
    opts = dict(stride=case.stride, padding=case.padding, dilation=case.dilation)
    opts["groups"] = case.groups
    y = fc.conv(x, w, **opts)
    v = rng.standard_normal(y.shape)
    # output_padding restores the input's size where the stride dropped trailing elements
    padding = (0,) * case.rank if case.padding == "valid" else tup(case.padding, case.rank)
    outpad = tuple(
        (n + 2 * p - d * (k - 1) - 1) % s
        for n, p, d, k, s in zip(
            case.sizes, padding, case.dilation, case.kernel, case.stride, strict=True
        )
    )
    opts["padding"] = padding
    xt = fc.conv_transpose(v, w, output_padding=outpad, **opts)
    assert xt.shape == x.shape
    assert_inner_equal((y, v), (x, xt))
    # the transposed convolution's forward is the convolution's input gradient
    gx = fc.conv_backward(v, x, w, **opts)[0]
    assert rel_err(xt, gx) <= 1e-12


@given(cases())
def test_backward_is_adjoint_of_forward_for_every_padding(case):
    """<conv(x, w), g> = <x, dL/dx> = <w, dL/dw>: conv is linear in x and in w, any mode."""
    x, w, _, rng = case.arrays()
    y = fc.conv(x, w, **case.opts)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = fc.conv_backward(g, x, w, **case.opts)
    assert_inner_equal((y, g), (x, gx))
    assert_inner_equal((y, g), (w, gw))
    sum_axes = tuple(i for i in range(g.ndim) if i != g.ndim - case.rank - 1)
    assert rel_err(gb, g.sum(axis=sum_axes)) <= 1e-12


@settings(max_examples=30)
@given(cases(modes=("zeros",), forms=("int", "tuple")), st.data())
def test_conv_transpose_backward_is_adjoint_of_its_forward(case, data):
    rng = np.random.default_rng(case.seed)
    c_in = case.cin_g * case.groups
    lead = () if case.batch is None else (case.batch,)
    x = rng.standard_normal(lead + (c_in,) + case.sizes)
    w = rng.standard_normal((c_in, case.cout_g) + case.kernel)
    outpad = tuple(
        data.draw(st.integers(0, max(s, d) - 1))
        for s, d in zip(case.stride, case.dilation, strict=True)
    )
    opts = dict(stride=case.stride, padding=0, output_padding=outpad, groups=case.groups)
    opts["dilation"] = case.dilation
    y = fc.conv_transpose(x, w, **opts)
    g = rng.standard_normal(y.shape)
    gx, gw, _ = fc.conv_transpose_backward(g, x, w, **opts)
    assert_inner_equal((y, g), (x, gx))
    assert_inner_equal((y, g), (w, gw))


@given(cases())
def test_conv_is_linear_in_input_and_in_weight(case):
    x, w, _, rng = case.arrays()
    x2 = rng.standard_normal(x.shape)
    w2 = rng.standard_normal(w.shape)
    a, c = 0.75, -1.5
    y_x = fc.conv(a * x + c * x2, w, **case.opts)
    ref_x = a * fc.conv(x, w, **case.opts) + c * fc.conv(x2, w, **case.opts)
    assert rel_err(y_x, ref_x) <= 1e-12
    y_w = fc.conv(x, a * w + c * w2, **case.opts)
    ref_w = a * fc.conv(x, w, **case.opts) + c * fc.conv(x, w2, **case.opts)
    assert rel_err(y_w, ref_w) <= 1e-12


def test_conv_transpose_is_linear_in_input_and_in_weight():
    rng = np.random.default_rng(3)
    x, x2 = rng.standard_normal((2, 2, 2, 4, 3, 3))
    w, w2 = rng.standard_normal((2, 2, 3, 2, 2, 3))
    opts = dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 0), dilation=1)
    lhs = fc.conv_transpose(2 * x - x2, w, **opts)
    rhs = 2 * fc.conv_transpose(x, w, **opts) - fc.conv_transpose(x2, w, **opts)
    assert rel_err(lhs, rhs) <= 1e-12
    lhs = fc.conv_transpose(x, 0.5 * w + 3 * w2, **opts)
    rhs = 0.5 * fc.conv_transpose(x, w, **opts) + 3 * fc.conv_transpose(x, w2, **opts)
    assert rel_err(lhs, rhs) <= 1e-12


def test_bias_adds_per_channel():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    diff = fc.conv(x, w, b, padding=1) - fc.conv(x, w, padding=1)
    np.testing.assert_allclose(
        diff, np.broadcast_to(b[None, :, None, None], diff.shape), atol=1e-12
    )


# ----------------------------------------------------------------------------------------
# unfold / fold and pad / pad_backward
# ----------------------------------------------------------------------------------------
@given(cases(modes=("zeros",), forms=("int", "tuple")))
def test_unfold_fold_adjointness(case):
    x, _, _, rng = case.arrays()
    geo = dict(
        kernel_size=case.kernel,
        dilation=case.dilation,
        padding=case.padding,
        stride=case.stride,
    )
    cols = fc.unfold(x, **geo)
    lead = x.shape[: -case.rank - 1]
    n_pos = math.prod(
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, (lo, hi), d, k, s in zip(
            case.sizes, case.pads, case.dilation, case.kernel, case.stride, strict=True
        )
    )
    assert cols.shape == lead + (x.shape[-case.rank - 1] * math.prod(case.kernel), n_pos)
    c = rng.standard_normal(cols.shape)
    folded = fc.fold(c, case.sizes, **geo)
    assert folded.shape == x.shape
    assert_inner_equal((cols, c), (x, folded))


@given(cases(modes=("zeros",), forms=("int", "tuple")))
def test_conv_equals_weight_times_unfolded_input(case):
    """The seed's vectorised form Y = W~ . X~ + b, with X~ from the public unfold."""
    x, w, b, _ = case.arrays()
    if case.batch is None:
        x = x[None]
    geo = dict(kernel_size=case.kernel, dilation=case.dilation, padding=case.padding)
    cols = fc.unfold(x, stride=case.stride, **geo)
    n, c_out = x.shape[0], w.shape[0]
    cols = cols.reshape(n, case.groups, -1, cols.shape[-1])
    wg = w.reshape(case.groups, case.cout_g, -1)
    y = np.einsum("gok,ngkl->ngol", wg, cols).reshape(n, c_out, -1)
    if b is not None:
        y = y + b[None, :, None]
    ours = fc.conv(x, w, b, **case.opts)
    assert rel_err(ours.reshape(n, c_out, -1), y) <= 1e-12


@given(
    st.integers(1, 3),
    st.sampled_from(MODES),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=3, max_size=3),
    st.integers(0, 2**32 - 1),
)
def test_pad_matches_numpy_and_pad_backward_is_its_adjoint(rank, mode, pad_list, seed):
    rng = np.random.default_rng(seed)
    pads = tuple(pad_list[:rank])
    sizes = []
    for lo, hi in pads:
        n = int(rng.integers(1, 5))
        while not dim_ok(n, lo, hi, 1, 1, mode):
            n += 1
        sizes.append(n)
    x = rng.standard_normal((2, 3) + tuple(sizes))
    y = fc.pad(x, pads, mode=mode)
    ref = np.pad(x, [(0, 0), (0, 0)] + list(pads), mode=NP_MODE[mode])
    np.testing.assert_array_equal(y, ref)
    g = rng.standard_normal(y.shape)
    gx = fc.pad_backward(g, x.shape, pads, mode=mode)
    assert gx.shape == x.shape
    assert_inner_equal((y, g), (x, gx))


# ----------------------------------------------------------------------------------------
# Inputs: never modified; non-contiguous, negatively strided, broadcast, read-only
# ----------------------------------------------------------------------------------------
def _all_calls(x, w, b, g, xt, gt, cols):
    """Every public entry point, on arrays the caller keeps copies of."""
    opts = dict(stride=2, padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2)
    t_opts = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, dilation=1)
    out = {}
    for mode in MODES:
        out[f"conv-{mode}"] = fc.conv(x, w, b, **opts, padding_mode=mode)
        for alg in BWD_ALGS:
            out[f"bwd-{mode}-{alg}"] = fc.conv_backward(
                g, x, w, **opts, padding_mode=mode, algorithm=alg
            )
    for alg in FWD_ALGS:
        out[f"conv-{alg}"] = fc.conv(x, w, b, **opts, algorithm=alg)
    out["convt"] = fc.conv_transpose(xt, w, b[:4], **t_opts)
    out["convt-bwd"] = fc.conv_transpose_backward(gt, xt, w, **t_opts)
    out["unfold"] = fc.unfold(x, (3, 2), dilation=1, padding=1, stride=2)
    out["fold"] = fc.fold(cols, x.shape[2:], (3, 2), dilation=1, padding=1, stride=2)
    out["pad"] = fc.pad(x, ((1, 2), (2, 1)), mode="reflect")
    out["pad-bwd"] = fc.pad_backward(out["pad"], x.shape, ((1, 2), (2, 1)), mode="reflect")
    # unpadded, stride-1 pointwise and depthwise layers: paths that may skip copies
    w1, wd = w[:, :, :1, :1], w[:4, :1]
    g1 = g[:, :, :1, :1] * np.ones((1, 1) + x.shape[2:])
    gd = g[:, :4, :1, :1] * np.ones((1, 1, 5, 5))
    for alg in FWD_ALGS:
        out[f"conv1x1-{alg}"] = fc.conv(x, w1, b, groups=2, algorithm=alg)
        out[f"depthwise-{alg}"] = fc.conv(x, wd, b[:4], groups=4, algorithm=alg)
    for alg in BWD_ALGS:
        out[f"bwd1x1-{alg}"] = fc.conv_backward(g1, x, w1, groups=2, algorithm=alg)
        out[f"bwd-depthwise-{alg}"] = fc.conv_backward(gd, x, wd, groups=4, algorithm=alg)
    out["unfold1x1"] = fc.unfold(x, 1)
    out["pad0"] = fc.pad(x, ((0, 0), (0, 0)))
    out["pad-bwd0"] = fc.pad_backward(x, x.shape, ((0, 0), (0, 0)), mode="circular")
    return out


def _make_inputs(rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    g = rng.standard_normal(
        fc.conv(x, w, stride=2, padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2).shape
    )
    xt = rng.standard_normal((2, 6, 3, 4))
    t_opts = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, dilation=1)
    gt = rng.standard_normal(fc.conv_transpose(xt, w, **t_opts).shape)
    cols = rng.standard_normal(fc.unfold(x, (3, 2), padding=1, stride=2).shape)
    return x, w, b, g, xt, gt, cols


def _assert_results_close(got, ref):
    assert got.keys() == ref.keys()
    for key in ref:
        a, r = got[key], ref[key]
        for ai, ri in zip(
            a if isinstance(a, tuple) else (a,), r if isinstance(r, tuple) else (r,), strict=True
        ):
            assert rel_err(ai, ri) <= 1e-13, key


def test_inputs_are_never_modified():
    arrays = _make_inputs(np.random.default_rng(11))
    copies = [a.copy() for a in arrays]
    _all_calls(*arrays)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_results_never_share_memory_with_inputs():
    """A result that is a view of an input would let the caller modify the input."""
    arrays = _make_inputs(np.random.default_rng(14))
    results = _all_calls(*arrays)
    for key, res in results.items():
        for r in res if isinstance(res, tuple) else (res,):
            for a in arrays:
                assert not np.shares_memory(r, a), key


def test_read_only_inputs_are_accepted():
    arrays = _make_inputs(np.random.default_rng(12))
    ref = _all_calls(*arrays)
    frozen = [a.copy() for a in arrays]
    for a in frozen:
        a.flags.writeable = False
    _assert_results_close(_all_calls(*frozen), ref)


@pytest.mark.parametrize("layout", ["negative", "sliced", "fortran", "broadcast"])
def test_non_contiguous_inputs_give_the_same_results(layout):
    arrays = _make_inputs(np.random.default_rng(13))
    ref = _all_calls(*arrays)

    def relayout(a):
        if layout == "negative":  # a reversed copy, reversed back: negative strides everywhere
            r = a[(slice(None, None, -1),) * a.ndim].copy()
            return r[(slice(None, None, -1),) * a.ndim]
        if layout == "sliced":  # every other element of a twice-as-large array
            big = np.zeros(tuple(2 * s for s in a.shape))
            big[(slice(None, None, 2),) * a.ndim] = a
            return big[(slice(None, None, 2),) * a.ndim]
        if layout == "fortran":
            return np.asfortranarray(a)
        # zero strides: the first sample broadcast along the batch (or first) axis
        return np.broadcast_to(a[:1], a.shape)

    moved = [relayout(a) for a in arrays]
    if layout == "broadcast":
        ref = _all_calls(*[np.ascontiguousarray(a) for a in moved])
    else:
        for a, m in zip(arrays, moved, strict=True):
            np.testing.assert_array_equal(a, m)
            assert not m.flags.c_contiguous or a.ndim == 1 and layout == "fortran"
    _assert_results_close(_all_calls(*moved), ref)


# ----------------------------------------------------------------------------------------
# NaN and inf
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("algorithm", FWD_ALGS)
def test_nan_and_inf_propagate_forward(mode, algorithm):
    rng = np.random.default_rng(21)
    opts = dict(stride=(2, 1), padding=((1, 2), (2, 0)), dilation=(1, 2), groups=2)
    opts["padding_mode"] = mode
    x = rng.standard_normal((2, 4, 6, 7))
    w = np.abs(rng.standard_normal((4, 2, 3, 2))) + 0.5  # positive: no inf - inf
    for pos in [(0, 0, 0, 0), (1, 3, 5, 6), (0, 1, 2, 3)]:
        mask = np.zeros_like(x)
        mask[pos] = 1.0
        touched = fc.conv(mask, np.ones_like(w), **opts) > 0
        assert touched.any() and not touched.all()
        for bad in (np.nan, np.inf):
            xb = x.copy()
            xb[pos] = bad
            y = fc.conv(xb, w, **opts, algorithm=algorithm)
            if np.isnan(bad):
                np.testing.assert_array_equal(np.isnan(y), touched)
            else:
                np.testing.assert_array_equal(np.isposinf(y), touched)
                assert not np.isnan(y).any()
            assert np.isfinite(y[~touched]).all()


@pytest.mark.parametrize("algorithm", BWD_ALGS)
def test_nan_propagates_backward(algorithm):
    rng = np.random.default_rng(22)
    opts = dict(stride=(2, 3), padding=0, dilation=(2, 1), groups=2)
    x = rng.standard_normal((2, 4, 9, 8))
    w = np.abs(rng.standard_normal((4, 2, 3, 2))) + 0.5
    g = rng.standard_normal(fc.conv(x, w, **opts).shape)
    pos = (1, 2, 1, 1)  # output channel 2: group 1
    mask = np.zeros_like(g)
    mask[pos] = 1.0
    touched_x = fc.conv_backward(mask, np.ones_like(x), np.ones_like(w), **opts)[0] > 0
    gb = g.copy()
    gb[pos] = np.nan
    gx, gw, gbias = fc.conv_backward(gb, x, w, **opts, algorithm=algorithm)
    np.testing.assert_array_equal(np.isnan(gx), touched_x)
    nan_w = np.zeros(gw.shape, bool)
    nan_w[2] = True  # every tap of output channel 2 met the NaN
    np.testing.assert_array_equal(np.isnan(gw), nan_w)
    np.testing.assert_array_equal(np.isnan(gbias), [False, False, True, False])


def test_inf_in_weight_propagates():
    x = np.ones((1, 2, 5))
    w = np.ones((3, 2, 2))
    w[1, 0, 1] = np.inf
    y = fc.conv(x, w)
    assert np.isposinf(y[0, 1]).all()
    assert np.isfinite(y[0, [0, 2]]).all()


# ----------------------------------------------------------------------------------------
# 'same' output shape and float16
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_output_is_ceil_of_input_over_stride(rank, stride):
    rng = np.random.default_rng(rank * 10 + stride)
    for k, d in itertools.product((1, 2, 3, 4), (1, 2)):
        for n in range(1, 8):
            sizes = (n, n + 1, max(n - 1, 1))[:rank]
            x = rng.standard_normal((1, 2) + sizes)
            w = rng.standard_normal((3, 2) + (k,) * rank)
            y = fc.conv(x, w, stride=stride, padding="same", dilation=d)
            assert y.shape == (1, 3) + tuple(-(-m // stride) for m in sizes), (k, d, sizes)
            ref = naive_conv(
                x,
                w,
                None,
                (stride,) * rank,
                [same_pad(m, k, stride, d) for m in sizes],
                (d,) * rank,
                1,
                "zeros",
            )
            assert rel_err(y, ref) <= 1e-12


def test_float16_in_float16_out_close_to_float32():
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float16)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float16)
    b = rng.standard_normal(6).astype(np.float16)
    opts = dict(stride=(2, 1), padding="same", groups=2, padding_mode="reflect")
    y = fc.conv(x, w, b, **opts)
    assert y.dtype == np.float16
    ref = fc.conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **opts)
    assert rel_err(y, ref) <= 1e-3
    g = rng.standard_normal(y.shape).astype(np.float16)
    got = fc.conv_backward(g, x, w, **opts)
    refs = fc.conv_backward(
        g.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **opts
    )
    for a, r in zip(got, refs, strict=True):
        assert a.dtype == np.float16
        assert rel_err(a, r) <= 1e-3
    t_opts = dict(stride=2, padding=1, output_padding=1, groups=2)
    yt = fc.conv_transpose(x, w[:4], **t_opts)
    assert yt.dtype == np.float16
    gt = np.ones(yt.shape, np.float16)
    assert all(a.dtype == np.float16 for a in fc.conv_transpose_backward(gt, x, w[:4], **t_opts))
    cols = fc.unfold(x, 3, padding=1)
    assert cols.dtype == np.float16
    assert fc.fold(cols, (9, 8), 3, padding=1).dtype == np.float16
    assert fc.pad(x, ((1, 1), (0, 2)), mode="circular").dtype == np.float16


def test_float16_accumulates_in_float32():
    # 3000 ones: a float16 running sum sticks at 2048; float32 reaches 3000 (a float16 value).
    x = np.ones((1, 3000, 1), np.float16)
    w = np.ones((1, 3000, 1), np.float16)
    assert fc.conv(x, w)[0, 0, 0] == 3000
    # 40000 + 40000 - 40000: a float16 partial sum overflows to inf, float32's does not.
    x = np.array([[[4e4], [4e4], [-4e4]]], np.float16)
    w = np.ones((1, 3, 1), np.float16)
    for alg in FWD_ALGS:
        assert fc.conv(x, w, algorithm=alg)[0, 0, 0] == 4e4
    # backward: grad_weight sums 200*200 + 200*200 - 200*200 over positions,
    # grad_input over output channels, grad_bias over positions
    x = np.array([[[200.0, 200.0, -200.0]]], np.float16)
    w = np.full((3, 1, 1), 200.0, np.float16)
    w[2] = -200.0
    g = np.full((1, 3, 3), 200.0, np.float16)
    for alg in BWD_ALGS:
        gx, gw, _ = fc.conv_backward(g, x, w, algorithm=alg)
        assert gw[0, 0, 0] == 4e4, alg
        np.testing.assert_array_equal(gx, np.full((1, 1, 3), 4e4, np.float16))
    g = np.array([[[4e4, 4e4, -4e4]]], np.float16)
    with np.errstate(over="ignore"):  # grad_input = 200 * 4e4 overflows float16, rightly
        gb = fc.conv_backward(g, x, w[:1])[2]
    assert gb[0] == 4e4
    # overlapping windows: input position 2 gathers 4e4 + 4e4 - 4e4 in the column adjoint
    # (positions 1 and 3 legitimately overflow to +-inf: their exact values exceed 65504)
    x = np.ones((1, 1, 5), np.float16)
    w = np.array([[[200.0, 200.0, -200.0]]], np.float16)
    g = np.full((1, 1, 3), 200.0, np.float16)
    for alg in BWD_ALGS:
        with np.errstate(over="ignore"):
            assert fc.conv_backward(g, x, w, algorithm=alg)[0][0, 0, 2] == 4e4, alg
    cols = np.zeros((1, 3, 3), np.float16)
    cols[0, 0, 2], cols[0, 1, 1], cols[0, 2, 0] = 4e4, 4e4, -4e4
    assert fc.fold(cols, (5,), (3,))[0, 0, 2] == 4e4


@pytest.mark.parametrize(
    "mode,n,pads",
    [("replicate", 1, (0, 2)), ("circular", 1, (1, 1)), ("reflect", 3, (2, 2))],
)
def test_float16_pad_backward_accumulates_in_float32(mode, n, pads):
    # Three padded positions map back onto one input element; the adjoint sums
    # 4e4 + 4e4 - 4e4 there, whose float16 running sum overflows to inf.
    source = np.pad(np.arange(n), [pads], mode=NP_MODE[mode])
    target = int(np.bincount(source).argmax())
    hits = np.flatnonzero(source == target)
    assert hits.size == 3
    g = np.zeros((1, 1, source.size), np.float16)
    g[0, 0, hits] = [4e4, 4e4, -4e4]
    with np.errstate(over="ignore"):
        got = fc.pad_backward(g, (1, 1, n), (pads,), mode=mode)
    assert got.dtype == np.float16
    assert got[0, 0, target] == 4e4


# ----------------------------------------------------------------------------------------
# Unbatched input and keyword use
# ----------------------------------------------------------------------------------------
@settings(max_examples=25)
@given(cases())
def test_unbatched_equals_batch_of_one(case):
    x, w, b, rng = case.arrays()
    if case.batch is not None:
        x = x[0]
    y = fc.conv(x, w, b, **case.opts)
    y1 = fc.conv(x[None], w, b, **case.opts)
    assert y.shape == y1.shape[1:]
    assert rel_err(y, y1[0]) <= 1e-13
    g = rng.standard_normal(y.shape)
    got = fc.conv_backward(g, x, w, **case.opts)
    ref = fc.conv_backward(g[None], x[None], w, **case.opts)
    assert got[0].shape == x.shape
    assert rel_err(got[0], ref[0][0]) <= 1e-13
    assert rel_err(got[1], ref[1]) <= 1e-13
    assert rel_err(got[2], ref[2]) <= 1e-13


def test_keyword_arguments_are_accepted():
    rng = np.random.default_rng(41)
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    y = fc.conv(
        x=x,
        weight=w,
        bias=None,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        padding_mode="zeros",
        algorithm="auto",
    )
    gx, gw, gb = fc.conv_backward(
        grad_output=np.ones_like(y),
        x=x,
        weight=w,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        padding_mode="zeros",
        algorithm="auto",
    )
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (3,)
    yt = fc.conv_transpose(
        x=y, weight=w, bias=None, stride=1, padding=1, output_padding=0, groups=1, dilation=1
    )
    assert yt.shape == x.shape
    fc.conv_transpose_backward(
        grad_output=yt, x=y, weight=w, stride=1, padding=1, output_padding=0, groups=1, dilation=1
    )
    cols = fc.unfold(x=x, kernel_size=3, dilation=1, padding=1, stride=1)
    assert (
        fc.fold(cols=cols, output_size=(5, 5), kernel_size=3, dilation=1, padding=1, stride=1).shape
        == x.shape
    )
    p = fc.pad(input=x, pad=((1, 1), (1, 1)), mode="zeros")
    assert (
        fc.pad_backward(
            grad_output=p, input_shape=x.shape, pad=((1, 1), (1, 1)), mode="zeros"
        ).shape
        == x.shape
    )
