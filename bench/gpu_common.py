"""What the GPU bench scripts share (bench/gpu_suite.py, gpu_step.py, gpu_train.py).

:class:`Device` is where a script runs: the GPU (CuPy arrays for foldconv, torch on
``cuda``, CUDA-event timing, the CuPy pool's and torch's peak memory) or, with ``--smoke``,
the CPU (NumPy arrays, torch on ``cpu``, host-clock timing, tracemalloc's peak). The
scripts call the same code either way, so the CPU smoke run in CI (tests/test_gpu_bench.py)
checks all of it except the CUDA calls; smoke sizes are tiny and its times mean nothing.

:class:`Stage` collects a script's result rows and rewrites its JSON file after every row
(atomically), so that a stage killed by gpu_check.sh's time cap still leaves the rows it
finished; ``complete`` is set only at the end. A row is a dict: ``item``, ``ours``,
``reference`` (display strings), ``ratio`` (ours/reference, or None), ``status`` ('ok',
'FAILED', 'MISMATCH', 'skipped ...'), ``note`` and ``data`` (the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Relative error (norm-wise, against PyTorch) above which a result is reported as MISMATCH:
# float32 sums of a few thousand terms land near 1e-6; TF32 inputs would give ~1e-3.
MISMATCH_TOL = 1e-4


def add_common_arguments(p: argparse.ArgumentParser, *, budget: float) -> None:
    """--smoke, --quick, --json, --budget: the options every GPU bench script takes."""
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run on the CPU at tiny sizes (NumPy, torch CPU): checks the code, times nothing",
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions, for a first try")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result rows here")
    p.add_argument(
        "--budget",
        type=float,
        default=budget,
        metavar="S",
        help=f"stop starting new work after S seconds (default {budget:g})",
    )


def strict_fp32(torch: Any) -> dict[str, Any]:
    """Forbid TF32 in PyTorch's convolutions and GEMMs (cuDNN and cuBLAS in IEEE float32)
    and in foldconv's (its default, set again here); return the settings as read back."""
    import foldconv  # noqa: PLC0415

    foldconv.set_tf32(False)
    settings: dict[str, Any] = {"foldconv_tf32": foldconv.get_tf32()}
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        settings["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        settings["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        settings["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return settings


class Device:
    """The GPU (CuPy + torch 'cuda', CUDA events) or, for ``smoke``, the CPU.

    Parameters
    ----------
    smoke : bool
        True: NumPy arrays, torch on the CPU, ``time.perf_counter``.
    """

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            torch = None
        self.torch = torch
        if smoke:
            self.xp: Any = np
            self.name = "cpu"
            # One thread each: interleaved calls of two thread pools on a small shared
            # machine mostly wait for each other's spinning workers.
            import foldconv  # noqa: PLC0415

            foldconv.set_num_threads(1)
            if torch is not None:
                torch.set_num_threads(1)
        else:
            import cupy  # noqa: PLC0415

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device visible to CuPy")
            if torch is None or not torch.cuda.is_available():
                raise RuntimeError("torch with CUDA is needed for the cuDNN comparison")
            self.xp = cupy
            self.name = "cuda"
        self._peak = 0

    # -- arrays ----------------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> Any:
        """A NumPy array on this device, for foldconv (CuPy on the GPU)."""
        return self.xp.asarray(a)

    def tensor(self, a: np.ndarray, requires_grad: bool = False) -> Any:
        """A NumPy array as a torch tensor on this device (a copy)."""
        t = self.torch.from_numpy(np.array(a)).to(self.name)
        return t.requires_grad_(requires_grad)

    @staticmethod
    def to_numpy(a: Any) -> np.ndarray:
        """A NumPy copy of a CuPy or NumPy array or a torch tensor."""
        if hasattr(a, "detach"):
            return a.detach().cpu().numpy()
        if hasattr(a, "get"):
            return a.get()
        return np.asarray(a)

    # -- timing ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Wait for all queued GPU work of both frameworks (nothing on the CPU)."""
        if self.smoke:
            return
        self.xp.cuda.Device().synchronize()
        self.torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], Any], framework: str) -> float:
        """Milliseconds of one call of ``fn``, measured by the framework's CUDA events.

        Both frameworks are idle first (``sync``), so the events bracket this call alone;
        host time spent launching inside the call counts, as it would in training.
        ``framework``: 'ours' (CuPy events on CuPy's current stream, where foldconv's
        kernels run) or 'torch' (torch's events on its current stream).
        """
        if framework not in ("ours", "torch"):
            raise ValueError(f"framework: expected 'ours' or 'torch', got {framework!r}")
        self.sync()
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        if framework == "ours":
            cp = self.xp
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(cp.cuda.get_elapsed_time(start, end))
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    # -- memory ----------------------------------------------------------------------------
    def free_memory(self) -> None:
        """Return both frameworks' cached GPU blocks, so one measurement's buffers do not
        crowd the next."""
        import gc  # noqa: PLC0415

        gc.collect()
        if self.smoke:
            return
        self.xp.get_default_memory_pool().free_all_blocks()
        self.torch.cuda.empty_cache()

    def peak_bytes_ours(self, fn: Callable[[], Any]) -> int:
        """Peak bytes held by foldconv's arrays while ``fn`` runs (everything already
        allocated included): the CuPy pool's in-use bytes, read after each allocation by
        a wrapping allocator (in place only for this call, on this thread); on the CPU,
        tracemalloc's peak of what ``fn`` allocates (NumPy's buffers are traced; what
        existed before is not counted)."""
        self.sync()
        if self.smoke:
            tracemalloc.start()
            try:
                fn()
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        cp = self.xp
        pool = cp.get_default_memory_pool()
        self._peak = pool.used_bytes()

        def tracking_malloc(size: int) -> Any:
            mem = pool.malloc(size)
            self._peak = max(self._peak, pool.used_bytes())
            return mem

        with cp.cuda.using_allocator(tracking_malloc):  # this thread, this call only
            fn()
            self.sync()
        return self._peak

    def reserved_bytes_ours(self) -> int | None:
        """Bytes the CuPy pool holds from the driver (None on the CPU)."""
        return None if self.smoke else int(self.xp.get_default_memory_pool().total_bytes())

    def reset_peak_torch(self) -> None:
        if not self.smoke:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_bytes_torch(self) -> tuple[int | None, int | None]:
        """torch's (max_memory_allocated, max_memory_reserved); None on the CPU."""
        if self.smoke:
            return None, None
        return (
            int(self.torch.cuda.max_memory_allocated()),
            int(self.torch.cuda.max_memory_reserved()),
        )


