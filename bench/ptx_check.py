"""Compile every GPU kernel the tests launch, with each of its signatures, to PTX (no GPU).

Each kernel goes to PTX for a real GPU (sm_90, the H200, by default) with every argument
signature the tests launch it with: no GPU or driver needed, only a CUDA toolkit.

    python bench/ptx_check.py                      # tests/gpu_kernels, sm_90
    python bench/ptx_check.py --cc 8.0 tests/gpu_kernels/test_lrn.py
    python bench/ptx_check.py --signatures sigs.json --keep-ptx ptx/

Numba's CUDA simulator, in which CI runs the kernels, neither types nor compiles them:
mixed integer widths, unsupported math functions or wrong array dtypes only fail on a GPU.
This script

1. runs pytest on the given tests (default tests/gpu_kernels) in the simulator with the
   plugin bench/ptx_record.py, which records each kernel launched through
   :class:`foldconv.cuda.launch.Kernel` and the Numba types of its arguments (so kernels
   added later are checked as soon as a test launches them);
2. in a fresh process, without the simulator, compiles each distinct (kernel, signature)
   once with ``numba.cuda.compile_ptx`` (NVVM), then assembles the PTX with the toolkit's
   ``ptxas`` when there is one, which reports registers and local-memory spills;
3. prints a table (kernel, signature, OK or the error; registers, spills and the number of
   float64 instructions: in a float32 kernel, float64 arithmetic the simulator may not
   have run, since there a Python float meeting a NumPy float32 gives a float32) and exits
   1 if any failed.

Exit status 77 (and a message) when no CUDA toolkit with libNVVM and libdevice is found:
set CUDA_HOME, or install one under /usr/local/cuda*.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = 77
DEFAULT_TESTS = ["tests/gpu_kernels"]
# The test that runs this script lives among the tests it records: never recurse into it.
SELF_TEST = "tests/gpu_kernels/test_ptx_compile.py"


# -- the CUDA toolkit ----------------------------------------------------------------------------
def _has(home: Path, patterns: list[str]) -> bool:
    return any(glob.glob(str(home / p)) for p in patterns)


def find_toolkit() -> Path | None:
    """The CUDA toolkit to compile with: CUDA_HOME (or CUDA_PATH) if set, else
    /usr/local/cuda, else the newest /usr/local/cuda-X.Y; None unless it has libNVVM and
    libdevice (NVRTC and a driver are not needed)."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        candidates = [Path(env)]
    else:

        def version(p: str) -> tuple[int, ...]:
            return tuple(int(v) for v in re.findall(r"\d+", p))

        others = sorted(glob.glob("/usr/local/cuda-*"), key=version, reverse=True)
        candidates = [Path(p) for p in ["/usr/local/cuda", *others]]
    for home in candidates:
        nvvm = ["nvvm/lib64/libnvvm.so*", "nvvm/lib/libnvvm.so*", "lib*/libnvvm.so*"]
        if _has(home, nvvm) and _has(home, ["nvvm/libdevice/libdevice*.bc"]):
            return home
    return None


# -- step 1: record the launches -----------------------------------------------------------------
def _pythonpath(*dirs: Path) -> str:
    parts = [str(d) for d in dirs]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def record(tests: list[str], out: Path) -> int:
    """Run pytest on ``tests`` in the simulator, recording launches into ``out``; pytest's
    exit status."""
    env = dict(os.environ)
    env.update(
        NUMBA_ENABLE_CUDASIM="1",
        FOLDCONV_PTX_SIGNATURES=str(out),
        PYTHONPATH=_pythonpath(ROOT / "src", ROOT / "bench", ROOT),
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "ptx_record", "-p", "no:cacheprovider"]
    cmd += ["--ignore", str(ROOT / SELF_TEST), *tests]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    print(f"recorded launches: pytest {' '.join(tests)}: {' '.join(tail)}", flush=True)
    if proc.returncode not in (0, 5):  # 5: no tests collected
        # the launches of the tests that ran are still checked; the failures are the tests'
        print(proc.stdout[-4000:] + proc.stderr[-4000:], file=sys.stderr)
        print("WARNING: some tests failed: their later launches were not recorded", flush=True)
    return proc.returncode


# PTX instructions on float64 values (arithmetic, conversions, loads, stores): in a kernel
# on float32 arrays, float64 arithmetic, intended (accurate sums) or not (a float literal).
F64_OP = re.compile(r"^\s+(?:@!?%\w+\s+)?[a-z][\w.]*\.f64\b", re.MULTILINE)


