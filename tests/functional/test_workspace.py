"""The im2col workspace limit: validation, bounded memory on a large layer, tiling is exact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import foldconv
import foldconv.functional as fc
from foldconv.nn import Conv2d, ConvTranspose2d
from tests.gradcheck import rel_err

MiB = 1 << 20


@pytest.fixture
def restore_limit():
    previous = foldconv.get_workspace_limit()
    try:
        yield previous
    finally:
        foldconv.set_workspace_limit(previous)


# ----------------------------------------------------------------------------------------
# set_workspace_limit / get_workspace_limit
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (-(2**40), ValueError),
        (True, TypeError),
        (False, TypeError),
        (1.5, TypeError),
        (1e6, TypeError),
        ("1024", TypeError),
    ],
)
def test_set_workspace_limit_rejects_bad_values(restore_limit, bad, exc):
    before = foldconv.get_workspace_limit()
    with pytest.raises(exc, match="nbytes"):
        foldconv.set_workspace_limit(bad)
    assert foldconv.get_workspace_limit() == before  # a rejected value changes nothing


def test_set_workspace_limit_round_trip(restore_limit):
    original = restore_limit
    assert foldconv.set_workspace_limit(12345) == original
    assert foldconv.get_workspace_limit() == 12345
    assert foldconv.set_workspace_limit(np.int64(1 << 20)) == 12345
    assert foldconv.get_workspace_limit() == 1 << 20
    assert isinstance(foldconv.get_workspace_limit(), int)
    assert foldconv.set_workspace_limit(None) == 1 << 20
    assert foldconv.get_workspace_limit() == 256 * MiB


def test_default_limit_is_256_mib_in_a_fresh_process():
    code = "import foldconv; print(foldconv.get_workspace_limit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == 256 * MiB


# ----------------------------------------------------------------------------------------
# A layer whose full im2col buffer would be 2 GiB
# ----------------------------------------------------------------------------------------
# Each measurement runs in a fresh interpreter: an implementation may keep its scratch
# buffer between calls (allowed, within the limit), and a buffer cached by an earlier test
# would be reused without being allocated, hence invisible to tracemalloc.
ROOT = Path(__file__).resolve().parents[2]


def _in_fresh_process(call: str) -> dict:
    code = (
        f"import json; from tests.functional import test_workspace as t; print(json.dumps({call}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start_the_pool() -> None:
    """Start foldconv's worker threads before tracing: starting them loads Numba's compiled
    wait loop (functional/pool.py), a one-time cost of the process (~25 MB of Python
    objects when Numba is first imported), not a workspace of the layer measured."""
    from foldconv.functional.threads import parallel_map

    parallel_map(lambda i: i, range(2))


def _conv_layer_worker(n: int, limit_mib: int) -> dict:
    """Run Conv2d(64 -> 2, 8x8, 'same') on n x 64 x 128 x 128 float32 under tracemalloc."""
    foldconv.set_workspace_limit(limit_mib * MiB)
    c_in, h, k = 64, 128, 8
    layer = Conv2d(c_in, 2, k, padding="same", rng=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c_in, h, h), dtype=np.float32)
    g = rng.standard_normal((n, 2, h, h), dtype=np.float32)
    _start_the_pool()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    y = layer(x)
    fwd_peak = tracemalloc.get_traced_memory()[1] - base
    gx = layer.backward(g)
    total_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    # The tiles were stitched correctly: spot checks in float64 against the definition.
    lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2  # 'same' at stride 1: (3, 4)
    w = layer.weight.data.astype(np.float64)
    b = layer.bias.data.astype(np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (lo, hi), (lo, hi)))
    errs = {"y": 0.0, "gx": 0.0, "gw": 0.0, "gb": 0.0}
    for ni, o, i, j in [(0, 0, 0, 0), (7, 1, 127, 127), (3, 0, 64, 5), (5, 1, 17, 100)]:
        ni %= n
        ref = np.sum(xp[ni, :, i : i + k, j : j + k].astype(np.float64) * w[o]) + b[o]
        errs["y"] = max(errs["y"], abs(float(y[ni, o, i, j]) - ref) / max(1.0, abs(ref)))
    for ni, c, r, s in [(0, 0, 0, 0), (7, 63, 127, 127), (4, 10, 64, 3), (2, 33, 1, 126)]:
        ni %= n
        ref = 0.0
        for p in range(k):
            for q in range(k):
                i, j = r + lo - p, s + lo - q
                if 0 <= i < h and 0 <= j < h:
                    ref += float(np.dot(g[ni, :, i, j].astype(np.float64), w[:, c, p, q]))
        errs["gx"] = max(errs["gx"], abs(float(gx[ni, c, r, s]) - ref) / max(1.0, abs(ref)))
    for p, q in [(0, 0), (7, 7), (3, 4)]:
        window = xp[:, :, p : p + h, q : q + h].astype(np.float64)
        ref = np.tensordot(g.astype(np.float64), window, axes=([0, 2, 3], [0, 2, 3]))
        errs["gw"] = max(errs["gw"], rel_err(layer.weight.grad[:, :, p, q], ref))
    errs["gb"] = rel_err(layer.bias.grad, g.astype(np.float64).sum(axis=(0, 2, 3)))
    return {
        "fwd_peak": fwd_peak,
        "total_peak": total_peak,
        "shapes_ok": bool(
            y.shape == (n, 2, h, h)
            and y.dtype == np.float32
            and gx.shape == x.shape
            and gx.dtype == np.float32
        ),
        **errs,
    }


@pytest.mark.slow
@pytest.mark.parametrize("n,limit_mib", [(8, 256), (2, 32)], ids=["batch-tiles", "row-tiles"])
def test_large_layer_stays_within_the_workspace_limit(n, limit_mib):
    """Conv2d(64 -> 2, 8x8, 'same') on n x 64 x 128 x 128 float32.

    The full im2col matrix is N * (C_in * kH * kW) * (H_out * W_out) * 4 bytes
    = 8 * 4096 * 16384 * 4 = 2 GiB for N = 8 (and the backward's column-gradient matrix as
    much again); one sample's is 256 MiB. With the limit at 256 MiB the work must be split
    over the batch; with N = 2 and a 32 MiB limit, over the output rows of each sample.

    What a call may allocate beyond the limit is what it must return or can hardly avoid:

    - forward: the output (N * 128 KiB) and a padded copy of the input
      (N * 64 * 135 * 135 * 4 bytes = N * 4.45 MiB);
    - backward: the input gradient (N * 4 MiB), a padded-size input-gradient accumulator
      and a padded copy of the input (N * 4.45 MiB each), the weight/bias gradients (32 KiB);

    plus 16 MiB of slack for small temporaries (per-tile GEMM outputs, index arrays). For
    N = 8 that bound is ~380 MiB, far below the 2 GiB of an untiled im2col; for N = 2 it is
    ~75 MiB, below even a single sample's 256 MiB buffer.
    """
    limit = limit_mib * MiB
    c_in, c_out, h, k = 64, 2, 128, 8
    isz = 4
    per_sample_cols = c_in * k * k * h * h * isz
    full_cols = n * per_sample_cols
    assert per_sample_cols == 256 * MiB
    if n == 8:
        assert full_cols == 2 * 1024 * MiB
    padded = n * c_in * (h + k - 1) ** 2 * isz
    out_bytes = n * c_out * h * h * isz
    in_bytes = n * c_in * h * h * isz
    param_bytes = (c_out * c_in * k * k + c_out) * isz
    slack = 16 * MiB
    fwd_bound = limit + padded + out_bytes + slack
    total_bound = limit + out_bytes + in_bytes + 2 * padded + 2 * param_bytes + slack
    # the bound is far below an untiled buffer: the batch's (N = 8), one sample's (N = 2)
    assert total_bound < (full_cols / 4 if n == 8 else per_sample_cols / 2)

    r = _in_fresh_process(f"t._conv_layer_worker({n}, {limit_mib})")
    assert r["fwd_peak"] <= fwd_bound, f"forward peak {r['fwd_peak'] / MiB:.0f} MiB"
    assert r["total_peak"] <= total_bound, f"fwd+bwd peak {r['total_peak'] / MiB:.0f} MiB"
    assert r["shapes_ok"]
    assert r["y"] <= 1e-4 and r["gx"] <= 1e-4 and r["gw"] <= 1e-4 and r["gb"] <= 1e-5, r


def _transposed_layer_worker() -> dict:
    foldconv.set_workspace_limit(32 * MiB)
    n, c_in, c_out, h, k = 2, 2, 64, 128, 8
    h_out = h - 1 + k
    layer = ConvTranspose2d(c_in, c_out, k, rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c_in, h, h), dtype=np.float32)
    g = rng.standard_normal((n, c_out, h_out, h_out), dtype=np.float32)
    _start_the_pool()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    y = layer(x)
    gx = layer.backward(g)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    # spot checks against the definition: y[n, o, i, j] = sum x[n, c, i-p, j-q] w[c, o, p, q]
    w = layer.weight.data.astype(np.float64)
    b = layer.bias.data.astype(np.float64)
    err_y = err_gx = 0.0
    for ni, o, i, j in [(0, 0, 0, 0), (1, 63, 134, 134), (1, 7, 70, 3), (0, 40, 5, 131)]:
        ref = b[o]
        for p in range(k):
            for q in range(k):
                r, s = i - p, j - q
                if 0 <= r < h and 0 <= s < h:
                    ref += float(np.dot(x[ni, :, r, s].astype(np.float64), w[:, o, p, q]))
        err_y = max(err_y, abs(float(y[ni, o, i, j]) - ref) / max(1.0, abs(ref)))
    for ni, c, r, s in [(0, 0, 0, 0), (1, 1, 127, 127), (0, 1, 64, 9)]:
        ref = float(np.sum(g[ni, :, r : r + k, s : s + k].astype(np.float64) * w[c]))
        err_gx = max(err_gx, abs(float(gx[ni, c, r, s]) - ref) / max(1.0, abs(ref)))
    shapes_ok = y.shape == (n, c_out, h_out, h_out) and gx.shape == x.shape
    return {"peak": peak, "y": err_y, "gx": err_gx, "shapes_ok": bool(shapes_ok)}


@pytest.mark.slow
def test_large_transposed_layer_stays_within_the_workspace_limit():
    """ConvTranspose2d(2 -> 64, 8x8) on 2 x 2 x 128 x 128 float32, limit 32 MiB.

    Its forward is a convolution's input gradient: the column matrix W~^T . x has
    (C_out * kH * kW) x (H_in * W_in) = 4096 x 16384 float32 entries per sample, 256 MiB
    (512 MiB for the batch); so does the backward's unfold of grad_output. Beyond the limit
    a call may allocate the output, 2 x 64 x 135 x 135 x 4 bytes = 8.9 MiB, and an
    accumulator of that size; the input gradient (512 KiB); the weight/bias gradients
    (64 KiB); and 16 MiB of slack: ~60 MiB in all, below half a single sample's buffer.
    """
    limit = 32 * MiB
    n, c_in, c_out, h, k = 2, 2, 64, 128, 8
    isz = 4
    per_sample_cols = c_out * k * k * h * h * isz
    assert per_sample_cols == 256 * MiB
    out_bytes = n * c_out * (h - 1 + k) ** 2 * isz
    in_bytes = n * c_in * h * h * isz
    param_bytes = (c_in * c_out * k * k + c_out) * isz
    bound = limit + 2 * out_bytes + in_bytes + 2 * param_bytes + 16 * MiB
    assert bound < per_sample_cols / 2
    r = _in_fresh_process("t._transposed_layer_worker()")
    assert r["peak"] <= bound, f"peak {r['peak'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert r["shapes_ok"]
    assert r["y"] <= 1e-4 and r["gx"] <= 1e-4, r


def _lowered_limit_worker() -> dict:
    _start_the_pool()
    tracemalloc.start()
    x = np.ones((1, 64, 128, 128), np.float32)
    w = np.ones((2, 64, 8, 8), np.float32)
    foldconv.set_workspace_limit(256 * MiB)
    fc.conv(x, w, padding="same")
    foldconv.set_workspace_limit(32 * MiB)
    y = fc.conv(x, w, padding="same")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"held": held, "y_bytes": y.nbytes, "inputs": x.nbytes + w.nbytes}


@pytest.mark.slow
def test_lowering_the_limit_bounds_the_memory_kept_afterwards():
    """After set_workspace_limit(32 MiB) and a call, no more than 32 MiB of workspace is kept.

    A first call under 256 MiB may build (and cache) a 256 MiB buffer, one sample's full
    im2col matrix; once the limit is lowered, the memory still held after the next call
    (traced since before the first) is at most the new limit plus the live arrays
    (inputs and output) and 4 MiB of slack.
    """
    r = _in_fresh_process("t._lowered_limit_worker()")
    bound = 32 * MiB + r["y_bytes"] + r["inputs"] + 4 * MiB
    assert r["held"] <= bound, f"{r['held'] / MiB:.0f} MiB held after lowering the limit"


# ----------------------------------------------------------------------------------------
# Tiled results equal untiled ones
# ----------------------------------------------------------------------------------------
# rank-specific problems (batch 3 so that batch tiles have a remainder)
TILING = {
    1: dict(
        x=(3, 3, 11),
        w=(4, 3, 3),
        stride=2,
        padding="same",
        dilation=2,
        groups=1,
        padding_mode="circular",
    ),
    2: dict(
        x=(3, 4, 9, 8),
        w=(6, 2, 3, 2),
        stride=(2, 1),
        padding=((1, 2), (0, 1)),
        dilation=(1, 2),
        groups=2,
        padding_mode="reflect",
    ),
    3: dict(
        x=(3, 2, 5, 4, 4),
        w=(3, 2, 2, 2, 2),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        padding_mode="replicate",
    ),
}


def _tiling_problem(rank):
    spec = dict(TILING[rank])
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(spec.pop("x"))
    w = rng.standard_normal(spec.pop("w"))
    b = rng.standard_normal(w.shape[0])
    return x, w, b, spec, rng


def _limits(x, w, y):
    """Limits that force tiling over the batch, then over output rows, with remainders."""
    n, c_in = x.shape[:2]
    groups_rows = c_in * math.prod(w.shape[2:])  # rows of the im2col matrix (all groups)
    out = y.shape[2:]
    per_sample = groups_rows * math.prod(out) * x.itemsize
    per_row = per_sample // out[0]  # one index of the first output dimension
    full = n * per_sample
    limits = [full - 8, 2 * per_sample + per_sample // 2, per_sample - 8]
    limits += [3 * per_row + 8, 2 * per_row]
    return full, sorted(set(limits), reverse=True)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_tiled_conv_equals_untiled(restore_limit, rank):
    x, w, b, opts, rng = _tiling_problem(rank)
    foldconv.set_workspace_limit(1 << 34)
    y_ref = fc.conv(x, w, b, **opts, algorithm="im2col")
    g = rng.standard_normal(y_ref.shape)
    grads_ref = {a: fc.conv_backward(g, x, w, **opts, algorithm=a) for a in ("im2col", "full_conv")}
    full, limits = _limits(x, w, y_ref)
    assert foldconv.get_workspace_limit() > 2 * full  # the reference ran untiled
    for limit in limits:
        foldconv.set_workspace_limit(limit)
        for alg in ("im2col", "auto"):
            y = fc.conv(x, w, b, **opts, algorithm=alg)
            assert rel_err(y, y_ref) <= 1e-12, (limit, alg)
        for alg in ("im2col", "full_conv", "auto"):
            got = fc.conv_backward(g, x, w, **opts, algorithm=alg)
            ref = grads_ref["full_conv" if alg == "full_conv" else "im2col"]
            for name, a, r in zip(
                ("grad_input", "grad_weight", "grad_bias"), got, ref, strict=True
            ):
                assert rel_err(a, r) <= 1e-12, (limit, alg, name)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_tiled_conv_transpose_and_unbatched_equal_untiled(restore_limit, rank):
    x, w, b, opts, rng = _tiling_problem(rank)
    t_opts = dict(stride=2, padding=1, output_padding=1, groups=opts["groups"], dilation=1)
    wt = rng.standard_normal((w.shape[0], w.shape[1]) + w.shape[2:])
    xt = rng.standard_normal((3, w.shape[0]) + x.shape[2:])
    foldconv.set_workspace_limit(1 << 34)
    yt_ref = fc.conv_transpose(xt, wt, b[: wt.shape[1] * opts["groups"]], **t_opts)
    gt = rng.standard_normal(yt_ref.shape)
    gt_ref = fc.conv_transpose_backward(gt, xt, wt, **t_opts)
    y1_ref = fc.conv(x[0], w, b, **opts)
    for limit in (4096, 1024 + 8):
        foldconv.set_workspace_limit(limit)
        assert (
            rel_err(fc.conv_transpose(xt, wt, b[: wt.shape[1] * opts["groups"]], **t_opts), yt_ref)
            <= 1e-12
        )
        for a, r in zip(fc.conv_transpose_backward(gt, xt, wt, **t_opts), gt_ref, strict=True):
            assert rel_err(a, r) <= 1e-12, limit
        assert rel_err(fc.conv(x[0], w, b, **opts), y1_ref) <= 1e-12


def test_tiling_in_float32_and_float16(restore_limit):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 10, 9))
    w = rng.standard_normal((2, 3, 3, 3))
    opts = dict(stride=1, padding=1)
    ref = fc.conv(x, w, **opts)
    for dtype, tol in ((np.float32, 1e-5), (np.float16, 1e-3)):
        foldconv.set_workspace_limit(1 << 34)
        untiled = fc.conv(x.astype(dtype), w.astype(dtype), **opts)
        foldconv.set_workspace_limit(3 * 27 * 9 * np.dtype(dtype).itemsize * 2)
        tiled = fc.conv(x.astype(dtype), w.astype(dtype), **opts)
        assert tiled.dtype == dtype
        assert rel_err(tiled, untiled) <= tol
        assert rel_err(tiled, ref) <= tol
        foldconv.set_workspace_limit(1 << 34)
