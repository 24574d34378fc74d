"""Choosing an algorithm for each pass of a convolution, and running it.

Passes: ``forward`` (eq. F), ``input_grad`` (eq. BX / BX') and ``weight_grad``
(eq. BW). Algorithms:

- ``direct``: the seed's sums (a reference, slow);
- ``im2col``: unfold + GEMM (every geometry); a stride-1 1x1 layer skips the unfold;
- ``full_conv``: input gradient only, the full convolution of δ with the flipped kernel,
  itself run by im2col (every geometry);
- ``winograd``: F(m x m, r x r) for 2-d 3x3 and 5x5 stride-1 layers (any dilation, any
  groups; m from :func:`winograd_tile`), all three passes: the input gradient as a
  Winograd full convolution, the weight gradient in the Winograd domain;
- ``depthwise``: direct per-tap passes for groups == C_in;
- ``direct_compiled``: the seed's sums compiled (Numba) on the flat range, for stride-1
  layers with few channels (LeNet-5's), where im2col's skinny GEMMs and columns cost more
  than the arithmetic (:mod:`foldconv.functional.direct_compiled`);
- ``im2col_compiled``: unfold + GEMM with the unfold and fold compiled (Numba), one
  block of samples at a time over foldconv's pool, BLAS on one thread under each (every
  geometry; :mod:`foldconv.functional.im2col_compiled`).

On the GPU (CuPy arrays, :func:`foldconv.backend.gpu_path`) every pass goes to
:mod:`foldconv.cuda.conv` instead: numba-cuda im2col / col2im-gather kernels with
batched cuBLAS GEMMs, or the direct depthwise kernels; no CPU kernel ever sees a CuPy
array (that module's docstring says what each algorithm name means there).

``auto`` asks the autotuner when :func:`set_benchmark` is on (each candidate is timed
once per geometry, dtype and pass, and the fastest is cached, as cuDNN's benchmark mode
does); otherwise it uses a cost model calibrated on the CPU benchmark suite
(BENCHMARKS.md gives the measurements behind each rule).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from foldconv import _openblas_env
from foldconv._config import get_workspace_limit
from foldconv.backend import get_array_module, gpu_path
from foldconv.functional import (
    compiled,
    depthwise,
    depthwise_compiled,
    direct_compiled,
    im2col,
    im2col_compiled,
    winograd,
)
from foldconv.functional._args import ConvGeometry
from foldconv.functional.direct import (
    conv_forward_direct,
    conv_input_grad_direct,
    conv_weight_grad_direct,
)
from foldconv.functional.padding import apply_pad, pad_adjoint
from foldconv.functional.threads import available_cores, gemm_ready, ready

# Algorithms whose kernels call no BLAS.
_NO_GEMM = frozenset({"direct", "depthwise", "direct_compiled"})
# Algorithms that spread their GEMMs over foldconv's pool themselves: BLAS runs on one
# thread under each (its own threads would oversubscribe the cores).
_OWN_THREADS = frozenset({"im2col_compiled"})

PASSES = ("forward", "input_grad", "weight_grad")

_benchmark = False
_tuned: dict[tuple, str] = {}
_lock = threading.Lock()


def set_benchmark(enabled: bool) -> bool:
    """Turn the autotuner on or off; returns the previous setting.

    When on, the first ``auto`` call of a pass for a new geometry and dtype times every
    algorithm that supports it and caches the fastest for later calls.
    """
    global _benchmark
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    previous, _benchmark = _benchmark, enabled
    return previous


def get_benchmark() -> bool:
    return _benchmark


def clear_benchmark_cache() -> None:
    with _lock:
        _tuned.clear()


def tuned_algorithms() -> dict[tuple, str]:
    """A copy of the autotuner's cache: (pass, geometry, dtype) -> algorithm."""
    with _lock:
        return dict(_tuned)


