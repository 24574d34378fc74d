"""Running out of GPU memory: one clear error instead of CuPy's bare allocator message.

CuPy raises ``cupy.cuda.memory.OutOfMemoryError`` ("Out of memory allocating N bytes")
from whichever allocation failed, which says neither what was being computed nor for
which shapes. :func:`translate_out_of_memory` wraps a computation and re-raises any
``MemoryError`` from it as :class:`GPUOutOfMemoryError` naming the pass, the shapes and
the bytes asked for; callers higher up (a layer) may re-raise it with more context
through :meth:`GPUOutOfMemoryError.within`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn


class GPUOutOfMemoryError(MemoryError):
    """Out of (GPU) memory in a named computation.

    Attributes
    ----------
    what : str
        What ran out of memory, e.g. "the convolution's forward pass".
    shapes : dict of str to tuple of int
        The shapes of the arrays involved.
    nbytes : int or None
        The size of the allocation that failed, when the allocator reported it.
    """

    def __init__(
        self, what: str, shapes: Mapping[str, tuple[int, ...]], nbytes: int | None, detail: str
    ):
        self.what, self.shapes, self.nbytes, self.detail = what, dict(shapes), nbytes, detail
        asked = f"{nbytes:,} bytes" if nbytes is not None else "an allocation of unknown size"
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in self.shapes.items())
        super().__init__(
            f"out of GPU memory in {what} ({listed}): asked for {asked} ({detail}); "
            "use a smaller batch, or lower foldconv.set_workspace_limit() if the "
            "convolution's column buffer is what does not fit"
        )

    def within(self, context: str) -> GPUOutOfMemoryError:
        """The same error with ``context`` (e.g. a layer's name) put before ``what``."""
        err = GPUOutOfMemoryError(f"{context}: {self.what}", self.shapes, self.nbytes, self.detail)
        err.__cause__ = self.__cause__
        return err


def requested_bytes(err: BaseException) -> int | None:
    """The size of the failed allocation: CuPy's OutOfMemoryError keeps it in ``_size``,
    NumPy's _ArrayMemoryError in ``_total_size``; None when neither says."""
    for attr in ("_size", "_total_size"):
        value = getattr(err, attr, None)
        if isinstance(value, int):
            return value
    return None


def raise_out_of_memory(
    err: MemoryError, what: str, shapes: Mapping[str, tuple[int, ...]]
) -> NoReturn:
    """Re-raise a MemoryError (CuPy's OutOfMemoryError among them) as GPUOutOfMemoryError."""
    if isinstance(err, GPUOutOfMemoryError):
        raise err
    detail = str(err) or type(err).__name__
    raise GPUOutOfMemoryError(what, shapes, requested_bytes(err), detail) from err


@contextmanager
def translate_out_of_memory(what: str, shapes: Mapping[str, Any]) -> Iterator[None]:
    """Turn any MemoryError raised inside the block into a :class:`GPUOutOfMemoryError`."""
    try:
        yield
    except MemoryError as err:
        raise_out_of_memory(err, what, {k: tuple(v) for k, v in shapes.items()})
