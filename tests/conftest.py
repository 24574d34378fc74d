import os

# The thread count adapts to other processes' load (foldconv/functional/threads.py) and
# OpenBLAS's sums depend on it: keep it fixed so that runs compared bit for bit (resume
# tests) see the same count whatever else this machine is doing.
os.environ.setdefault("FOLDCONV_ADAPTIVE_THREADS", "0")


def _gpu_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# Without a GPU, foldconv's numba-cuda kernels run in Numba's CUDA simulator, on NumPy
# arrays (tests/gpu_kernels); with one, the same tests run them on the GPU. Set before
# anything imports numba.cuda.
GPU = _gpu_usable()
if not GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# foldconv before NumPy, as the README asks (it sets OpenBLAS's idle spin, which decides
# some of auto's choices: functional/dispatch.py), whatever order the tests import in.
import foldconv  # noqa: E402, F401, I001

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("FOLDCONV_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("default")