def winograd_tile(dtype: Any, r: int, out_shape: tuple[int, ...]) -> int:
    """The output tile m of F(m x m, r x r) for this kernel size, dtype and output size.

    Error against a float64 reference, max |err| / max |ref|, float32, measured over the
    three passes on the suite's layers (BENCHMARKS.md): F(2x2, 3x3) <= 8e-7, F(4x4, 3x3)
    with the points of winograd.POINTS <= 5.5e-6 (the usual 0, ±1, ±2 gave up to 1.7e-5),
    F(2x2, 5x5) <= 5.3e-6, F(3x3, 5x5) and F(4x4, 5x5) up to 1.5e-5. So float32 takes
    F(4x4) only for 3x3 kernels; float64 (errors ~1e-14) may take it for both. A larger
    tile needs fewer multiplications but wastes more of its last row of tiles and costs
    more per transform: measured, F(4x4) pays from outputs of 24 on (vgg_c3's 56x56
    forward: 72 ms against F(2x2)'s 101 and im2col's 140 with OpenBLAS pinned to its
    Haswell kernel, 58 / 75 / 81 unpinned), F(2x2) below that.
    """
    big = min(out_shape) >= 24
    if r == 3 or dtype.itemsize >= 8:
        return 4 if big else 2
    return 2


def _flip_geometry(g: ConvGeometry) -> ConvGeometry:
    """The stride-1 convolution that computes eq. BX' (see :func:`full_conv_input_grad`)."""
    nd = g.ndim
    spread = tuple((o - 1) * s + 1 for o, s in zip(g.out_shape, g.stride, strict=True))
    lows = tuple(d * (k - 1) for d, k in zip(g.dilation, g.kernel, strict=True))
    highs = tuple(
        p - (o - 1) * s - 1 for p, o, s in zip(g.padded_shape, g.out_shape, g.stride, strict=True)
    )
    return ConvGeometry(
        batch=g.batch,
        in_channels=g.out_channels,
        out_channels=g.in_channels,
        groups=g.groups,
        in_shape=spread,
        kernel=g.kernel,
        stride=(1,) * nd,
        dilation=g.dilation,
        pads=tuple(zip(lows, highs, strict=True)),
        out_shape=g.padded_shape,
    )


def full_conv_input_grad(dy: Any, w: Any, g: ConvGeometry, forward: Callable | None = None):
    """Eq. BX': the input gradient as a full convolution of δ with the flipped kernel.

    dX_pad[k, p] = Σ_{c, t} δ_s[c, p - t·dilation] · W[c, k, t], where δ_s is δ with
    stride-1 zeros between its entries. Zero-padding δ_s by dilation·(K-1) below (and up
    to the padded input's size above) makes this a stride-1 convolution with the kernel
    W_flip[k, c, t] = W[c, k, K-1-t] (channels swapped within each group).

    Returns
    -------
    ndarray, shape (N, C_in, *S_pad)
    """
    xp = get_array_module(dy)
    f = _flip_geometry(g)
    nd, G = g.ndim, g.groups
    cog, cig = g.out_channels // G, g.in_channels // G
    full_shape = f.padded_shape
    dy_full = xp.zeros((g.batch, g.out_channels) + full_shape, dtype=dy.dtype)
    dst = tuple(
        slice(lo, lo + sp, s) for (lo, _), sp, s in zip(f.pads, f.in_shape, g.stride, strict=True)
    )
    dy_full[(slice(None), slice(None)) + dst] = dy
    w_flip = w.reshape((G, cog, cig) + g.kernel).swapaxes(1, 2)
    w_flip = w_flip[(slice(None),) * 3 + (slice(None, None, -1),) * nd]
    w_flip = xp.ascontiguousarray(w_flip).reshape((g.in_channels, cog) + g.kernel)
    unpadded = ConvGeometry(
        batch=f.batch,
        in_channels=f.in_channels,
        out_channels=f.out_channels,
        groups=f.groups,
        in_shape=full_shape,
        kernel=f.kernel,
        stride=f.stride,
        dilation=f.dilation,
        pads=((0, 0),) * nd,
        out_shape=f.out_shape,
    )
    return (forward or im2col.forward)(dy_full, w_flip, unpadded)


def _winograd_fits(g: ConvGeometry, dtype: Any) -> bool:
    m = winograd_tile(dtype, g.kernel[0], g.out_shape)
    return winograd.supports(g) and winograd.fits(g, m, dtype.itemsize)


def _winograd_forward(x_pad, w, g):
    return winograd.forward(x_pad, w, g, winograd_tile(x_pad.dtype, g.kernel[0], g.out_shape))


def _winograd_weight_grad(dy, x_pad, g):
    m = winograd_tile(x_pad.dtype, g.kernel[0], g.out_shape)
    return winograd.weight_grad(dy, x_pad, g, m)


def _winograd_input_grad(dy, w, g):
    return full_conv_input_grad(dy, w, g, forward=_winograd_forward)


