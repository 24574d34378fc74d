"""GPU support.

foldconv runs on CuPy arrays with the same code as on NumPy arrays: the array module is
chosen from the inputs (:func:`foldconv.backend.get_array_module`). GEMMs go to cuBLAS
through ``cupy.matmul``; the kernels that matter (im2col, col2im as a gather, depthwise,
pooling, LRN, softmax cross-entropy, optimizer updates) are numba-cuda kernels launched by
:mod:`foldconv.cuda.launch`.

The same kernels run in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on NumPy
arrays: that is how CI, which has no GPU, tests every kernel's index arithmetic against
the CPU path.
"""

from foldconv.cuda.launch import Kernel, kernel, simulated
from foldconv.cuda.memory import GPUOutOfMemoryError
from foldconv.cuda.precision import get_tf32, set_tf32

__all__ = ["GPUOutOfMemoryError", "Kernel", "kernel", "simulated", "get_tf32", "set_tf32"]
