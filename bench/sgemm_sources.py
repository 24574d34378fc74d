"""float32 GEMM from several sources on the GEMM shapes of the convolution suite.

    python bench/sgemm_sources.py [--rounds 3] [--threads 1 2] [--sources numpy blis ...]
        [--layers alexnet_c3,vgg_c3] [--no-square] [--json FILE]

The shapes: for each layer of the CPU suite (shared/docs/bench-suite.md) and each pass,
the one GEMM of its plain im2col form, per group, with C = op(A) @ op(B) of (M, N):

    forward       Y    (Cout/g, N·P)     = W      (Cout/g, Cin/g·KK) @ cols (Cin/g·KK, N·P)
    input grad    dcols (Cin/g·KK, N·P)  = W^T                       @ dY   (Cout/g, N·P)
    weight grad   dW   (Cout/g, Cin/g·KK) = dY                       @ cols^T

(P = output pixels, KK = kernel taps), each operand stored C-contiguous as the library
stores it, so input grad is a transposed-A GEMM and weight grad a transposed-B one; and a
4096³ square. The depthwise layer is left out: its im2col GEMM is (1 x 9) per channel and
the library does not run it as a GEMM.

The sources (each where installed): ``numpy`` (np.matmul: NumPy's bundled OpenBLAS),
``scipy`` (scipy.linalg.blas.sgemm: SciPy's own OpenBLAS build), ``openblas32`` (the
``scipy-openblas32`` wheel's OpenBLAS, cblas_sgemm through ctypes), ``blis`` (the ``blis``
package, cython-blis: blis.py.gemm; built single-threaded, so it is timed with 1 thread
only), and ``torch`` (torch.matmul, MKL; a reference only: the library never imports
torch). Sources that are not installed are listed as not run; the extra ones install with
``pip install scipy scipy-openblas32 blis``.

Method: every (round, thread count, source) runs in a fresh process, the sources in turn
(their order rotating by round) so that all see the same load; in a process each shape is
called once untimed and then timed until 0.3 s or 15 calls (at least 3), median. A table
cell is the median over rounds of those medians, in GFLOP/s (2·M·N·K / time), per second
of wall time and per second of the process's CPU time (all its threads): on a shared
machine the second is what a single-threaded source's kernel achieves while it runs,
whatever the other processes do; for two threads it also counts waiting and spinning.

Correctness, checked in each process on every shape: err = max |C - C64| / (|op(A)| @ |op(B)|), with
C64 the float64 product of the same float32 inputs; float32 summation guarantees err <=
K·2^-24 (the classic bound), and a source whose err exceeds it on a shape is marked wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCES = ("numpy", "scipy", "openblas32", "blis", "torch")
SINGLE_THREADED = {"blis"}
SQUARE = 4096


def suite_shapes(names: list[str] | None = None, square: bool = True) -> list[dict]:
    """(name, M, N, K, trans_a, trans_b) of the im2col GEMMs of the suite's layers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from foldconv.benchmark import CPU_SUITE

    shapes = []
    for layer in CPU_SUITE:
        if layer.name == "depthwise" or (names and layer.name not in names):
            continue
        g = layer.groups
        cout, ckk = layer.out_channels // g, layer.in_channels // g * layer.kernel**layer.ndim
        cols = layer.batch * int(np.prod(layer.out_size()))
        suffix = f" (x{g} groups)" if g > 1 else ""
        shapes += [
            dict(name=f"{layer.name} fwd{suffix}", m=cout, n=cols, k=ckk, ta=False, tb=False),
            dict(name=f"{layer.name} dx{suffix}", m=ckk, n=cols, k=cout, ta=True, tb=False),
            dict(name=f"{layer.name} dw{suffix}", m=cout, n=ckk, k=cols, ta=False, tb=True),
        ]
    if square:
        shapes.append(
            dict(name=f"square {SQUARE}^3", m=SQUARE, n=SQUARE, k=SQUARE, ta=False, tb=False)
        )
    return shapes


def operands(shape: dict, seed: int = 0):
    """float32 A and B stored as the library stores them: A (K, M) when trans_a, B (N, K)
    when trans_b, else (M, K) and (K, N); C-contiguous, standard normal."""
    rng = np.random.default_rng(seed)
    m, n, k = shape["m"], shape["n"], shape["k"]
    a = rng.standard_normal((k, m) if shape["ta"] else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if shape["tb"] else (k, n), dtype=np.float32)
    return a, b


# --------------------------------------------------------------------------------------
# The sources: each maker returns (gemm(a, b, ta, tb, out), description). ``out`` is a
# C-contiguous float32 (M, N) array that gemm overwrites with op(a) @ op(b).
# --------------------------------------------------------------------------------------
def _openblas_limit(threads: int, path_part: str) -> None:
    import threadpoolctl

    threadpoolctl.threadpool_limits(threads, user_api="blas")
    for lib in threadpoolctl.threadpool_info():
        if path_part in lib["filepath"] and lib["num_threads"] != threads:
            raise RuntimeError(f"could not set {lib['filepath']} to {threads} threads")


