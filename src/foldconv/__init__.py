"""foldconv: convolutional neural networks with every gradient written by hand.

The convolution and its kin live in :mod:`foldconv.functional` (stateless
forward/backward pairs); layers holding parameters in :mod:`foldconv.nn`.
"""

# First: it sets OpenBLAS's idle spin before anything below loads NumPy (and OpenBLAS).
from foldconv import _openblas_env  # noqa: F401

# isort: split
from foldconv._config import get_workspace_limit, set_workspace_limit
from foldconv.cuda.precision import get_tf32, set_tf32
from foldconv.functional.compiled import get_compiled, set_compiled
from foldconv.functional.dispatch import get_benchmark, set_benchmark
from foldconv.functional.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"


# Subpackages reachable as attributes (``foldconv.nn`` after ``import foldconv``, as
# ``torch.nn`` after ``import torch``), imported on first access so that ``import foldconv``
# stays fast.
_SUBMODULES = ("data", "functional", "models", "nn", "optim")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib  # noqa: PLC0415

        return importlib.import_module(f"foldconv.{name}")
    # The trainer pulls in tqdm, matplotlib and safetensors: import it on first use only.
    if name in ("train", "evaluate", "predict"):
        from foldconv import trainer

        return getattr(trainer, name)
    if name in ("keep_freed_memory", "keeps_freed_memory"):
        from foldconv import allocator

        return getattr(allocator, name)
    if name in ("summary", "gradcheck"):
        from foldconv import inspect

        return getattr(inspect, name)
    raise AttributeError(f"module 'foldconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    "data",
    "functional",
    "models",
    "nn",
    "optim",
    "evaluate",
    "get_benchmark",
    "get_compiled",
    "get_num_threads",
    "get_tf32",
    "get_workspace_limit",
    "gradcheck",
    "keep_freed_memory",
    "keeps_freed_memory",
    "predict",
    "set_benchmark",
    "set_compiled",
    "set_num_threads",
    "set_tf32",
    "set_workspace_limit",
    "summary",
    "train",
]