def _direct_compiled_fits(g: ConvGeometry, dtype: Any) -> bool:
    return (
        np.dtype(dtype) in (np.float32, np.float64)
        and direct_compiled.supports(g, np.dtype(dtype).itemsize)
        and compiled.get_compiled()
    )


def _im2col_compiled_fits(g: ConvGeometry, dtype: Any) -> bool:
    return (
        np.dtype(dtype) in (np.float32, np.float64)
        and im2col_compiled.supports(g, np.dtype(dtype).itemsize)
        and compiled.get_compiled()
    )


# pass -> algorithm -> (supports(g, dtype), kernel)
_KERNELS: dict[str, dict[str, tuple[Callable, Callable]]] = {
    "forward": {
        "direct": (lambda g, dt: True, conv_forward_direct),
        "im2col": (lambda g, dt: True, im2col.forward),
        "winograd": (_winograd_fits, _winograd_forward),
        "depthwise": (lambda g, dt: depthwise.supports(g), depthwise.forward),
        "direct_compiled": (_direct_compiled_fits, direct_compiled.forward),
        "im2col_compiled": (_im2col_compiled_fits, im2col_compiled.forward),
    },
    "input_grad": {
        "direct": (lambda g, dt: True, conv_input_grad_direct),
        "im2col": (lambda g, dt: True, im2col.input_grad),
        "full_conv": (lambda g, dt: True, full_conv_input_grad),
        "winograd": (
            lambda g, dt: winograd.supports(g) and _winograd_fits(_flip_geometry(g), dt),
            _winograd_input_grad,
        ),
        "depthwise": (lambda g, dt: depthwise.supports(g), depthwise.input_grad),
        "direct_compiled": (_direct_compiled_fits, direct_compiled.input_grad),
        "im2col_compiled": (_im2col_compiled_fits, im2col_compiled.input_grad),
    },
    "weight_grad": {
        "direct": (lambda g, dt: True, conv_weight_grad_direct),
        "im2col": (lambda g, dt: True, im2col.weight_grad),
        "winograd": (_winograd_fits, _winograd_weight_grad),
        "depthwise": (lambda g, dt: depthwise.supports(g), depthwise.weight_grad),
        "direct_compiled": (_direct_compiled_fits, direct_compiled.weight_grad),
        "im2col_compiled": (_im2col_compiled_fits, im2col_compiled.weight_grad),
    },
}

# What an explicitly requested algorithm means for a pass it has no kernel for.
_FALLBACK = {"full_conv": "im2col"}


def candidates(pass_: str, g: ConvGeometry, dtype: Any) -> list[str]:
    """The algorithms that can run this pass (``direct`` excluded: it is a reference)."""
    return [name for name, (ok, _) in _KERNELS[pass_].items() if name != "direct" and ok(g, dtype)]


# cost_model's answers: they depend on the pass, geometry and dtype, the compiled switch
# and the workspace limit, and asking again costs ~20 us a pass (LeNet-5: 5 a step).
_COSTED: dict[tuple, str] = {}


def cost_model(pass_: str, g: ConvGeometry, dtype: Any) -> str:
    """The algorithm ``auto`` uses without the autotuner (see :func:`_cost_model`)."""
    key = (
        pass_,
        g,
        np.dtype(dtype),
        compiled.get_compiled(),
        get_workspace_limit(),
        available_cores(),
        _openblas_env.workers_sleep(),
    )
    name = _COSTED.get(key)
    if name is None:
        if len(_COSTED) >= 1024:
            _COSTED.clear()
        name = _COSTED[key] = _cost_model(pass_, g, key[2])
    return name