def _openblas_desc(path_part: str) -> str:
    import threadpoolctl

    for lib in threadpoolctl.threadpool_info():
        if path_part in lib["filepath"]:
            n = lib["num_threads"]
            return f"OpenBLAS {lib['version']} {lib['architecture']}, {n} thread(s)"
    return "?"


def make_numpy(threads: int):
    _openblas_limit(threads, "numpy.libs")

    def gemm(a, b, ta, tb, out):
        np.matmul(a.T if ta else a, b.T if tb else b, out=out)

    return gemm, f"numpy {np.__version__}: {_openblas_desc('numpy.libs')}"


def make_scipy(threads: int):
    import scipy
    from scipy.linalg import blas

    _openblas_limit(threads, "scipy.libs")

    def gemm(a, b, ta, tb, out):
        # Fortran BLAS on C-ordered data: compute C^T = op(B)^T op(A)^T into out.T (an
        # F-ordered view of out), passing each stored array's transpose (F-ordered, no copy).
        blas.sgemm(1.0, b.T, a.T, beta=0.0, c=out.T, trans_a=tb, trans_b=ta, overwrite_c=1)

    return gemm, f"scipy {scipy.__version__}: {_openblas_desc('scipy.libs')}"


def make_openblas32(threads: int):
    import ctypes
    from importlib.metadata import version

    import scipy_openblas32

    lib = scipy_openblas32.dll if hasattr(scipy_openblas32, "dll") else None
    if lib is None:
        lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so"))
    prefix = "scipy_"
    lib[prefix + "openblas_set_num_threads"](ctypes.c_int(threads))
    if lib[prefix + "openblas_get_num_threads"]() != threads:
        raise RuntimeError(f"scipy-openblas32: could not set {threads} threads")
    core = lib[prefix + "openblas_get_corename"]
    core.restype = ctypes.c_char_p
    sgemm = lib[prefix + "cblas_sgemm"]
    c_int, c_float, ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, ptr, c_int]
    sgemm.argtypes += [ptr, c_int, c_float, ptr, c_int]
    sgemm.restype = None
    row_major, no_trans, trans = 101, 111, 112

    def gemm(a, b, ta, tb, out):
        m, n = out.shape
        k = a.shape[0] if ta else a.shape[1]
        sgemm(
            row_major,
            trans if ta else no_trans,
            trans if tb else no_trans,
            m,
            n,
            k,
            1.0,
            a.ctypes.data,
            a.shape[1],
            b.ctypes.data,
            b.shape[1],
            0.0,
            out.ctypes.data,
            n,
        )

    desc = f"scipy-openblas32 {version('scipy-openblas32')}: {core().decode()}, {threads} thread(s)"
    return gemm, desc


def make_blis(threads: int):
    from importlib.metadata import version

    import blis.py

    if threads != 1:
        raise RuntimeError("blis: the package is built single-threaded")

    def gemm(a, b, ta, tb, out):
        blis.py.gemm(a, b, out=out, trans1=ta, trans2=tb, alpha=1.0, beta=0.0)

    return gemm, f"blis {version('blis')} (cython-blis): {_blis_config()}, 1 thread"


def _blis_config() -> str:
    """The sub-configuration (kernel set) BLIS picks on this CPU: its own log line."""
    probe = "import numpy as n, blis.py as b; a = n.ones((8, 8), 'f'); b.gemm(a, a)"
    env = dict(os.environ, BLIS_ARCH_DEBUG="1")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "sub-configuration" in line]
    return lines[0].split("'")[1] + " sub-configuration" if lines else "configuration unknown"


def make_torch(threads: int):
    import torch

    torch.set_num_threads(threads)

    def gemm(a, b, ta, tb, out):
        at, bt, ot = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        torch.matmul(at.T if ta else at, bt.T if tb else bt, out=ot)

    return gemm, f"torch {torch.__version__}: torch.matmul, {torch.get_num_threads()} thread(s)"


MAKERS = {
    "numpy": make_numpy,
    "scipy": make_scipy,
    "openblas32": make_openblas32,
    "blis": make_blis,
    "torch": make_torch,
}


# --------------------------------------------------------------------------------------
# One process: one source, one thread count, every shape.
# --------------------------------------------------------------------------------------
def worker(source: str, threads: int, shapes: list[dict], refdir: str, check: bool) -> dict:
    try:
        gemm, desc = MAKERS[source](threads)
    except (ImportError, RuntimeError, OSError) as e:
        return {"source": source, "threads": threads, "error": f"{type(e).__name__}: {e}"}
    rows = []
    for i, shape in enumerate(shapes):
        a, b = operands(shape)
        out = np.empty((shape["m"], shape["n"]), dtype=np.float32)
        gemm(a, b, shape["ta"], shape["tb"], out)
        row = {"name": shape["name"]}
        if check:
            ref = np.load(os.path.join(refdir, f"{i}.npz"))
            err = np.abs(out - ref["c"]) / np.maximum(ref["bound"], np.finfo(np.float64).tiny)
            row["err"] = float(err.max())
        times, cpu = [], []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < 0.3 and len(times) < 15):
            t0, c0 = time.perf_counter(), time.process_time()
            gemm(a, b, shape["ta"], shape["tb"], out)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        row["s"] = statistics.median(times)
        row["cpu_s"] = statistics.median(cpu)
        rows.append(row)
    return {"source": source, "threads": threads, "desc": desc, "rows": rows}


