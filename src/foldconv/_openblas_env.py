"""How long OpenBLAS's idle workers spin after a GEMM: set before NumPy loads OpenBLAS.

After a multithreaded GEMM, OpenBLAS's worker threads keep polling for the next one for
2^OPENBLAS_THREAD_TIMEOUT cycles (2^28 by default: about 0.1 s at 2.6 GHz) before they
sleep. A training step follows nearly every GEMM with work of other kinds (a fold,
pooling, LRN, an activation) that foldconv runs on its own threads, on the same cores:
for that tenth of a second a spinning OpenBLAS worker takes a core from them. Measured on
the 2-core machine of BENCHMARKS.md ("The fourth pass"): AlexNet's conv4, a Winograd
forward then a compiled input gradient, 71-78 ms a pair against 49-57 ms with the
workers sleeping at once (the two passes alone: 26-29 and 23-25 ms), and the paper
AlexNet's training step 675 -> 543 ms (median of 5 rounds each, in turn). GEMMs alone,
with nothing after them, took the same time with any setting, idle or beside a busy
process (same section).

OpenBLAS reads the variable once, when it is loaded, so this works only if foldconv is
imported before NumPy; the user's own value, if any, is kept.
"""

from __future__ import annotations

import functools
import os
import sys

# 2^4 cycles, the least OpenBLAS accepts: sleep as soon as the work is done. (2^16 and
# 2^20, 25 and 400 us, measured the same; waking a sleeping worker is microseconds
# against a multithreaded GEMM's milliseconds: small GEMMs run on one thread.)
THREAD_TIMEOUT = "4"


VARIABLE = "OPENBLAS_THREAD_TIMEOUT"


def _initial_value() -> str | None:
    """The variable in the environment this process started with (Linux: not changes
    made since, e.g. by ``os.environ`` after NumPy was imported), else the current one."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return os.environ.get(VARIABLE)
    prefix = VARIABLE.encode() + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def apply() -> tuple[bool, str | None]:
    """Set OPENBLAS_THREAD_TIMEOUT unless the user has. Returns whether foldconv came
    before NumPy (False: OpenBLAS is loaded already and the setting can no longer take
    effect), and the value OpenBLAS reads or read: this process's starting value when
    NumPy came first (the best guess; a change made in the process before NumPy's import
    is not seen, and is taken as absent)."""
    if "numpy" in sys.modules:
        return False, _initial_value()
    os.environ.setdefault(VARIABLE, THREAD_TIMEOUT)
    return True, os.environ[VARIABLE]


# Up to 2^20 cycles (0.4 ms at 2.6 GHz) counts as sleeping at once.
SHORT_TIMEOUT = 20


@functools.cache
def workers_sleep() -> bool:
    """Whether NumPy's BLAS is OpenBLAS with workers that sleep as soon as a GEMM is done
    (OPENBLAS_THREAD_TIMEOUT at most SHORT_TIMEOUT: set by ``import foldconv`` before
    NumPy, or by the user).

    False with OpenBLAS's default (NumPy imported before foldconv, the variable unset) and
    with another BLAS, whose threads may wait actively too (MKL's for 200 ms): then a
    multithreaded GEMM leaves a spinning worker on a core, and blocks of samples on
    foldconv's own threads right after it run slower than one GEMM on BLAS's threads
    (dispatch's cost model asks this). The value is the one :func:`apply` saw when
    foldconv was imported, as OpenBLAS reads it once.
    """
    try:
        if int((_SEEN or "").strip()) > SHORT_TIMEOUT:
            return False
    except ValueError:
        return False
    import threadpoolctl  # noqa: PLC0415 - only when asked

    return any(
        info.get("user_api") == "blas" and info.get("internal_api") == "openblas"
        for info in threadpoolctl.threadpool_info()
    )


APPLIED, _SEEN = apply()