def _cost_model(pass_: str, g: ConvGeometry, dtype: Any) -> str:
    """The algorithm ``auto`` uses without the autotuner.

    Rules from timing each kernel on the CPU suite and on a sweep of 3x3 layers, with
    OpenBLAS's AVX2 and AVX-512 kernels (BENCHMARKS.md): the depthwise kernel always
    beats a GEMM with one input channel per group. Winograd pays for 3x3 layers without
    dilation once both channel counts per group reach 128 (below that its transforms,
    which are memory-bound, cost more than the GEMM time they save): the forward and the
    weight gradient from outputs of 8x8 on, the input gradient (a convolution whose
    output is the padded input) where it runs F(4x4), from 24x24 on. 5x5 layers stay on
    im2col: F(2x2, 5x5), the largest tile accurate enough in float32, saves little time
    (alexnet_c2_g2 forward 38 ms against 44 pinned, 33 against 30 unpinned) and loses in
    the input gradient (73 against 48). im2col runs as blocks of samples on foldconv's
    pool (``im2col_compiled``) wherever the batch gives every core a block, and then
    also takes the forward and weight gradient from F(2x2) below 256 channels.
    """
    options = candidates(pass_, g, dtype)
    if "depthwise" in options:
        return "depthwise"
    cog = g.out_channels // g.groups
    weights = cog * g.in_channels // g.groups * g.kernel_size
    if "direct_compiled" in options and weights <= direct_compiled.MAX_WEIGHTS_PER_GROUP:
        # The input gradient as W_gᵀ·δ on one block at a time, then a compiled fold, is
        # faster once its GEMMs' inner dimension (C_out/G) reaches 16: LeNet-5's conv2
        # at batch 64, two threads, each pass alone, 0.47 against 0.57-0.62 ms for the
        # direct sums (whose correlation keeps its sums in vector registers). The
        # forward stays direct (0.36-0.39 against 0.41-0.52), and so does the weight
        # gradient (a tie, and other layers' lose: 3 -> 16 channels at 32x32, 1.96
        # against 0.78).
        if pass_ == "input_grad" and cog >= 16 and "im2col_compiled" in options:
            return "im2col_compiled"
        return "direct_compiled"
    channels = min(g.in_channels, g.out_channels) // g.groups
    # Blocks of samples over foldconv's pool, BLAS on one thread under each, beat one GEMM
    # over the whole batch on BLAS's threads wherever the batch gives every core blocks:
    # AlexNet's five layers at batch 16, ResNet's strided 3x3, a dilated 3x3, a 7x7 stem
    # (BENCHMARKS.md, "The fourth pass"). Not a 1x1 stride-1 layer, whose im2col reads
    # the input as its columns with no copy at all. Only where OpenBLAS's idle workers
    # sleep at once: a worker still spinning after another layer's multithreaded GEMM
    # takes a core from the blocks (AlexNet's step 764 ms against 653 for the GEMMs on
    # BLAS's threads then).
    blocks = (
        _openblas_env.workers_sleep()
        and "im2col_compiled" in options
        and not im2col.is_pointwise(g)
        and im2col_compiled.blocks(g, dtype.itemsize) >= available_cores()
    )
    if "winograd" in options and g.kernel == (3, 3) and g.dilation == (1, 1) and channels >= 128:
        # F(2x2) (outputs below 24) saves less than F(4x4): with blocks to run instead,
        # it pays only from 256 channels (AlexNet's conv3, not its grouped conv4/conv5).
        small_tiles = min(g.out_shape) < 24
        if pass_ in ("forward", "weight_grad") and min(g.out_shape) >= 8:
            if not (small_tiles and blocks and channels < 256):
                return "winograd"
        if pass_ == "input_grad" and min(g.padded_shape) >= 24:
            return "winograd"
    return "im2col_compiled" if blocks else "im2col"