def write_references(shapes: list[dict], refdir: str) -> None:
    """C64 = op(A) @ op(B) in float64 and the bound |op(A)| @ |op(B)|, per shape."""
    for i, shape in enumerate(shapes):
        a, b = (x.astype(np.float64) for x in operands(shape))
        a, b = (a.T if shape["ta"] else a), (b.T if shape["tb"] else b)
        np.savez(os.path.join(refdir, f"{i}.npz"), c=a @ b, bound=np.abs(a) @ np.abs(b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of every source (>= 1)")
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time (>= 1)"
    )
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--layers", default="", help="comma-separated suite layers (default: all)")
    p.add_argument("--no-square", action="store_true", help=f"leave out the {SQUARE}^3 GEMM")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rounds < 1 or min(a.threads) < 1:
        p.error(f"--rounds and --threads: expected >= 1, got {a.rounds} and {a.threads}")
    from foldconv.benchmark import CPU_SUITE  # noqa: PLC0415

    unknown = sorted(set(n for n in a.layers.split(",") if n) - {x.name for x in CPU_SUITE})
    if unknown:
        p.error(f"--layers: unknown layer(s) {', '.join(unknown)}")
    shapes = suite_shapes([n for n in a.layers.split(",") if n] or None, not a.no_square)
    if a.worker:
        source, threads, refdir, check = a.worker.split(":")
        print(json.dumps(worker(source, int(threads), shapes, refdir, check == "1")))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as refdir:
        print("float64 references ...", file=sys.stderr)
        write_references(shapes, refdir)
        for r in range(a.rounds):
            for threads in a.threads:
                order = a.sources[r % len(a.sources) :] + a.sources[: r % len(a.sources)]
                for source in order:
                    if threads != 1 and source in SINGLE_THREADED:
                        continue
                    print(f"round {r + 1}: {source}, {threads} thread(s) ...", file=sys.stderr)
                    cmd = [sys.executable, __file__, "--worker", f"{source}:{threads}:{refdir}:1"]
                    cmd += ["--layers", a.layers] + (["--no-square"] if a.no_square else [])
                    # Each process's own OpenBLAS would start with every core; the thread
                    # count under test is set inside it (threadpoolctl, ctypes, torch).
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    results.append(dict(json.loads(out.stdout), round=r))
    if a.json:
        Path(a.json).write_text(json.dumps({"shapes": shapes, "results": results}, indent=1))
    print(format_report(shapes, results))
    return 0


def format_report(shapes: list[dict], results: list[dict]) -> str:
    """Two GFLOP/s tables (median over rounds) per shape and (source, threads): per
    second of wall time, and per second of the process's CPU time; wrong results (err over
    K·2^-24) marked; the sources' versions below."""
    cols, descs, errors = [], {}, {}
    for res in results:
        key = (res["source"], res["threads"])
        if "error" in res:
            errors[key] = res["error"]
            continue
        if key not in cols:
            cols.append(key)
        descs[key] = res["desc"]
    cols.sort(key=lambda c: (c[1], SOURCES.index(c[0])))
    out = []
    for metric, title in (("s", "wall time"), ("cpu_s", "CPU time")):
        head = ["GEMM (M x N x K)"] + [f"{s} {t}T" for s, t in cols]
        if metric == "s":
            head.append("max err / bound")
        out += [f"GFLOP/s per second of {title}:", ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, shape in enumerate(shapes):
            flops = 2.0 * shape["m"] * shape["n"] * shape["k"]
            bound = shape["k"] * 2.0**-24
            cells = [f"{shape['name']} {shape['m']}x{shape['n']}x{shape['k']}"]
            worst = 0.0
            for key in cols:
                per = [r for r in results if (r["source"], r["threads"]) == key]
                secs = [max(r["rows"][i][metric], 1e-9) for r in per]
                err = max(r["rows"][i]["err"] for r in per)
                worst = max(worst, err / bound)
                gf = statistics.median(flops / t / 1e9 for t in secs)
                cells.append(f"{gf:.0f}" + (" WRONG" if err > bound else ""))
            if metric == "s":
                cells.append(f"{worst:.3f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += [f"- {s} {t}T: {descs[(s, t)]}" for s, t in cols]
    out += [f"- {s} {t}T: not run ({e})" for (s, t), e in errors.items()]
    out.append(
        "- max err / bound: the largest, over sources, thread counts and rounds, of "
        "max |C - C64| / (|A| @ |B|), divided by K*2^-24"
    )
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
