"""pytest plugin: record every foldconv kernel launch's argument types (for bench/ptx_check.py).

Loaded by ``bench/ptx_check.py`` as ``pytest -p ptx_record`` (with bench/ on the path) in a
run of tests/gpu_kernels under Numba's CUDA simulator. It wraps
:meth:`foldconv.cuda.launch.Kernel.__call__` and, for each launch, records the kernel (its
module and qualified name) and the Numba types of the arguments the kernel receives, then
writes the distinct (kernel, signature) pairs as JSON to the file named by the environment
variable ``FOLDCONV_PTX_SIGNATURES``.

The types are those the GPU sees: ``numba.typeof`` of the very objects passed (a Python
int is int64 and a float float64 there too; a NumPy scalar keeps its dtype). Arrays are
recorded as mutable and aligned whatever the NumPy array's flags (CuPy arrays, which
the GPU path passes instead, are never read-only), with their dtype, ndim and layout.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from typing import Any

ENV = "FOLDCONV_PTX_SIGNATURES"

# (module, qualname, signature) -> record
_records: dict[tuple, dict[str, Any]] = {}


def describe(value: Any) -> dict[str, Any]:
    """A JSON description of the Numba type of one kernel argument."""
    import numba  # noqa: PLC0415
    from numba.np.numpy_support import as_dtype  # noqa: PLC0415

    ty = numba.typeof(value)
    if isinstance(ty, numba.types.Array):
        return {
            "kind": "array",
            "dtype": as_dtype(ty.dtype).str,
            "ndim": ty.ndim,
            "layout": ty.layout,
        }
    if isinstance(ty, numba.types.Boolean | numba.types.Integer | numba.types.Float):
        return {"kind": "scalar", "dtype": as_dtype(ty).str}
    # anything else (a tuple of scalars, a record...): the Numba type itself, pickled
    return {"kind": "other", "repr": str(ty), "pickle": base64.b64encode(pickle.dumps(ty)).decode()}


def _record(kernel: Any, args: tuple) -> None:
    f = kernel.py_func
    sig = [describe(a) for a in args]
    key = (f.__module__, f.__qualname__, json.dumps(sig))
    r = _records.get(key)
    if r is None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        r = _records[key] = {
            "module": f.__module__,
            "qualname": f.__qualname__,
            "file": f.__code__.co_filename,
            "signature": sig,
            "first_test": test,
            "launches": 0,
        }
    r["launches"] += 1


def pytest_configure(config: Any) -> None:
    from foldconv.cuda.launch import Kernel  # noqa: PLC0415

    if getattr(Kernel.__call__, "_ptx_record", False):
        return
    original = Kernel.__call__

    def call(self: Any, n: int, *args: Any) -> None:
        _record(self, args)  # launches of no work items too: the types are real
        return original(self, n, *args)

    call._ptx_record = True  # type: ignore[attr-defined]
    Kernel.__call__ = call  # type: ignore[method-assign]


def pytest_unconfigure(config: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"kernels": list(_records.values())}, f, indent=1)
