"""Every GPU kernel compiles for a real GPU (PTX for sm_90, the H200), with every argument
signature the tests in tests/gpu_kernels launch it with.

The simulator in which the other tests here run the kernels neither types nor compiles
them; bench/ptx_check.py records the launches of those tests and compiles each distinct
(kernel, signature) with NVVM, which needs a CUDA toolkit (libNVVM, libdevice) but no GPU.
Skipped where there is no toolkit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = 77  # bench/ptx_check.py's exit status without a CUDA toolkit


@pytest.mark.slow
def test_every_kernel_compiles_to_ptx_for_sm90():
    if os.environ.get("FOLDCONV_PTX_SIGNATURES"):
        pytest.skip("inside bench/ptx_check.py's own recording run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ptx_check.py"), "--cc", "9.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, out[-20000:]
    assert "| OK |" in out and " 0 failed" in out, out[-20000:]
