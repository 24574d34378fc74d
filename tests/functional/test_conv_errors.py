"""Every invalid call raises ValueError or TypeError naming the offending argument.

Each case gives the function (by name, looked up at run time), its arguments, the exception
type and a regex for the argument's name. Where two names are both plausible (a channel
mismatch is the fault of ``x`` or of ``weight``) the regex accepts either.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import foldconv.functional as fc


def z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


X = z(1, 4, 6, 6)
W = z(6, 2, 3, 3)  # groups=2 with X
G = z(1, 6, 4, 4)  # conv(X, W, groups=2) output
XT = z(1, 4, 3, 3)
WT = z(4, 3, 3, 3)  # conv_transpose(XT, WT, groups=1) -> (1, 3, 5, 5)
GT = z(1, 3, 5, 5)

CASES = [
    # ---- conv: channels and groups
    ("conv", (z(1, 3, 6, 6), z(2, 2, 3, 3)), {}, ValueError, "weight|x"),
    ("conv", (X, z(6, 3, 3, 3)), {"groups": 2}, ValueError, "weight|x"),
    ("conv", (z(3, 6, 6), z(2, 2, 3, 3)), {}, ValueError, "weight|x"),  # unbatched
    ("conv", (z(1, 3, 6, 6), z(4, 1, 3, 3)), {"groups": 2}, ValueError, "groups"),
    ("conv", (X, z(5, 2, 3, 3)), {"groups": 2}, ValueError, "groups"),
    ("conv", (X, W), {"groups": 0}, ValueError, "groups"),
    ("conv", (X, W), {"groups": -2}, ValueError, "groups"),
    # ---- conv: stride, dilation
    ("conv", (X, W), {"groups": 2, "stride": 0}, ValueError, "stride"),
    ("conv", (X, W), {"groups": 2, "stride": -1}, ValueError, "stride"),
    ("conv", (X, W), {"groups": 2, "stride": (1, 0)}, ValueError, "stride"),
    ("conv", (X, W), {"groups": 2, "stride": (1, 1, 1)}, ValueError, "stride"),
    ("conv", (X, W), {"groups": 2, "dilation": 0}, ValueError, "dilation"),
    ("conv", (X, W), {"groups": 2, "dilation": (0, 1)}, ValueError, "dilation"),
    ("conv", (X, W), {"groups": 2, "dilation": -2}, ValueError, "dilation"),
    # ---- conv: padding
    ("conv", (X, W), {"groups": 2, "padding": -1}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding": (1, -1)}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding": ((0, -1), (0, 0))}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding": (1, 1, 1)}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding": ((1, 2, 3), (0, 0))}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding": "full"}, ValueError, "padding"),
    ("conv", (X, W), {"groups": 2, "padding_mode": "mirror"}, ValueError, "padding_mode"),
    ("conv", (X, W), {"groups": 2, "padding_mode": "Zeros"}, ValueError, "padding_mode"),
    # reflect padding must be smaller than the input along that dimension
    (
        "conv",
        (z(1, 1, 3, 3), z(1, 1, 3, 3)),
        {"padding": 3, "padding_mode": "reflect"},
        ValueError,
        "padding",
    ),
    (
        "conv",
        (z(1, 1, 3, 5), z(1, 1, 3, 3)),
        {"padding": ((0, 3), (0, 0)), "padding_mode": "reflect"},
        ValueError,
        "padding",
    ),
    (
        "conv",
        (z(1, 1, 2, 2), z(1, 1, 5, 5)),
        {"padding": "same", "padding_mode": "reflect"},
        ValueError,
        "padding",
    ),
    # ---- conv: kernel larger than the padded input
    ("conv", (z(1, 1, 3, 3), z(1, 1, 5, 5)), {}, ValueError, "weight|kernel"),
    ("conv", (z(1, 1, 3, 3), z(1, 1, 6, 2)), {"padding": 1}, ValueError, "weight|kernel"),
    ("conv", (z(1, 1, 4, 4), z(1, 1, 3, 3)), {"dilation": 2}, ValueError, "weight|kernel"),
    ("conv", (z(1, 1, 4), z(1, 1, 6)), {}, ValueError, "weight|kernel"),
    # ---- conv: ranks
    ("conv", (z(4, 6), W), {"groups": 2}, ValueError, "x"),
    ("conv", (z(1, 1, 4, 6, 6), W), {"groups": 2}, ValueError, "x"),
    ("conv", (X, z(6, 4)), {}, ValueError, "weight"),
    ("conv", (z(1, 4, 3, 3, 3, 3), z(2, 4, 1, 1, 1, 1)), {}, ValueError, "weight"),
    ("conv1d", (X, W), {"groups": 2}, ValueError, "weight"),
    ("conv3d", (X, W), {"groups": 2}, ValueError, "weight"),
    ("conv2d", (z(1, 4, 6), z(2, 4, 3)), {}, ValueError, "weight"),
    # ---- conv: bias
    ("conv", (X, W, z(5)), {"groups": 2}, ValueError, "bias"),
    ("conv", (X, W, z(6, 1)), {"groups": 2}, ValueError, "bias"),
    # ---- conv: dtypes
    ("conv", (X.astype(np.int64), W), {"groups": 2}, TypeError, "x"),
    ("conv", (X.astype(bool), W), {"groups": 2}, TypeError, "x"),
    ("conv", (X.astype(np.complex128), W), {"groups": 2}, TypeError, "x"),
    ("conv", (X, W.astype(np.int32)), {"groups": 2}, TypeError, "weight"),
    ("conv", (X, W.astype(np.complex64)), {"groups": 2}, TypeError, "weight"),
    ("conv", (X, W.astype(bool)), {"groups": 2}, TypeError, "weight"),
    # ---- conv: algorithm
    ("conv", (X, W), {"groups": 2, "algorithm": "fft"}, ValueError, "algorithm"),
    ("conv", (X, W), {"groups": 2, "algorithm": "full_conv"}, ValueError, "algorithm"),
    # ---- conv_backward
    ("conv_backward", (z(1, 6, 4, 5), X, W), {"groups": 2}, ValueError, "grad_output"),
    ("conv_backward", (z(1, 5, 4, 4), X, W), {"groups": 2}, ValueError, "grad_output"),
    ("conv_backward", (z(2, 6, 4, 4), X, W), {"groups": 2}, ValueError, "grad_output"),
    ("conv_backward", (z(6, 4, 4), X, W), {"groups": 2}, ValueError, "grad_output"),
    ("conv_backward", (G, X, W), {"groups": 2, "stride": 2}, ValueError, "grad_output"),
    ("conv_backward", (G, X, W), {"groups": 2, "stride": 0}, ValueError, "stride"),
    ("conv_backward", (G, X, W), {"groups": 2, "padding": -1}, ValueError, "padding"),
    ("conv_backward", (G, X, W), {"groups": 3}, ValueError, "groups"),
    ("conv_backward", (G, X, W), {"groups": 2, "padding_mode": "x"}, ValueError, "padding_mode"),
    ("conv_backward", (G, X, W), {"groups": 2, "algorithm": "fft"}, ValueError, "algorithm"),
    ("conv_backward", (G, X.astype(np.int64), W), {"groups": 2}, TypeError, "x"),
    ("conv_backward", (G, X, W.astype(np.int64)), {"groups": 2}, TypeError, "weight"),
    ("conv_backward", (G, z(1, 2, 6, 6), W), {"groups": 2}, ValueError, "weight|x"),
    # ---- conv_transpose
    ("conv_transpose", (XT, WT), {"stride": 2, "output_padding": 2}, ValueError, "output_padding"),
    ("conv_transpose", (XT, WT), {"output_padding": 1}, ValueError, "output_padding"),
    (
        "conv_transpose",
        (XT, WT),
        {"stride": 2, "dilation": 3, "output_padding": (3, 0)},
        ValueError,
        "output_padding",
    ),
    ("conv_transpose", (XT, WT), {"stride": 2, "output_padding": -1}, ValueError, "output_padding"),
    ("conv_transpose", (z(1, 3, 3, 3), WT), {}, ValueError, "weight|x"),
    ("conv_transpose", (z(1, 3, 3, 3), z(3, 2, 3, 3)), {"groups": 2}, ValueError, "groups"),
    ("conv_transpose", (XT, WT), {"groups": 0}, ValueError, "groups"),
    ("conv_transpose", (XT, WT), {"stride": 0}, ValueError, "stride"),
    ("conv_transpose", (XT, WT), {"dilation": (1, 0)}, ValueError, "dilation"),
    ("conv_transpose", (XT, WT), {"padding": -1}, ValueError, "padding"),
    ("conv_transpose", (XT, WT, z(4)), {}, ValueError, "bias"),
    ("conv_transpose", (XT.astype(np.int64), WT), {}, TypeError, "x"),
    ("conv_transpose", (XT, WT.astype(np.complex128)), {}, TypeError, "weight"),
    ("conv_transpose", (z(4, 3), WT), {}, ValueError, "x"),
    ("conv_transpose", (XT, z(4, 3)), {}, ValueError, "weight"),
    # ---- conv_transpose_backward
    ("conv_transpose_backward", (z(1, 3, 5, 4), XT, WT), {}, ValueError, "grad_output"),
    ("conv_transpose_backward", (z(1, 2, 5, 5), XT, WT), {}, ValueError, "grad_output"),
    ("conv_transpose_backward", (GT, XT, WT), {"output_padding": 1}, ValueError, "output_padding"),
    ("conv_transpose_backward", (GT, XT, WT), {"stride": 0}, ValueError, "stride"),
    # ---- unfold / fold
    ("unfold", (z(1, 1, 3, 3), 5), {}, ValueError, "kernel"),
    ("unfold", (z(1, 1, 4, 4), 3), {"dilation": 2}, ValueError, "kernel|dilation"),
    ("unfold", (z(1, 1, 5, 5), 3), {"stride": 0}, ValueError, "stride"),
    ("unfold", (z(1, 1, 5, 5), 3), {"dilation": 0}, ValueError, "dilation"),
    ("unfold", (z(1, 1, 5, 5), 3), {"padding": -1}, ValueError, "padding"),
    ("unfold", (z(1, 1, 5, 5), (3, 0)), {}, ValueError, "kernel_size"),
    ("unfold", (z(1, 1, 5, 5).astype(np.int64), 3), {}, TypeError, "x"),
    ("fold", (z(1, 9, 10), (5, 5), 3), {}, ValueError, "output_size|cols"),
    ("fold", (z(1, 9, 9), (6, 5), 3), {}, ValueError, "output_size|cols"),
    ("fold", (z(1, 10, 9), (5, 5), 3), {}, ValueError, "cols"),
    ("fold", (z(9), (5, 5), 3), {}, ValueError, "cols"),
    ("fold", (z(1, 9, 9), (5, 5), 3), {"stride": 0}, ValueError, "stride"),
    ("fold", (z(1, 9, 9).astype(np.int32), (5, 5), 3), {}, TypeError, "cols"),
    # ---- pad / pad_backward
    ("pad", (z(1, 1, 4, 4), ((1, 1), (1, 1))), {"mode": "mirror"}, ValueError, "mode"),
    ("pad", (z(1, 1, 4, 4), ((1, -1), (1, 1))), {}, ValueError, "padding"),
    ("pad", (z(1, 1, 4, 4), ((4, 0), (0, 0))), {"mode": "reflect"}, ValueError, "padding"),
    ("pad", (z(1, 1, 4, 4), ((1, 1),) * 5), {}, ValueError, "padding"),
    ("pad", (z(1, 1, 4, 4).astype(np.int64), ((1, 1), (1, 1))), {}, TypeError, "x"),
    (
        "pad_backward",
        (z(1, 1, 6, 5), (1, 1, 4, 4), ((1, 1), (1, 1))),
        {},
        ValueError,
        "grad_output",
    ),
]
IDS = [f"{c[0]}-{i}-{c[4]}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("fn,args,kwargs,exc,name", CASES, ids=IDS)
def test_bad_input_names_the_argument(fn, args, kwargs, exc, name):
    with pytest.raises(exc, match=name) as info:
        getattr(fc, fn)(*args, **kwargs)
    # exactly ValueError/TypeError or a subclass, never a bare IndexError and the like
    assert isinstance(info.value, (ValueError, TypeError))


@pytest.mark.parametrize("fn,args,kwargs,exc,name", CASES, ids=IDS)
def test_bad_input_message_starts_with_the_argument_name(fn, args, kwargs, exc, name):
    """CONTRIBUTING: the message starts with the argument's name (``"stride: expected ..."``)."""
    with pytest.raises(exc) as info:
        getattr(fc, fn)(*args, **kwargs)
    assert re.match(f"({name})", str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 1, "dilation": 2, "output_padding": 1},  # smaller than dilation: fine
        {"stride": 3, "output_padding": 2},
        {"stride": (2, 1), "dilation": (1, 2), "output_padding": (1, 1)},
    ],
)
def test_output_padding_smaller_than_stride_or_dilation_is_accepted(kwargs):
    y = fc.conv_transpose(XT, WT, **kwargs)
    assert y.shape[:2] == (1, 3)