def auto_algorithm(pass_: str, g: ConvGeometry, dtype: Any, xp: Any = None) -> str | None:
    """The algorithm ``algorithm='auto'`` runs for one pass, found without running it.

    The decision :func:`select` makes, exposed for inspection (``foldconv.summary`` shows
    it per layer): with the autotuner off, the cost model's choice (:func:`cost_model`);
    with it on (:func:`set_benchmark`), the fastest algorithm already timed for this pass,
    geometry, dtype and array module, or None when none has been timed yet (the first
    call will time every candidate).

    Parameters
    ----------
    pass_ : {'forward', 'input_grad', 'weight_grad'}
    g : ConvGeometry
        Of the convolution (for a transposed convolution, the convolution it is the
        transpose of: its forward is that one's ``input_grad`` pass).
    dtype : numpy dtype
        The compute dtype (float16 is computed in float32).
    xp : array module, optional
        numpy (default) or cupy: on the GPU, 'auto' runs the depthwise kernels or
        im2col (:func:`foldconv.cuda.conv.choose`).
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {', '.join(map(repr, PASSES))}, got {pass_!r}")
    dtype = np.dtype(dtype)
    if xp is not None and gpu_path(xp):
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        return gpu_conv.choose(pass_, g, dtype, "auto")
    if _benchmark:
        with _lock:
            return _tuned.get(_key(pass_, g, dtype, np if xp is None else xp))
    return cost_model(pass_, g, dtype)


def _key(pass_: str, g: ConvGeometry, dtype: Any, xp: Any) -> tuple:
    return (pass_, g, str(dtype), xp.__name__)


def _autotune(pass_: str, g: ConvGeometry, dtype: Any, xp: Any, args: tuple) -> str:
    key = _key(pass_, g, dtype, xp)
    with _lock:
        if key in _tuned:
            return _tuned[key]
    best, best_t = "im2col", float("inf")
    for name in candidates(pass_, g, dtype):
        fn = _KERNELS[pass_][name][1]
        if name == "direct_compiled":
            direct_compiled.warm(dtype)  # time the kernel, not Numba's compiler
        elif name == "im2col_compiled":
            im2col_compiled.warm(dtype)
        _threads_for(name, g)
        t0 = time.perf_counter()
        fn(*args, g)
        if xp.__name__ != "numpy":
            xp.cuda.get_current_stream().synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed < best_t:
            best, best_t = name, elapsed
    with _lock:
        _tuned[key] = best
    return best


def select(pass_: str, g: ConvGeometry, dtype: Any, algorithm: str, xp: Any, args: tuple) -> str:
    """The algorithm that will run ``pass_`` for ``algorithm`` ('auto' or a name)."""
    # The thread budget reaches BLAS before the first GEMM; a small pass runs its GEMMs
    # on one BLAS thread (threads.SMALL_GEMM_MACS). Kernels without a GEMM leave BLAS as
    # it is (its thread count also decides whether foldconv's idle workers poll).
    if algorithm == "auto" and _benchmark:
        name = _autotune(pass_, g, dtype, xp, args)
    elif algorithm == "auto":
        name = cost_model(pass_, g, dtype)
    else:
        name = check_algorithm(pass_, g, dtype, algorithm)
    _threads_for(name, g)
    return name


def _threads_for(name: str, g: ConvGeometry) -> None:
    """Give BLAS the threads the algorithm ``name`` runs this layer's GEMMs with."""
    if name in _NO_GEMM:
        ready()
    elif name in _OWN_THREADS:
        gemm_ready(0)  # one BLAS thread: the kernel's blocks run on foldconv's pool
    else:
        gemm_ready(_macs(g))


