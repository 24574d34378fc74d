"""Convolution configurations shared by the torch-oracle and the property tests.

The padding rules here are written independently of the library's (TensorFlow's 'same'
rule, the reflect/circular limits), so that the tests check the library against them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import foldconv

MODES = ("zeros", "reflect", "replicate", "circular")
PAD_FORMS = ("int", "tuple", "pairs", "valid", "same")


def torch_pad_list(pads) -> list[int]:
    """torch's F.pad lists (low, high) last spatial dimension first."""
    flat: list[int] = []
    for lo, hi in reversed(list(pads)):
        flat += [lo, hi]
    return flat


def compiled_and_numpy(fn):
    """(fn() with foldconv's compiled kernels, fn() with their NumPy twins)."""
    previous = foldconv.set_compiled(True)
    try:
        fast = fn()
        foldconv.set_compiled(False)
        plain = fn()
    finally:
        foldconv.set_compiled(previous)
    return fast, plain


def same_pad(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's 'same': out = ceil(n/s), the total split low = total//2, high = rest."""
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def dim_pads(padding, i: int, n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """The (low, high) padding of spatial dimension ``i`` for any padding form."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        return same_pad(n, k, s, d)
    if isinstance(padding, int):
        return padding, padding
    p = padding[i]
    return p if isinstance(p, tuple) else (p, p)


def dim_ok(n: int, lo: int, hi: int, k: int, d: int, mode: str) -> bool:
    """The kernel fits the padded size, and reflect/circular padding fits the input."""
    if n + lo + hi < d * (k - 1) + 1:
        return False
    if mode == "reflect" and max(lo, hi) >= n:
        return False
    return not (mode == "circular" and max(lo, hi) > n)


def draw_geometry(draw, modes=MODES, forms=PAD_FORMS, max_rank: int = 3) -> dict:
    """Rank, groups, channels per group, kernel, stride, dilation, padding (as given and
    as resolved pairs), padding mode and sizes of a valid convolution."""
    rank = draw(st.integers(1, max_rank))
    smax = (7, 6, 4)[rank - 1]
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    depthwise = groups > 1 and draw(st.booleans())
    cin_g = 1 if depthwise else draw(st.integers(1, 2))
    cout_g = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    mode = draw(st.sampled_from(modes))
    form = draw(st.sampled_from(forms))
    if form == "int":
        padding = draw(st.integers(0, 2))
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(rank))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
    else:
        padding = form
    sizes, pads = [], []
    for i in range(rank):
        n = draw(st.integers(1, smax))
        while True:
            lo, hi = dim_pads(padding, i, n, kernel[i], stride[i], dilation[i])
            if dim_ok(n, lo, hi, kernel[i], dilation[i], mode):
                break
            n += 1
        sizes.append(n)
        pads.append((lo, hi))
    return dict(
        rank=rank,
        groups=groups,
        cin_g=cin_g,
        cout_g=cout_g,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        pads=pads,
        mode=mode,
        sizes=tuple(sizes),
    )


def torch_conv(x, w, rng, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's convolution of x with w, and its gradients for a δ drawn from ``rng``
    after the forward: (y, dx, dw, δ) as NumPy arrays. Asymmetric padding is applied by
    F.pad first (torch's conv takes symmetric padding only)."""
    import torch

    from foldconv.functional import _args

    nd = x.ndim - 2
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    xin = torch.nn.functional.pad(xt, torch_pad_list(_args.parse_padding(padding, nd)))
    conv_t = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)
    yt = conv_t[nd - 1](xin, wt, stride=stride, dilation=dilation, groups=groups)
    dy = rng.standard_normal(tuple(yt.shape)).astype(x.dtype)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), dy


def finite_difference_errors(x, w, opts, algorithm, rng) -> tuple[float, float]:
    """The directional-derivative errors of ``algorithm``'s dx and dw for a random
    weighting of the output, against float64 differences of the direct sums."""
    from foldconv.functional import conv, conv_backward
    from tests.gradcheck import directional_check

    y = conv(x, w, **opts, algorithm=algorithm)
    r = rng.standard_normal(y.shape)

    def loss_x(xv):
        return float(np.sum(conv(xv, w, **opts, algorithm="direct") * r))

    def loss_w(wv):
        return float(np.sum(conv(x, wv, **opts, algorithm="direct") * r))

    dx, dw, _ = conv_backward(r, x, w, **opts, algorithm=algorithm)
    return directional_check(loss_x, x, dx, rng), directional_check(loss_w, w, dw, rng)


def at_thread_counts(fn, counts=(1, 2, 3, 1)) -> list:
    """[fn() at each thread count], adaptivity off (the counts are the ones in use)."""
    from foldconv.functional import threads

    before = foldconv.get_num_threads()
    adaptive = threads.set_adaptive(False)
    try:
        runs = []
        for n in counts:
            foldconv.set_num_threads(n)
            assert threads.active_threads() == n
            runs.append(fn())
    finally:
        foldconv.set_num_threads(before)
        threads.set_adaptive(adaptive)
    return runs