def test_valid_edge_cases_do_not_raise():
    # kernel exactly as large as the padded input
    assert fc.conv(z(1, 1, 3, 3), z(1, 1, 5, 5), padding=1).shape == (1, 1, 1, 1)
    # reflect padding of size - 1 is allowed
    assert fc.conv(z(1, 1, 3, 3), z(1, 1, 1, 1), padding=2, padding_mode="reflect").shape == (
        1,
        1,
        7,
        7,
    )
    # circular padding of the input's full size is allowed (as in torch)
    assert fc.pad(z(1, 1, 3), ((3, 3),), mode="circular").shape == (1, 1, 9)
    # groups equal to the channels (depthwise) and a 1x1 kernel
    assert fc.conv(X, z(8, 1, 1, 1), groups=4).shape == (1, 8, 6, 6)


def test_cached_geometries_still_reject_what_compares_equal():
    # Geometries are cached by their arguments; True == 1 and 1.0 == 1, so a cached call
    # with stride=1 must not let stride=True or 1.0 through.
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    fc.conv2d(x, w, stride=1, padding=(1, 1))
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match=r"^stride: expected an int"):
            fc.conv2d(x, w, stride=bad, padding=(1, 1))
    with pytest.raises(TypeError, match=r"^padding"):
        fc.conv2d(x, w, stride=1, padding=(1, 1.0))


def test_the_cost_models_cached_choice_follows_the_compiled_switch():
    pytest.importorskip("numba")
    import foldconv
    from foldconv.functional import dispatch
    from foldconv.functional._args import conv_geometry

    g = conv_geometry((4, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, 1, "zeros")
    assert dispatch.cost_model("input_grad", g, np.float32) == "im2col_compiled"
    assert dispatch.cost_model("weight_grad", g, np.float32) == "direct_compiled"
    was = foldconv.set_compiled(False)
    try:
        assert dispatch.cost_model("input_grad", g, np.float32) == "im2col"
        assert dispatch.cost_model("weight_grad", g, np.float32) == "im2col"
    finally:
        foldconv.set_compiled(was)
    assert dispatch.cost_model("input_grad", g, np.float32) == "im2col_compiled"
    assert dispatch.cost_model("weight_grad", g, np.float32) == "direct_compiled"