# -- step 2: compile (runs in its own process, without the simulator) ---------------------------
def _patch_numba_cuda(cc: tuple[int, int]) -> None:
    """Let numba-cuda compile PTX on a machine with no driver and no NVRTC.

    Two internals are replaced, each checked first so that a numba-cuda release which
    changes them fails here with a clear message instead of compiling something else:

    - ``numba.cuda.cuda_paths._get_nvrtc_path``: numba-cuda looks up every CUDA library
      at once (``get_cuda_paths``), NVRTC included, and raises if it is missing; NVRTC only
      compiles CUDA C++ sources and lists the supported architectures (the latter is
      bypassed by NUMBA_FORCE_CUDA_CC), so a missing one is recorded as not found.
    - ``numba.cuda.dispatcher.get_current_device``: a ``@cuda.jit(device=True)`` function
      called by a kernel is compiled for the current device's compute capability, which
      needs a driver; here it is the target ``cc``.
    """
    import types  # noqa: PLC0415

    import numba.cuda.cuda_paths as cuda_paths  # noqa: PLC0415
    import numba.cuda.dispatcher as dispatcher  # noqa: PLC0415

    for mod, name in [(cuda_paths, "_get_nvrtc_path"), (cuda_paths, "_env_path_tuple")]:
        if not callable(getattr(mod, name, None)):
            raise RuntimeError(
                f"numba-cuda changed: {mod.__name__}.{name} is gone; update "
                "_patch_numba_cuda in bench/ptx_check.py"
            )
    get_nvrtc_path = cuda_paths._get_nvrtc_path

    def nvrtc_path_or_none() -> Any:
        try:
            return get_nvrtc_path()
        except Exception:  # not found: not needed to compile kernels written in Python
            return cuda_paths._env_path_tuple("<not found: not needed for PTX>", None)

    cuda_paths._get_nvrtc_path = nvrtc_path_or_none

    source = Path(dispatcher.__file__).read_text()
    if "get_current_device().compute_capability" not in source or not callable(
        getattr(dispatcher, "get_current_device", None)
    ):
        raise RuntimeError(
            "numba-cuda changed: numba.cuda.dispatcher no longer reads "
            "get_current_device().compute_capability; update _patch_numba_cuda in "
            "bench/ptx_check.py"
        )
    target = types.SimpleNamespace(compute_capability=cc)
    dispatcher.get_current_device = lambda: target


def _numba_type(d: dict[str, Any]) -> Any:
    import base64  # noqa: PLC0415
    import pickle  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    from numba import from_dtype, types  # noqa: PLC0415

    if d["kind"] == "array":
        return types.Array(from_dtype(np.dtype(d["dtype"])), d["ndim"], d["layout"])
    if d["kind"] == "scalar":
        return from_dtype(np.dtype(d["dtype"]))
    return pickle.loads(base64.b64decode(d["pickle"]))  # recorded by the same Numba


def _short(d: dict[str, Any]) -> str:
    """float32[1d,C], int64, ... (NumPy dtype names)."""
    import numpy as np  # noqa: PLC0415

    if d["kind"] == "other":
        return d["repr"]
    name = np.dtype(d["dtype"]).name
    return f"{name}[{d['ndim']}d,{d['layout']}]" if d["kind"] == "array" else name


def signature_text(sig: list[dict[str, Any]]) -> str:
    """The argument types, runs of one type written once with a count: ``int64 x4``."""
    out: list[str] = []
    prev, count = None, 0
    for s in [*map(_short, sig), None]:
        if s == prev:
            count += 1
            continue
        if prev is not None:
            out.append(prev if count == 1 else f"{prev} x{count}")
        prev, count = s, 1
    return ", ".join(out)


