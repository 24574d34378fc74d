"""The convolution benchmark suite: foldconv against PyTorch, interleaved in one run.

Used by ``foldconv bench`` and ``bench/bench_conv.py``. PyTorch is optional: without
it only foldconv's times are printed. Times are medians of repeated runs; each
repetition times ours and PyTorch's back to back so that both see the same load.
PyTorch runs in NCHW and in channels_last, and ours is compared with the faster.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Layer:
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: tuple[int, ...]
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def ndim(self) -> int:
        return len(self.size)

    def out_size(self) -> tuple[int, ...]:
        k = self.dilation * (self.kernel - 1) + 1
        return tuple((s + 2 * self.padding - k) // self.stride + 1 for s in self.size)

    def forward_flops(self) -> float:
        """2 · N · C_out · prod(out) · (C_in/groups) · prod(K) multiply-adds."""
        return (
            2.0
            * self.batch
            * self.out_channels
            * math.prod(self.out_size())
            * (self.in_channels // self.groups)
            * self.kernel**self.ndim
        )


# The CPU suite of shared/docs/bench-suite.md.
CPU_SUITE = (
    Layer("lenet_c1", 64, 1, 6, (28, 28), 5, 1, 2),
    Layer("lenet_c2", 64, 6, 16, (14, 14), 5),
    Layer("alexnet_c1", 16, 3, 96, (227, 227), 11, 4),
    Layer("alexnet_c2_g2", 16, 96, 256, (27, 27), 5, 1, 2, 1, 2),
    Layer("alexnet_c3", 16, 256, 384, (13, 13), 3, 1, 1),
    Layer("vgg_c3", 8, 256, 256, (56, 56), 3, 1, 1),
    Layer("resnet_1x1", 16, 256, 64, (56, 56), 1),
    Layer("resnet_s2", 16, 128, 128, (28, 28), 3, 2, 1),
    Layer("depthwise", 16, 32, 32, (112, 112), 3, 1, 1, 1, 32),
    Layer("dilated", 8, 64, 64, (64, 64), 3, 1, 2, 2),
)


# What a timed call is measured by: wall time, or the CPU time of this process (all its
# threads). On a machine that other processes keep busy a call's wall time is mostly
# waiting for a core; with one thread per library its CPU time is the work it did.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _elapsed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


# BLAS and OpenMP worker threads keep spinning for a while after a call returns (OpenBLAS
# for up to ~2^28 cycles, libgomp for its spin count) and steal the cores from whatever
# runs next. Each block of timed calls therefore starts after a pause and an untimed call,
# so that neither library is measured while the other's threads still spin.
SETTLE_S = 0.15


def _interleaved(
    fns: dict[str, Callable[[], Any]],
    min_reps: int,
    budget_s: float,
    per_block: int = 3,
    settle_s: float = SETTLE_S,
    clock: str = "wall",
) -> dict:
    """Median seconds of each callable: rounds of blocks, one block per callable per round.

    A block is a pause of SETTLE_S, one untimed call, then ``per_block`` timed calls, each
    measured by ``clock`` ("wall" or "cpu", see CLOCKS).
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds * per_block < min_reps or (time.perf_counter() - start < budget_s and rounds < 50):
        for key, fn in fns.items():
            if settle_s > 0:
                time.sleep(settle_s)
                fn()
            samples[key].extend(_elapsed(fn, CLOCKS[clock]) for _ in range(per_block))
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}


