"""Running the GPU implementation on NumPy arrays, for tests on machines without a GPU.

Inside :func:`gpu_path_on_cpu`, every public function takes its GPU code path for NumPy
arrays too: the same numba-cuda kernels, run by Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set by the test suite when there is no GPU) or, on a machine
with a GPU, by the GPU on copies of the arrays; ``xp.matmul`` is NumPy's instead of
cuBLAS. What this cannot check is CuPy's own API: tests/gpu does, with CuPy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from foldconv import backend


@contextmanager
def gpu_path_on_cpu() -> Iterator[None]:
    """Route NumPy arrays through the GPU code path while the context is open."""
    previous = backend._gpu_path_on_cpu
    backend._gpu_path_on_cpu = True
    try:
        yield
    finally:
        backend._gpu_path_on_cpu = previous
