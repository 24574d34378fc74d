"""OpenBLAS's idle workers sleep at once when foldconv is imported before NumPy.

Measured by what the workers do, not by reading the variable back: after a two-thread
GEMM, the process's CPU time across a 0.3 s sleep of the main thread is what OpenBLAS's
workers spent spinning (about 0.1 s with OpenBLAS's own default, 2^28 cycles).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from foldconv.functional.threads import available_cores

SPIN_CPU = """
import sys, time
if sys.argv[1] == "foldconv first":
    import foldconv
import numpy as np
import threadpoolctl
import foldconv
info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
if not info or info[0]["internal_api"] != "openblas":
    print("not openblas"); sys.exit()
threadpoolctl.threadpool_limits(2, "blas")
a = np.ones((512, 512), dtype=np.float32)
for _ in range(3):
    a @ a
c0 = time.process_time()
time.sleep(0.3)
print(time.process_time() - c0)
"""


def _spin_cpu(order: str, **env: str) -> float:
    full = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    proc = subprocess.run(
        [sys.executable, "-c", SPIN_CPU, order],
        capture_output=True,
        text=True,
        env={**full, **env},
        check=True,
    )
    out = proc.stdout.strip()
    if out == "not openblas":
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    return float(out)


@pytest.mark.skipif(available_cores() < 2, reason="a multithreaded GEMM needs two cores")
def test_openblas_workers_sleep_after_a_gemm_when_foldconv_comes_first():
    assert _spin_cpu("foldconv first") < 0.02
    # Controls: the measurement sees spinning workers, with OpenBLAS's default (NumPy
    # loaded before foldconv could set anything) and with the user's own setting kept.
    assert _spin_cpu("numpy first") > 0.03
    assert _spin_cpu("foldconv first", OPENBLAS_THREAD_TIMEOUT="28") > 0.03


def test_the_setting_is_a_default_and_comes_before_numpy():
    code = (
        "import os, sys; import foldconv; "
        "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], foldconv._openblas_env.APPLIED)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["4", "True"]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "OPENBLAS_THREAD_TIMEOUT": "20"},
    )
    assert out.stdout.split() == ["20", "True"]
    late = (
        "import numpy, os; import foldconv; "
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), foldconv._openblas_env.APPLIED)"
    )
    out = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["None", "False"]


@pytest.mark.parametrize(
    ("order", "value", "want"),
    [
        ("foldconv first", None, True),
        ("numpy first", None, False),  # OpenBLAS's default spin
        ("numpy first", "4", True),  # the user's own short setting
        ("numpy first", "20", True),
        ("foldconv first", "28", False),
        ("foldconv first", "soon", False),
        # Set in the process after NumPy loaded OpenBLAS: too late, not believed.
        ("numpy first, then set", None, False),
    ],
)
def test_workers_sleep_says_what_openblas_was_given(order, value, want):
    code = (
        "import sys\n"
        "if sys.argv[1].startswith('numpy first'):\n"
        "    import numpy\n"
        "if sys.argv[1] == 'numpy first, then set':\n"
        "    import os; os.environ['OPENBLAS_THREAD_TIMEOUT'] = '4'\n"
        "from foldconv import _openblas_env\n"
        "print(_openblas_env.workers_sleep())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = value
    out = subprocess.run(
        [sys.executable, "-c", code, order], capture_output=True, text=True, env=env, check=True
    )
    import threadpoolctl

    openblas = any(i["internal_api"] == "openblas" for i in threadpoolctl.threadpool_info())
    assert out.stdout.strip() == str(want and openblas)
