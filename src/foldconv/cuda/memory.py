"""Running out of GPU memory: one error type that names the layer, the shapes and the bytes.

CuPy raises ``cupy.cuda.memory.OutOfMemoryError`` (a :class:`MemoryError`) from deep inside
an allocation, with no word of which layer asked. :class:`foldconv.nn.Module` catches it
around every module's forward and backward and raises :class:`GPUOutOfMemoryError`
instead, naming the module by its qualified name in the model (``features.3 (Conv2d)``),
the shape of its input (or, in backward, of the incoming gradient) and the bytes the failed
allocation asked for. The translation costs nothing on the CPU path: a ``try`` block is
free in CPython 3.11+ until something is raised, and only an exception that *is* a GPU
out-of-memory error (see :func:`is_gpu_oom`) is looked at.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

__all__ = ["GPUOutOfMemoryError", "is_gpu_oom", "translate_out_of_memory"]


class GPUOutOfMemoryError(MemoryError):
    """The GPU had no memory left for an allocation.

    Raised by foldconv's GPU code (e.g. a workspace that does not fit) and, wrapping CuPy's
    ``OutOfMemoryError``, by every :class:`foldconv.nn.Module` call that runs out of GPU
    memory. The message (``str(err)``) says which layer, with what input, asked for how
    many bytes, and what to try.

    Parameters
    ----------
    message : str
        What ran out (CuPy's own message when wrapping its error).
    requested_bytes : int, optional
        Size of the allocation that failed.
    layer : str, optional
        ``"<qualified name> (<type>)"`` of the module, e.g. ``"features.3 (Conv2d)"``;
        filled in by the modules the error passes through.
    input_shape : tuple of int, optional
        Shape of the module's input (forward) or incoming gradient (backward).
    phase : {'forward', 'backward'}, optional
    what : str, optional
        The computation inside the layer, e.g. "the convolution's forward pass" (set by
        :func:`translate_out_of_memory`).
    shapes : mapping of str to tuple of int, optional
        The shapes of the arrays that computation involved.

    Attributes
    ----------
    requested_bytes, layer, input_shape, phase, what, shapes, detail (the ``message`` given)
    context : str or None
        Set by the trainer: where training stopped and which checkpoint stays.
    """

    def __init__(
        self,
        message: str = "",
        *,
        requested_bytes: int | None = None,
        layer: str | None = None,
        input_shape: tuple[int, ...] | None = None,
        phase: str | None = None,
        what: str | None = None,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.detail = str(message)
        self.what = what
        self.shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
        self.requested_bytes = None if requested_bytes is None else int(requested_bytes)
        self.layer = layer
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.phase = phase
        self.context: str | None = None  # e.g. where training stopped (foldconv.trainer)
        # The module that raised it and the outermost module it passed through so far;
        # the layer's qualified name is the path from the latter to the former.
        self._module: Any = None
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" in {self.layer}" if self.layer else ""
        if self.phase:
            where += f" {self.phase}"
        what = []
        if self.input_shape is not None:
            name = "grad_output" if self.phase == "backward" else "input"
            what.append(f"{name} shape {self.input_shape}")
        if self.requested_bytes is not None:
            what.append(f"requested {_format_bytes(self.requested_bytes)}")
        head = f"out of GPU memory{where}"
        if what:
            head += " (" + ", ".join(what) + ")"
        if self.what:
            listed = ", ".join(f"{k} {v}" for k, v in self.shapes.items())
            head += f", in {self.what}" + (f" ({listed})" if listed else "")
        tail = (
            "; try a smaller --batch-size or a smaller model, or free GPU memory held by "
            "other processes"
        )
        if self.what and "convolution" in self.what:
            tail += ", or lower foldconv.set_workspace_limit() (the column buffer's bound)"
        detail = f": {self.detail}" if self.detail else ""
        context = f"; {self.context}" if self.context else ""
        return head + detail + context + tail

    def _refresh(self) -> None:
        self.args = (self._message(),)

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> Any:
        # Pickled (e.g. to report it from another process) with its fields, not the module.
        state = {k: v for k, v in self.__dict__.items() if k != "_module"}
        return (type(self), (self.detail,), state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._module = None
        self._refresh()


def _format_bytes(n: int) -> str:
    """``1,234,567,890 bytes (1.15 GiB)``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.2f} {unit})"
    return f"{n:,} bytes"