class PlainNumPy:
    """The seed written straightforwardly: the baseline of shared/docs/bench-suite.md.

    im2col by KH·KW strided copies into a (C·KH·KW, N·Ho·Wo) matrix, one GEMM per group,
    col2im by KH·KW strided adds; 2-d only. Timed beside ours and PyTorch's so that "not
    slower than plain NumPy" is judged in the same run. Not used by the library.
    """

    def __init__(self, layer: Layer):
        if layer.ndim != 2:
            raise ValueError("layer: the plain NumPy baseline is 2-d only")
        self.l = layer

    def _cols(self, x):
        l, k = self.l, self.l.kernel
        p, s, d = l.padding, l.stride, l.dilation
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        n, c = x.shape[:2]
        ho, wo = l.out_size()
        cols = np.empty((c, k, k, n, ho, wo), dtype=x.dtype)
        for i in range(k):
            for j in range(k):
                cols[:, i, j] = xp[
                    :, :, i * d : i * d + s * (ho - 1) + 1 : s, j * d : j * d + s * (wo - 1) + 1 : s
                ].transpose(1, 0, 2, 3)
        return cols.reshape(l.groups, c // l.groups * k * k, n * ho * wo), xp.shape

    def forward(self, x, w, b):
        l = self.l
        cols, _ = self._cols(x)
        wg = w.reshape(l.groups, l.out_channels // l.groups, -1)
        y = np.stack([wg[g] @ cols[g] for g in range(l.groups)])
        ho, wo = l.out_size()
        y = y.reshape(l.out_channels, x.shape[0], ho, wo).transpose(1, 0, 2, 3) + b[:, None, None]
        return np.ascontiguousarray(y)

    def backward(self, dy, x, w):
        l, k = self.l, self.l.kernel
        cols, padded = self._cols(x)
        n = x.shape[0]
        ho, wo = l.out_size()
        dyg = dy.transpose(1, 0, 2, 3).reshape(l.groups, l.out_channels // l.groups, -1)
        wg = w.reshape(l.groups, l.out_channels // l.groups, -1)
        dw = np.stack([dyg[g] @ cols[g].T for g in range(l.groups)]).reshape(w.shape)
        dcols = np.stack([wg[g].T @ dyg[g] for g in range(l.groups)])
        dcols = dcols.reshape(l.in_channels, k, k, n, ho, wo)
        dxp = np.zeros(padded, dtype=x.dtype)
        s, d, p = l.stride, l.dilation, l.padding
        for i in range(k):
            for j in range(k):
                dxp[
                    :, :, i * d : i * d + s * (ho - 1) + 1 : s, j * d : j * d + s * (wo - 1) + 1 : s
                ] += dcols[:, i, j].transpose(1, 0, 2, 3)
        dx = dxp[:, :, p : padded[2] - p, p : padded[3] - p]
        return dx, dw, dy.sum(axis=(0, 2, 3))


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def bench_layer(
    layer: Layer,
    *,
    min_reps: int = 5,
    budget_s: float = 2.0,
    seed: int = 0,
    algorithm: str = "auto",
    settle_s: float = SETTLE_S,
    baseline: bool = False,
    channels_last: bool = True,
    clock: str = "wall",
) -> dict:
    """Time forward and forward+backward of one layer, ours and (if installed) PyTorch's.

    ``clock``: "wall" (elapsed time) or "cpu" (the process's CPU time, all threads).

    With ``channels_last`` (2-d and 3-d layers), PyTorch is timed twice per pass, once on
    contiguous NCHW tensors and once with the input, weight and output gradient in
    ``torch.channels_last`` (``channels_last_3d``) memory format; ``torch_*_ms`` and the
    ratios are then against the faster of the two and ``torch_*_layout`` names it.
    """
    from foldconv.functional import conv, conv_backward

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((layer.batch, layer.in_channels) + layer.size, dtype=np.float32)
    w_shape = (layer.out_channels, layer.in_channels // layer.groups) + (layer.kernel,) * layer.ndim
    w = (rng.standard_normal(w_shape) * 0.1).astype(np.float32)
    b = rng.standard_normal(layer.out_channels).astype(np.float32)
    gy = rng.standard_normal((layer.batch, layer.out_channels) + layer.out_size()).astype(
        np.float32
    )
    opts = dict(
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
    )

    def ours_fwd():
        return conv(x, w, b, **opts, algorithm=algorithm)

    def ours_fwd_bwd():
        conv(x, w, b, **opts, algorithm=algorithm)
        return conv_backward(gy, x, w, **opts, algorithm=algorithm)

    fns = {"ours_fwd": ours_fwd, "ours_fwd_bwd": ours_fwd_bwd}
    if baseline and layer.ndim == 2:
        plain = PlainNumPy(layer)

        def plain_fwd_bwd():
            plain.forward(x, w, b)
            return plain.backward(gy, x, w)

        fns.update(plain_fwd=lambda: plain.forward(x, w, b), plain_fwd_bwd=plain_fwd_bwd)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(int(os.environ.get("FOLDCONV_BENCH_THREADS", "2")))
        fns.update(torch_callables(torch, layer, x, w, b, gy, channels_last=channels_last))
    t = _interleaved(fns, min_reps, budget_s, settle_s=settle_s, clock=clock)
    flops = layer.forward_flops()
    row = {
        "name": layer.name,
        "algorithm": algorithm,
        "clock": clock,
        "picked": _picked(layer, x, w, opts) if algorithm == "auto" else None,
        "layer": asdict(layer),
        "ours_fwd_ms": t["ours_fwd"] * 1e3,
        "ours_fwd_bwd_ms": t["ours_fwd_bwd"] * 1e3,
        "ours_fwd_gflops": flops / t["ours_fwd"] / 1e9,
        "ours_fwd_bwd_gflops": 3 * flops / t["ours_fwd_bwd"] / 1e9,
    }
    if "plain_fwd" in t:
        row.update(plain_fwd_ms=t["plain_fwd"] * 1e3, plain_fwd_bwd_ms=t["plain_fwd_bwd"] * 1e3)
    if torch is not None:
        for p in ("fwd", "fwd_bwd"):
            row[f"torch_nchw_{p}_ms"] = t[f"torch_{p}"] * 1e3
            if f"torch_cl_{p}" in t:
                row[f"torch_cl_{p}_ms"] = t[f"torch_cl_{p}"] * 1e3
        _against_faster_torch(row)
    return row


def torch_callables(torch, layer: Layer, x, w, b, gy, *, channels_last: bool = True) -> dict:
    """PyTorch's timed calls for one layer: ``torch_fwd`` and ``torch_fwd_bwd`` on NCHW
    tensors and, with ``channels_last`` on a 2-d or 3-d layer, ``torch_cl_fwd`` and
    ``torch_cl_fwd_bwd`` on the same values in channels-last storage.

    Each call returns the output (forward) or ``(input, weight, bias)`` whose ``.grad``
    the backward filled. ``x`` (N, C_in, *size), ``w`` (C_out, C_in/groups, *kernel),
    ``b`` (C_out,), ``gy`` (N, C_out, *out_size): float32 NumPy arrays.
    """
    conv_t = {
        1: torch.nn.functional.conv1d,
        2: torch.nn.functional.conv2d,
        3: torch.nn.functional.conv3d,
    }[layer.ndim]
    opts = dict(
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
    )
    xt, wt, bt, gyt = (torch.from_numpy(a) for a in (x, w, b, gy))
    fmt = _channels_last_format(torch, layer.ndim) if channels_last else None
    layouts = {"torch": torch.contiguous_format}
    if fmt is not None:
        # The same values in NHWC (NDHWC) storage, the gradient of the output too, as it
        # arrives from the next layer of a network run in channels_last. oneDNN picks
        # different kernels for it; which layout is faster depends on the layer.
        layouts["torch_cl"] = fmt
    fns = {}
    for prefix, mf in layouts.items():
        xc, wc, gyc = (a.contiguous(memory_format=mf) for a in (xt, wt, gyt))
        xg = xc.clone(memory_format=mf).requires_grad_(True)
        wg = wc.clone(memory_format=mf).requires_grad_(True)
        bg = bt.clone().requires_grad_(True)

        def fwd(xc=xc, wc=wc):
            with torch.no_grad():
                return conv_t(xc, wc, bt, **opts)

        def fwd_bwd(xg=xg, wg=wg, bg=bg, gyc=gyc):
            xg.grad = wg.grad = bg.grad = None
            conv_t(xg, wg, bg, **opts).backward(gyc)
            return xg, wg, bg

        fns.update({f"{prefix}_fwd": fwd, f"{prefix}_fwd_bwd": fwd_bwd})
    return fns


def _channels_last_format(torch, ndim: int):
    """PyTorch's channels-last memory format for ``ndim`` spatial dims (None for 1-d)."""
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(ndim)


# The names of the contiguous and the channels-last layout by number of spatial dims.
_LAYOUT_NAMES = {1: ("NCL", None), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}


def _against_faster_torch(row: dict) -> None:
    """Set ``torch_{p}_ms`` to the faster of PyTorch's layouts (``torch_{p}_layout`` says
    which, e.g. "NCHW" or "NHWC") and the ratios ours/PyTorch, plain/PyTorch against it."""
    ndim = len(row["layer"]["size"]) if "layer" in row else 2
    contiguous, last = _LAYOUT_NAMES.get(ndim, _LAYOUT_NAMES[2])
    for p in ("fwd", "fwd_bwd"):
        times = {contiguous: row[f"torch_nchw_{p}_ms"]}
        if f"torch_cl_{p}_ms" in row:
            times[last] = row[f"torch_cl_{p}_ms"]
        layout = min(times, key=times.__getitem__)
        row[f"torch_{p}_ms"] = times[layout]
        row[f"torch_{p}_layout"] = layout
        row[f"ratio_{p}"] = row[f"ours_{p}_ms"] / times[layout]
        if f"plain_{p}_ms" in row:
            row[f"plain_ratio_{p}"] = row[f"plain_{p}_ms"] / times[layout]


def _picked(layer: Layer, x, w, opts) -> dict:
    """What algorithm='auto' runs for each pass of this layer (cost model or autotuner)."""
    from foldconv.functional import _args, dispatch

    g = _args.conv_geometry(
        x.shape,
        w.shape,
        opts["stride"],
        opts["padding"],
        opts["dilation"],
        opts["groups"],
        "zeros",
    )
    if dispatch.get_benchmark():
        tuned = {key[0]: name for key, name in dispatch.tuned_algorithms().items() if key[1] == g}
        return tuned
    return {p: dispatch.cost_model(p, g, x.dtype) for p in dispatch.PASSES}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        pass
    # OpenBLAS picks its kernel at load time; an environment may pin an older one
    # (OPENBLAS_CORETYPE=Haswell runs AVX2 code on an AVX-512 CPU: half the GEMM rate).
    info["blas_kernel"] = _blas_kernel()
    from foldconv.functional import compiled

    info["compiled"] = _numba_version() if compiled.get_compiled() else "off"
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def _blas_kernel() -> str:
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    try:
        import threadpoolctl

        for lib in threadpoolctl.threadpool_info():
            if lib.get("internal_api") == "openblas" and "numpy" in lib.get("filepath", ""):
                arch = lib.get("architecture", "?")
                return f"{arch} (pinned by OPENBLAS_CORETYPE)" if pinned else arch
    except Exception:
        pass
    return f"{pinned} (OPENBLAS_CORETYPE)" if pinned else "unknown"


def _numba_version() -> str:
    try:
        import numba

        return f"numba {numba.__version__}"
    except ImportError:
        return "off"


def format_table(rows: list[dict]) -> str:
    """The Markdown table of ``rows``; PyTorch's columns are its faster layout's time."""
    has_torch = all("torch_fwd_ms" in r for r in rows)
    # A layout column only when some row timed PyTorch in both layouts.
    has_layout = has_torch and any("torch_cl_fwd_ms" in r for r in rows)
    has_range = has_torch and all("ratio_fwd_bwd_min" in r for r in rows)
    has_plain = has_torch and all("plain_fwd_bwd_ms" in r for r in rows)
    head = ["layer", "ours fwd ms"]
    if has_torch:
        head += ["torch fwd ms"] + (["torch fwd layout"] if has_layout else []) + ["fwd ratio"]
    head.append("ours f+b ms")
    if has_torch:
        head += ["torch f+b ms"] + (["torch f+b layout"] if has_layout else []) + ["f+b ratio"]
    if has_range:
        head.append("f+b ratio range")
    head += ["ours f+b GFLOP/s", "algorithm (fwd/dx/dw)"]
    if has_plain:
        head += ["plain NumPy f+b ms", "plain f+b ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]]
        for p in ("fwd", "fwd_bwd"):
            cells.append(f"{r[f'ours_{p}_ms']:.2f}")
            if has_torch:
                cells.append(f"{r[f'torch_{p}_ms']:.2f}")
                if has_layout:
                    cells.append(r.get(f"torch_{p}_layout", ""))
                cells.append(f"{r[f'ratio_{p}']:.2f}")
        if has_range:
            cells.append(f"{r['ratio_fwd_bwd_min']:.2f}-{r['ratio_fwd_bwd_max']:.2f}")
        cells.append(f"{r['ours_fwd_bwd_gflops']:.1f}")
        picked = r.get("picked")
        if picked:
            cells.append(
                "/".join(picked.get(p, "?") for p in ("forward", "input_grad", "weight_grad"))
            )
        else:
            cells.append(r["algorithm"])
        if has_plain:
            cells += [f"{r['plain_fwd_bwd_ms']:.2f}", f"{r['plain_ratio_fwd_bwd']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if has_torch and rows:
        cells = ["geometric mean", ""]
        for p in ("fwd", "fwd_bwd"):
            cells += [""] * (2 if has_layout else 1) + [
                f"{geomean([r[f'ratio_{p}'] for r in rows]):.2f}"
            ]
            if p == "fwd":
                cells.append("")
        cells += [""] * (len(head) - len(cells))
        if has_plain:
            cells[-1] = f"{geomean([r['plain_ratio_fwd_bwd'] for r in rows]):.2f}"
        lines.append("| " + " | ".join(cells) + " |")
        if has_layout:
            g_f = geomean([r["ours_fwd_ms"] / r["torch_nchw_fwd_ms"] for r in rows])
            g_fb = geomean([r["ours_fwd_bwd_ms"] / r["torch_nchw_fwd_bwd_ms"] for r in rows])
            lines.append("")
            lines.append(
                f"Against PyTorch in NCHW only (median times): geometric mean fwd {g_f:.2f}, "
                f"f+b {g_fb:.2f}."
            )
    return "\n".join(lines)


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per layer, the median over rounds of every timing and ratio; adds the range of the
    f+b ratio over rounds (``ratio_fwd_bwd_min``/``_max``) when there is more than one."""
    merged = []
    for per_layer in zip(*rounds, strict=True):
        row = dict(per_layer[0])
        for key, value in per_layer[0].items():
            if isinstance(value, float):
                row[key] = float(np.median([r[key] for r in per_layer]))
        if len(per_layer) > 1 and "ratio_fwd_bwd" in row:
            ratios = [r["ratio_fwd_bwd"] for r in per_layer]
            row.update(ratio_fwd_bwd_min=min(ratios), ratio_fwd_bwd_max=max(ratios))
        for p in ("fwd", "fwd_bwd"):
            # PyTorch's faster layout may differ between rounds: name the usual winner and,
            # when the rounds disagree, how many rounds it won.
            layouts = [r[f"torch_{p}_layout"] for r in per_layer if f"torch_{p}_layout" in r]
            if layouts:
                top = max(sorted(set(layouts)), key=layouts.count)
                won = layouts.count(top)
                row[f"torch_{p}_layout"] = (
                    top if won == len(layouts) else f"{top} ({won}/{len(layouts)})"
                )
        row["rounds"] = len(per_layer)
        merged.append(row)
    return merged


def run(
    layers,
    *,
    min_reps: int = 5,
    budget_s: float = 2.0,
    as_json: bool = False,
    progress: Callable[[str], None] | None = None,
    algorithm: str = "auto",
    settle_s: float = SETTLE_S,
    baseline: bool = False,
    rounds: int = 1,
    channels_last: bool = True,
    clock: str = "wall",
) -> str:
    """Benchmark ``layers``; returns the Markdown table (with a machine line) or JSON.

    With ``rounds`` > 1 the whole list is timed that many times over and each figure is
    the median over rounds: on a shared machine both libraries have slow periods of
    seconds to minutes (PyTorch's 1x1 and depthwise layers 2-3x, measured), which a
    single pass over the suite records as they fall. With ``channels_last`` PyTorch is
    also timed in its channels-last memory format and every ratio is against the faster
    of its two layouts, per layer and pass.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {', '.join(CLOCKS)}, got {clock!r}")
    passes = []
    for number in range(rounds):
        rows = []
        for layer in layers:
            if progress:
                suffix = f" (round {number + 1}/{rounds})" if rounds > 1 else ""
                progress(f"benchmarking {layer.name}{suffix} ...")
            rows.append(
                bench_layer(
                    layer,
                    min_reps=min_reps,
                    budget_s=budget_s,
                    algorithm=algorithm,
                    settle_s=settle_s,
                    baseline=baseline,
                    channels_last=channels_last,
                    clock=clock,
                )
            )
        passes.append(rows)
    rows = merge_rounds(passes)
    if as_json:
        return json.dumps({"machine": machine_info(), "rows": rows}, indent=2)
    info = machine_info()
    header = ", ".join(f"{k}: {v}" for k, v in info.items())
    if rounds > 1:
        header += f", rounds: {rounds} (medians over rounds)"
    if clock == "cpu":
        header += ", clock: CPU time of the process (all threads)"
    return f"{header}\n\n{format_table(rows)}"


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated ints, got {text!r}") from None
    if not values:
        raise ValueError(f"{name}: expected comma-separated ints, got {text!r}")
    return values


def add_arguments(parser) -> None:
    """The options of ``foldconv bench``."""
    parser.add_argument(
        "--layers",
        default="",
        help="comma-separated suite layers to run (default: all): "
        + ", ".join(layer.name for layer in CPU_SUITE),
    )
    parser.add_argument(
        "--in",
        dest="input",
        default=None,
        help="one custom layer instead of the suite: input shape N,C,H[,W[,D]] e.g. 16,256,13,13",
    )
    parser.add_argument("--out-channels", type=int, default=None)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--padding", type=int, default=0)
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per layer")
    parser.add_argument("--min-reps", type=int, default=5, help="repetitions at least")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--algorithm",
        default="auto",
        choices=["auto", "im2col", "winograd", "depthwise", "direct"],
        help="foldconv's algorithm (default: auto; im2col is the plain unfold + GEMM path)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time the plain NumPy im2col of shared/docs/bench-suite.md (2-d layers)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time the whole suite this many times and report medians over the rounds",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="what a call is timed by: wall time (default) or the process's CPU time, all "
        "threads (on a busy machine, with one thread per library: the work done; set "
        "FOLDCONV_NUM_THREADS=1 FOLDCONV_BENCH_THREADS=1, else PyTorch's spinning threads "
        "count as work)",
    )
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="time PyTorch in NCHW only (default: also in channels_last, and compare "
        "against the faster of the two)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds of pause before each block of timed calls, so that idle BLAS/OpenMP "
        "threads of the other library stop spinning (0: back-to-back calls)",
    )


def layers_from_args(args) -> list[Layer]:
    """The suite layers, or the one custom layer, that ``args`` ask for."""
    if args.input:
        shape = _ints(args.input, "--in")
        if len(shape) not in (3, 4, 5):
            raise ValueError(f"--in: expected N,C and 1 to 3 spatial sizes, got {args.input!r}")
        out_channels = args.out_channels if args.out_channels is not None else shape[1]
        return [
            Layer(
                "custom",
                shape[0],
                shape[1],
                out_channels,
                tuple(shape[2:]),
                args.kernel,
                args.stride,
                args.padding,
                args.dilation,
                args.groups,
            )
        ]
    names = [n for n in args.layers.split(",") if n]
    known = {layer.name for layer in CPU_SUITE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--layers: unknown layer(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [layer for layer in CPU_SUITE if not names or layer.name in names]
