"""The GPU convolution suite of shared/docs/bench-suite.md: foldconv on CuPy vs cuDNN.

Per layer, float32, NCHW, strict IEEE float32 on both sides (foldconv's default; torch
with ``cudnn.allow_tf32 = False`` and ``cuda.matmul.allow_tf32 = False``):

- forward: ``foldconv.functional.conv`` vs ``torch.nn.functional.conv2d``;
- fwd+bwd: the forward, then the input, weight and bias gradients
  (``foldconv.functional.conv_backward`` vs ``torch.autograd.grad``).

Each layer is first checked: ours vs torch, relative error of y, dx, dw and db (MISMATCH
above 1e-4), and ours run twice must agree bit for bit. Then medians of CUDA-event times
after warm-up, ours and torch interleaved call by call; ratio ours/cuDNN; geometric means;
the issue's target (fwd+bwd geometric mean <= 1.5, no layer over 3x). cuDNN's benchmark
mode is on (its fastest algorithm per shape).

    python bench/gpu_suite.py [--quick] [--layers vgg_c3,depthwise] [--json PATH]
    python bench/gpu_suite.py --smoke      # CPU, tiny layers: checks the code, times nothing
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

import numpy as np

from foldconv.benchmark import Layer
from gpu_common import (
    MISMATCH_TOL,
    Device,
    Stage,
    add_common_arguments,
    failure,
    finite_or_none,
    fmt_ms,
    geomean,
    interleaved_ms,
    median,
    rel_err,
    strict_fp32,
)

# The GPU suite of shared/docs/bench-suite.md (name, N, C_in, C_out, size, K, stride, pad,
# dilation, groups).
GPU_SUITE = (
    Layer("lenet_c1", 256, 1, 6, (28, 28), 5, 1, 2),
    Layer("alexnet_c1", 128, 3, 96, (227, 227), 11, 4),
    Layer("alexnet_c2_g2", 128, 96, 256, (27, 27), 5, 1, 2, 1, 2),
    Layer("alexnet_c3", 128, 256, 384, (13, 13), 3, 1, 1),
    Layer("vgg_c3", 64, 256, 256, (56, 56), 3, 1, 1),
    Layer("resnet_1x1", 128, 256, 64, (56, 56), 1),
    Layer("resnet_s2", 128, 128, 128, (28, 28), 3, 2, 1),
    Layer("depthwise", 64, 32, 32, (112, 112), 3, 1, 1, 1, 32),
    Layer("dilated", 32, 64, 64, (64, 64), 3, 1, 2, 2),
)

# cuDNN fp32 on an H100 80GB HBM3 (bench-suite.md, 2026-11-26), ms: (fwd, fwd+bwd). Kept in
# the JSON beside this card's figures, as a check that torch ran as expected.
H100_CUDNN_MS = {
    "lenet_c1": (0.053, 0.288),
    "alexnet_c1": (1.173, 3.370),
    "alexnet_c2_g2": (2.017, 5.087),
    "alexnet_c3": (0.553, 2.293),
    "vgg_c3": (5.284, 9.576),
    "resnet_1x1": (0.455, 2.542),
    "resnet_s2": (0.259, 1.039),
    "depthwise": (0.258, 1.317),
    "dilated": (0.301, 1.333),
}

# The targets for fwd+bwd: geometric mean ours/cuDNN and the worst layer.
TARGET_GEOMEAN = 1.5
TARGET_MAX = 3.0


def smoke_layer(layer: Layer) -> Layer:
    """The layer at CPU-smoke size: batch 2, at most 8 channels per side (groups kept,
    depthwise stays depthwise), spatial size at most 15 (alexnet_c1's 11x11 stride-4
    kernel still fits twice)."""
    g = layer.groups
    cin = min(layer.in_channels, 8) // g * g or g
    cout = min(layer.out_channels, 8) // g * g or g
    if layer.groups == layer.in_channels == layer.out_channels:  # depthwise
        g = cin = cout = 4
    size = tuple(min(s, 15) for s in layer.size)
    return replace(layer, batch=2, in_channels=cin, out_channels=cout, size=size, groups=g)


def _inputs(layer: Layer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 x, w (scaled by 1/sqrt(fan_in), as an initialised layer), b, dy."""
    k = (layer.kernel,) * layer.ndim
    fan_in = layer.in_channels // layer.groups * layer.kernel**layer.ndim
    out_shape = (layer.batch, layer.out_channels) + layer.out_size()
    return {
        "x": rng.standard_normal((layer.batch, layer.in_channels) + layer.size, np.float32),
        "w": (
            rng.standard_normal(
                (layer.out_channels, layer.in_channels // layer.groups) + k, np.float32
            )
            / np.float32(np.sqrt(fan_in))
        ),
        "b": rng.standard_normal(layer.out_channels, np.float32),
        "dy": rng.standard_normal(out_shape, np.float32),
    }


def _geometry(layer: Layer) -> dict[str, int]:
    return {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
    }


def bench_layer(
    dev: Device, layer: Layer, *, warmup: int, repeats: int, budget_s: float, seed: int = 0
) -> dict[str, Any]:
    """Check and time one layer; returns the errors and the four lists of times (ms)."""
    from foldconv.functional import conv, conv_backward  # noqa: PLC0415

    torch = dev.torch
    tF = torch.nn.functional
    geo = _geometry(layer)
    a = _inputs(layer, np.random.default_rng(seed))
    x, w, b, dy = (dev.asarray(a[k]) for k in ("x", "w", "b", "dy"))
    xt, wt, bt, dyt = (dev.tensor(a[k]) for k in ("x", "w", "b", "dy"))
    xg, wg, bg = (dev.tensor(a[k], requires_grad=True) for k in ("x", "w", "b"))

    def ours_fwd() -> Any:
        return conv(x, w, b, **geo)

    def ours_fwd_bwd() -> Any:
        y = conv(x, w, b, **geo)
        return y, conv_backward(dy, x, w, **geo)

    def torch_fwd() -> Any:
        with torch.no_grad():
            return tF.conv2d(xt, wt, bt, **geo)

    def torch_fwd_bwd() -> Any:
        y = tF.conv2d(xg, wg, bg, **geo)
        return y, torch.autograd.grad(y, (xg, wg, bg), dyt)

    # Correctness first: the same inputs through both, compared in float64.
    y, (dx, dw, db) = ours_fwd_bwd()
    yt, (dxt, dwt, dbt) = torch_fwd_bwd()
    errors = {
        "y": rel_err(y, yt),
        "dx": rel_err(dx, dxt),
        "dw": rel_err(dw, dwt),
        "db": rel_err(db, dbt),
    }
    # Run to run, ours must repeat bit for bit (no atomics; issue 10).
    y2, (dx2, dw2, db2) = ours_fwd_bwd()
    repeatable = all(
        np.array_equal(dev.to_numpy(a1), dev.to_numpy(a2))
        for a1, a2 in ((y, y2), (dx, dx2), (dw, dw2), (db, db2))
    )
    del y, dx, dw, db, yt, dxt, dwt, dbt, y2, dx2, dw2, db2
    times = interleaved_ms(
        dev,
        {
            "ours_fwd": ("ours", ours_fwd),
            "torch_fwd": ("torch", torch_fwd),
            "ours_fwd_bwd": ("ours", ours_fwd_bwd),
            "torch_fwd_bwd": ("torch", torch_fwd_bwd),
        },
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
    )
    return {"errors": errors, "repeatable": repeatable, "times": times}


def run(
    dev: Device,
    layers: list[Layer],
    stage: Stage,
    *,
    warmup: int,
    repeats: int,
    budget_s: float,
) -> None:
    """Every layer, each guarded: a failing layer gets a FAILED row and the next one runs.
    Layers not started once ``budget_s`` is spent are listed as skipped."""
    ratios_fwd: list[float] = []
    ratios_fb: list[float] = []
    per_layer_s = budget_s / max(len(layers), 1)
    for layer in layers:
        if stage.elapsed() > budget_s:
            stage.add(layer.name, status="skipped (time budget)")
            continue
        try:
            r = bench_layer(dev, layer, warmup=warmup, repeats=repeats, budget_s=per_layer_s * 0.6)
        except Exception as err:  # noqa: BLE001 - reported in the table, the suite goes on
            stage.add(layer.name, status="FAILED", note=failure(f"conv {layer.name}", err))
            dev.free_memory()
            continue
        worst = max(r["errors"].values())
        status = "ok" if worst <= MISMATCH_TOL else "MISMATCH"
        note = f"rel err ≤ {worst:.1e}"
        if not r["repeatable"]:
            status = "MISMATCH (run to run)"
            note += "; a second run differs bitwise"
        for kind, label, sink in (("fwd", "fwd", ratios_fwd), ("fwd_bwd", "fwd+bwd", ratios_fb)):
            ours = median(r["times"][f"ours_{kind}"])
            ref = median(r["times"][f"torch_{kind}"])
            ratio = ours / ref
            sink.append(ratio)
            stage.add(
                f"{layer.name} {label}",
                ours=fmt_ms(ours),
                reference=f"{fmt_ms(ref)} cuDNN" if not dev.smoke else f"{fmt_ms(ref)} torch",
                ratio=ratio,
                status=status,
                note=note,
                ours_ms=ours,
                torch_ms=ref,
                reps=len(r["times"][f"ours_{kind}"]),
                errors=r["errors"],
                repeatable=r["repeatable"],
                h100_cudnn_ms=H100_CUDNN_MS.get(layer.name, (None, None))[kind == "fwd_bwd"],
                layer=layer.__dict__,
            )
        dev.free_memory()
    if ratios_fwd:
        stage.add("geomean fwd", ratio=finite_or_none(geomean(ratios_fwd)), layers=len(ratios_fwd))
    if ratios_fb:
        gm, worst = geomean(ratios_fb), max(ratios_fb)
        complete = len(ratios_fb) == len(layers)
        met = gm <= TARGET_GEOMEAN and worst <= TARGET_MAX
        verdict = "target met" if met else "target missed"
        if not complete:
            verdict += f" (over {len(ratios_fb)} of {len(layers)} layers)"
        if dev.smoke:
            met, verdict = False, "not judged (smoke)"
        stage.add(
            "geomean fwd+bwd",
            ratio=finite_or_none(gm),
            note=f"worst {worst:.2f}x; target ≤{TARGET_GEOMEAN} and none >{TARGET_MAX}: {verdict}",
            worst=worst,
            target_met=met and complete,
            layers=len(ratios_fb),
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, budget=45.0)
    p.add_argument("--layers", default=None, help="comma-separated names (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3; quick 2)")
    a = p.parse_args(argv)
    layers = list(GPU_SUITE)
    if a.layers:
        names = a.layers.split(",")
        unknown = sorted(set(names) - {layer.name for layer in layers})
        if unknown:
            p.error(f"--layers: unknown {', '.join(unknown)}")
        layers = [layer for layer in layers if layer.name in names]
    if a.smoke:
        layers = [smoke_layer(layer) for layer in layers]
    repeats = a.repeats or (2 if a.smoke else 5 if a.quick else 15)
    warmup = a.warmup or (1 if a.smoke else 2 if a.quick else 3)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    stage = Stage("conv", a.json, mode, repeats=repeats, warmup=warmup)
    try:
        dev = Device(a.smoke)
        settings = strict_fp32(dev.torch)
        # cuDNN's fastest algorithm per shape, found in the warm-up calls.
        dev.torch.backends.cudnn.benchmark = True
        settings["torch_cudnn_benchmark"] = True
        stage.doc["info"].update(settings)
        run(dev, layers, stage, warmup=warmup, repeats=repeats, budget_s=a.budget)
    except Exception as err:  # noqa: BLE001 - set-up failed: one FAILED row says why
        stage.add("set-up", status="FAILED", note=failure("conv suite set-up", err))
    stage.finish()
    return 0 if stage.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
