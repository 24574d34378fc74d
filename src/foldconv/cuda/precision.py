"""Float32 GEMM precision on the GPU: strict IEEE float32 by default, TF32 on request.

cuBLAS may run float32 GEMMs on tensor cores in TF32 (10-bit mantissa inputs), about
1e-3 relative error: fast, but not the CPU path's result. foldconv asks cuBLAS for strict
float32 (CuPy's COMPUTE_TYPE_FP32) unless :func:`set_tf32` opts in, whatever the
``CUPY_TF32`` environment variable says.
"""

from __future__ import annotations

from typing import Any

_tf32 = False


def set_tf32(enabled: bool) -> bool:
    """Allow (True) or forbid (False, the default) TF32 in float32 GEMMs on the GPU.

    Returns the previous setting. Has no effect on the CPU path.
    """
    global _tf32
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__} {enabled!r}")
    previous, _tf32 = _tf32, enabled
    from foldconv.backend import _cupy_if_imported  # noqa: PLC0415

    cp = _cupy_if_imported()  # configures CuPy (applies the setting) where CUDA is usable
    if cp is not None:
        apply(cp)
    return previous


def get_tf32() -> bool:
    """Whether float32 GEMMs on the GPU may use TF32 (see :func:`set_tf32`)."""
    return _tf32


def apply(cupy: Any) -> bool:
    """Set CuPy's compute type for float32 GEMMs from the current setting.

    Returns False, changing nothing, where CUDA cannot be used (CuPy installed without a
    usable driver or GPU: CuPy asks the device while setting the compute type); the setting
    is applied when CuPy is first used with a working GPU, and asking for 'cuda' there
    gets foldconv's device error, not CUDA's.
    """
    import numpy as np  # noqa: PLC0415
    from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

    try:
        linalg.set_compute_type(
            np.float32, linalg.COMPUTE_TYPE_TF32 if _tf32 else linalg.COMPUTE_TYPE_FP32
        )
    except Exception as err:
        if type(err).__module__.split(".")[0] in ("cupy", "cupy_backends"):
            return False  # a CUDA runtime error: no usable GPU
        raise
    return True