def _macs(g: ConvGeometry) -> int:
    """Multiply-adds of one pass (each of the three has the forward's count)."""
    per_output = (g.in_channels // g.groups) * g.kernel_size
    return g.batch * g.out_channels * math.prod(g.out_shape) * per_output


def check_algorithm(pass_: str, g: ConvGeometry, dtype: Any, algorithm: str) -> str:
    """The kernel an explicitly named ``algorithm`` runs ``pass_`` with; ValueError when
    it has none for the pass or does not support the geometry (on both devices)."""
    table = _KERNELS[pass_]
    name = algorithm if algorithm in table else _FALLBACK.get(algorithm, algorithm)
    if name not in table:
        raise ValueError(f"algorithm: {algorithm!r} has no kernel for the {pass_} pass")
    if name in ("direct_compiled", "im2col_compiled") and not compiled.get_compiled():
        raise ValueError(
            f"algorithm: {name!r} needs Numba (pip install numba) and the compiled "
            "kernels switched on (foldconv.set_compiled(True)); use 'auto' or 'im2col'"
        )
    if not table[name][0](g, dtype):
        raise ValueError(
            f"algorithm: {algorithm!r} does not support this convolution (kernel {g.kernel}, "
            f"stride {g.stride}, groups {g.groups}, in_channels {g.in_channels}); "
            "use 'auto' or 'im2col'"
        )
    return name


def _pads_itself(pass_: str, algorithm: str, g: ConvGeometry, *args: Any, bias: Any = None) -> Any:
    """Run one pass on the *unpadded* input where the chosen kernel pads by itself (zero
    padding; the compiled depthwise and direct kernels); None where that does not apply.
    ``bias`` (forward only) is added by the kernel where it can, else here."""
    if g.padding_mode != "zeros" or (algorithm == "auto" and _benchmark) or g.batch == 0:
        return None
    ready()  # the thread budget is looked at here too; these kernels call no BLAS
    name = cost_model(pass_, g, args[0].dtype) if algorithm == "auto" else algorithm
    if name == "direct_compiled":
        if not (direct_compiled.applies(g, *args) and direct_compiled.pads_itself(g)):
            return None
        if algorithm != "auto":
            check_algorithm(pass_, g, args[0].dtype, algorithm)
        if pass_ == "forward":
            return direct_compiled.forward(*args, g, padded=False, bias=bias)
        return getattr(direct_compiled, pass_)(*args, g, padded=False)
    if name != "depthwise" or not depthwise.supports(g):
        return None
    if not depthwise_compiled.applies(g, *args):
        return None
    y = getattr(depthwise_compiled, pass_)(*args, g, padded=False)
    return add_bias(y, bias) if pass_ == "forward" else y


def add_bias(y: Any, bias: Any) -> Any:
    """y += b per output channel (eq. F's + b), after the sum."""
    if bias is not None:
        y += bias.astype(y.dtype, copy=False).reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def forward_unpadded(algorithm: str, g: ConvGeometry, x: Any, w: Any, bias: Any = None) -> Any:
    """Eq. F from the unpadded input x (N, C_in, *S), plus ``bias`` (C_out,) if given:
    padded here unless the kernel pads by itself."""
    if gpu_path(get_array_module(x, w)):
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        return add_bias(gpu_conv.forward(algorithm, g, x, w), bias)
    y = _pads_itself("forward", algorithm, g, x, w, bias=bias)
    if y is None:
        y = run("forward", algorithm, g, apply_pad(x, g.pads, g.padding_mode), w)
        y = add_bias(y, bias)
    return y


def input_grad_unpadded(algorithm: str, g: ConvGeometry, dy: Any, w: Any) -> Any:
    """Eq. BX as the gradient of the unpadded input, dX (N, C_in, *S): the padding's
    adjoint applied here unless the kernel pads by itself."""
    if gpu_path(get_array_module(dy, w)):
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        return gpu_conv.input_grad(algorithm, g, dy, w)
    dx = _pads_itself("input_grad", algorithm, g, dy, w)
    if dx is None:
        dx_pad = run("input_grad", algorithm, g, dy, w)
        dx = pad_adjoint(dx_pad, g.in_shape, g.pads, g.padding_mode)
    return dx


def weight_grad_unpadded(algorithm: str, g: ConvGeometry, dy: Any, x: Any) -> Any:
    """Eq. BW from the unpadded input x: padded here unless the kernel pads by itself."""
    if gpu_path(get_array_module(dy, x)):
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        return gpu_conv.weight_grad(algorithm, g, dy, x)
    dw = _pads_itself("weight_grad", algorithm, g, dy, x)
    if dw is None:
        dw = run("weight_grad", algorithm, g, dy, apply_pad(x, g.pads, g.padding_mode))
    return dw


def run(pass_: str, algorithm: str, g: ConvGeometry, *args: Any) -> Any:
    """Run one pass: forward(x_pad, w), input_grad(dy, w) or weight_grad(dy, x_pad).

    A batch of 0 has nothing to compute: the output and the input gradient are empty and
    the weight gradient, a sum over no samples, is zero (as in PyTorch); no kernel runs.
    """
    xp = get_array_module(*args)
    if gpu_path(xp):
        from foldconv.cuda import conv as gpu_conv  # noqa: PLC0415

        # forward(x_pad, w), input_grad(dy, w) -> dX_pad, weight_grad(dy, x_pad)
        return getattr(gpu_conv, pass_)(algorithm, g, *args, padded=True)
    dtype = args[0].dtype
    if g.batch == 0:
        if algorithm != "auto":
            select(pass_, g, dtype, algorithm, xp, args)  # still rejects what cannot run
        return xp.zeros(_result_shape(pass_, g), dtype=dtype)
    name = select(pass_, g, dtype, algorithm, xp, args)
    return _KERNELS[pass_][name][1](*args, g)


def _result_shape(pass_: str, g: ConvGeometry) -> tuple[int, ...]:
    """The shape a pass returns: y (N, C_out, *out), dX_pad (N, C_in, *S_pad) or dW."""
    if pass_ == "forward":
        return (g.batch, g.out_channels) + g.out_shape
    if pass_ == "input_grad":
        return (g.batch, g.in_channels) + g.padded_shape
    return (g.out_channels, g.in_channels // g.groups) + g.kernel