def is_gpu_oom(err: BaseException) -> bool:
    """Whether ``err`` means the GPU ran out of memory: a :class:`GPUOutOfMemoryError`,
    CuPy's ``OutOfMemoryError``, or a CUDA runtime/driver error for a failed allocation
    (cuBLAS and numba-cuda report those). Never imports CuPy."""
    if isinstance(err, GPUOutOfMemoryError):
        return True
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        memory = getattr(getattr(cupy, "cuda", None), "memory", None)
        oom = getattr(memory, "OutOfMemoryError", None)
        if oom is not None and isinstance(err, oom):
            return True
    if type(err).__module__.split(".")[0] in ("cupy", "cupy_backends", "numba", "numba_cuda"):
        text = str(err)
        return "cudaErrorMemoryAllocation" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text
    return False


def _requested_bytes(err: BaseException) -> int | None:
    """The size of the failed allocation, where the error records it (CuPy's does)."""
    size = getattr(err, "requested_bytes", None)
    if size is None:
        size = getattr(err, "_size", None)  # cupy.cuda.memory.OutOfMemoryError
    return None if size is None else int(size)


def _shape_of(args: tuple[Any, ...]) -> tuple[int, ...] | None:
    for a in args:
        shape = getattr(a, "shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


def translate(err: BaseException, module: Any, phase: str, args: tuple[Any, ...]) -> Any:
    """The :class:`GPUOutOfMemoryError` to raise for ``err`` (a GPU out-of-memory error,
    see :func:`is_gpu_oom`) caught around ``module``'s ``phase`` call on ``args``.

    The first module the error passes through is the layer that asked; each enclosing
    module then re-derives the layer's qualified name from itself, so the outermost one
    (the model) gives the full path, e.g. ``features.3``. Returns ``err`` itself when it
    is a :class:`GPUOutOfMemoryError` (updated: raise it again), else a new error (raise it
    ``from err``).
    """
    if isinstance(err, GPUOutOfMemoryError) and err._module is not None:
        for name, m in module.named_modules():
            if m is err._module:
                err.layer = f"{name} ({type(m).__name__})" if name else type(m).__name__
                err._refresh()
                break
        return err
    if isinstance(err, GPUOutOfMemoryError):
        new = err  # raised by foldconv's own GPU code: fill in the layer
        new.phase = new.phase or phase
        if new.input_shape is None:
            new.input_shape = _shape_of(args)
    else:
        new = GPUOutOfMemoryError(
            str(err),
            requested_bytes=_requested_bytes(err),
            input_shape=_shape_of(args),
            phase=phase,
        )
    new._module = module
    new.layer = type(module).__name__
    new._refresh()
    return new


def raise_out_of_memory(
    err: MemoryError, what: str, shapes: Mapping[str, tuple[int, ...]]
) -> NoReturn:
    """Re-raise a MemoryError from foldconv's GPU code (CuPy's OutOfMemoryError, or the
    host's when the GPU path runs on NumPy arrays in tests) as :class:`GPUOutOfMemoryError`
    saying what was computed and on which shapes; the enclosing Module adds the layer."""
    if isinstance(err, GPUOutOfMemoryError):
        raise err
    size = _requested_bytes(err)
    if size is None:
        size = getattr(err, "_total_size", None)  # NumPy's _ArrayMemoryError
    raise GPUOutOfMemoryError(
        str(err) or type(err).__name__, requested_bytes=size, what=what, shapes=shapes
    ) from err


@contextmanager
def translate_out_of_memory(what: str, shapes: Mapping[str, Any]) -> Iterator[None]:
    """Turn any MemoryError raised inside the block into a :class:`GPUOutOfMemoryError`."""
    try:
        yield
    except MemoryError as err:
        raise_out_of_memory(err, what, {k: tuple(v) for k, v in shapes.items()})