def _plain(text: str) -> str:
    """text without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _first_line(err: BaseException) -> str:
    """The informative line of a (Numba) error: its first line that is not a banner."""
    lines = [ln.strip() for ln in _plain(str(err)).splitlines() if ln.strip()]
    for ln in lines:
        if not re.match(r"(Failed in .* mode pipeline|During: |File \")", ln):
            return f"{type(err).__name__}: {ln}"[:160]
    return type(err).__name__


def _ptxas(ptxas: str | None, ptx: str, arch: str, keep: Path | None, name: str) -> tuple:
    """(error or None, registers, spill bytes stored + loaded, stack bytes) from ptxas -v."""
    if ptxas is None:
        return None, None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(keep or tmp) / f"{name}.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", "-o", os.devnull, str(src)],
            capture_output=True,
            text=True,
        )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        first = log.strip().splitlines()[0] if log.strip() else f"exit status {proc.returncode}"
        return f"ptxas: {first}"[:160], None, None, None
    regs = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill", log)
    return (
        None,
        int(regs.group(1)) if regs else None,
        int(frame.group(2)) + int(frame.group(3)) if frame else None,
        int(frame.group(1)) if frame else None,
    )


def compile_all(signatures: Path, cc: tuple[int, int], keep: Path | None) -> int:
    """Compile every recorded (kernel, signature); print the table; 0 if all compiled."""
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    # the target architecture, instead of asking NVRTC for the closest supported one
    os.environ["NUMBA_FORCE_CUDA_CC"] = f"{cc[0]}.{cc[1]}"
    os.environ["NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"] = "1"  # plain text in the table
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # foldconv and test-defined kernels
    import importlib  # noqa: PLC0415

    _patch_numba_cuda(cc)
    from numba import cuda  # noqa: PLC0415

    kernels = json.loads(signatures.read_text())["kernels"]
    kernels.sort(key=lambda r: (r["module"], r["qualname"], signature_text(r["signature"])))
    home = os.environ.get("CUDA_HOME", "")
    ptxas = next((p for p in [f"{home}/bin/ptxas"] if home and os.path.exists(p)), None)
    arch = f"sm_{cc[0]}{cc[1]}"
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    for i, r in enumerate(kernels):
        name = f"{r['module'].removeprefix('foldconv.cuda.')}.{r['qualname']}"
        sig = signature_text(r["signature"])
        regs = spill = stack = f64 = None
        try:
            obj: Any = importlib.import_module(r["module"])
            for part in r["qualname"].split("."):
                obj = getattr(obj, part)
            argtypes = tuple(_numba_type(d) for d in r["signature"])
            ptx, _ = cuda.compile_ptx(obj.py_func, argtypes, cc=cc)
            f64 = len(F64_OP.findall(ptx))
            status, regs, spill, stack = _ptxas(ptxas, ptx, arch, keep, f"{i:03d}_{name}")
            if keep and ptxas is None:
                (keep / f"{i:03d}_{name}.ptx").write_text(ptx)
        except Exception as err:  # report every kernel, not just the first failure
            status = _first_line(err)
            failures.append((name, sig, r["first_test"], err))
        rows.append((name, sig, status or "OK", regs, spill, stack, f64))

    print(f"\nPTX for {arch} ({len(rows)} kernel signatures; CUDA toolkit {home or '?'})\n")
    print("| kernel | signature | result | registers | spill bytes | stack bytes | f64 ops |")
    print("|---|---|---|---|---|---|---|")
    for name, sig, status, regs, spill, stack, f64 in rows:
        cells = ["" if v is None else str(v) for v in (regs, spill, stack, f64)]
        print(f"| {name} | {sig} | {status} | {' | '.join(cells)} |")
    for name, sig, test, err in failures:
        print(f"\n== {name} ({sig}), launched by {test}:\n{_plain(str(err)).strip()[:3000]}")
    print(f"\n{len(rows) - len(failures)} compiled, {len(failures)} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tests", nargs="*", default=DEFAULT_TESTS, help="pytest paths to record")
    p.add_argument("--cc", default="9.0", help="compute capability to compile for (9.0)")
    p.add_argument("--signatures", type=Path, help="keep the recorded signatures (JSON) here")
    p.add_argument("--no-record", action="store_true", help="reuse --signatures as it is")
    p.add_argument("--keep-ptx", type=Path, help="write each kernel's PTX into this folder")
    p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cc = tuple(int(v) for v in a.cc.split("."))
    if a.compile_only:  # the fresh process of step 2
        return compile_all(a.signatures, cc, a.keep_ptx)

    home = find_toolkit()
    if home is None:
        print(
            "SKIPPED: no CUDA toolkit with libNVVM and libdevice found "
            "(set CUDA_HOME, or install one under /usr/local/cuda*)"
        )
        return SKIPPED
    if a.no_record and a.signatures is None:
        p.error("--no-record needs --signatures")
    with tempfile.TemporaryDirectory() as tmp:
        sigs = a.signatures or Path(tmp) / "signatures.json"
        if not a.no_record:
            if sigs.exists():
                sigs.unlink()
            rc = record(a.tests, sigs)
            if not sigs.exists():
                print(f"no signatures recorded (pytest exit status {rc})", file=sys.stderr)
                return 1
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        env["CUDA_HOME"] = str(home)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-only"]
        cmd += ["--cc", a.cc, "--signatures", str(sigs)]
        if a.keep_ptx:
            cmd += ["--keep-ptx", str(a.keep_ptx)]
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