def interleaved_ms(
    dev: Device,
    fns: dict[str, tuple[str, Callable[[], Any]]],
    *,
    warmup: int,
    repeats: int,
    budget_s: float,
    min_repeats: int = 3,
) -> dict[str, list[float]]:
    """Times of each callable, ``{key: (framework, fn)}``, in rounds: one call of each per
    round, so that all see the same conditions. ``warmup`` untimed calls each first
    (compilation, cuDNN's algorithm search, the memory pools' first allocations). Stops
    after ``repeats`` rounds, or after ``min_repeats`` once ``budget_s`` is spent."""
    for _, fn in fns.values():
        for _ in range(warmup):
            fn()
    dev.sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(repeats):
        if r >= min_repeats and time.perf_counter() - start > budget_s:
            break
        for key, (framework, fn) in fns.items():
            times[key].append(dev.time_ms(fn, framework))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def rel_err(ours: Any, ref: Any) -> float:
    """‖ours − ref‖ / ‖ref‖ in float64 (NaN anywhere gives inf: it never passes)."""
    a = Device.to_numpy(ours).astype(np.float64)
    b = Device.to_numpy(ref).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: ours {a.shape}, reference {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    denom = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / (denom if denom > 0 else 1.0)


def fmt_ms(ms: float | None) -> str:
    return "—" if ms is None or not math.isfinite(ms) else f"{ms:.3f} ms"


def fmt_gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


def failure(label: str, err: BaseException) -> str:
    """Print ``err``'s traceback to stderr (gpu_check.sh keeps it in stages.log) under a
    header naming ``label``; return a one-line summary for the table."""
    print(f"===== {label} FAILED =====", file=sys.stderr)
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


class Stage:
    """The rows of one stage, rewritten to ``path`` (if given) after each change."""

    def __init__(self, name: str, path: str | None, mode: str, **info: Any) -> None:
        self.name = name
        self.path = path
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {
            "stage": name,
            "mode": mode,
            "complete": False,
            "seconds": 0.0,
            "info": info,
            "rows": [],
        }
        self.save()

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.doc["rows"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(
        self,
        item: str,
        *,
        ours: str = "",
        reference: str = "",
        ratio: float | None = None,
        status: str = "ok",
        note: str = "",
        **data: Any,
    ) -> dict[str, Any]:
        row = {
            "stage": self.name,
            "item": item,
            "ours": ours,
            "reference": reference,
            "ratio": ratio,
            "status": status,
            "note": note,
            "data": data,
        }
        self.rows.append(row)
        self.save()
        cells = [item, ours, reference, "" if ratio is None else f"{ratio:.2f}x", status, note]
        print(f"{self.name}: " + " | ".join(c for c in cells if c), flush=True)
        return row

    def finish(self, **info: Any) -> None:
        self.doc["info"].update(info)
        self.doc["complete"] = True
        self.save()

    def ok(self) -> bool:
        return all(not r["status"].startswith(("FAILED", "MISMATCH")) for r in self.rows)

    def save(self) -> None:
        self.doc["seconds"] = round(self.elapsed(), 2)
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1, default=_json_default)
        os.replace(tmp, self.path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def finite_or_none(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None
