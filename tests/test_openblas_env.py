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


def _run(code: str, *args: str, setting: str | None = None) -> str:
    """stdout of ``python -c code *args``, with OPENBLAS_THREAD_TIMEOUT set to ``setting``
    (absent when None) whatever this process's environment holds."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if setting is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout.strip()


def _spin_cpu(order: str, setting: str | None = None) -> float:
    out = _run(SPIN_CPU, order, setting=setting)
    if out == "not openblas":
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    return float(out)


@pytest.mark.skipif(available_cores() < 2, reason="a multithreaded GEMM needs two cores")
def test_openblas_workers_sleep_after_a_gemm_when_foldconv_comes_first():
    assert _spin_cpu("foldconv first") < 0.02
    # Controls: the measurement sees spinning workers, with OpenBLAS's default (NumPy
    # loaded before foldconv could set anything) and with the user's own setting kept.
    assert _spin_cpu("numpy first") > 0.03
    assert _spin_cpu("foldconv first", setting="28") > 0.03


def test_the_setting_is_a_default_and_comes_before_numpy():
    code = (
        "import os, sys; import foldconv; "
        "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], foldconv._openblas_env.APPLIED)"
    )
    assert _run(code).split() == ["4", "True"]
    assert _run(code, setting="20").split() == ["20", "True"]
    late = (
        "import numpy, os; import foldconv; "
        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), foldconv._openblas_env.APPLIED)"
    )
    assert _run(late).split() == ["None", "False"]


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
    out = _run(code, order, setting=value)
    import threadpoolctl

    openblas = any(i["internal_api"] == "openblas" for i in threadpoolctl.threadpool_info())
    assert out == str(want and openblas)
