"""Process-wide settings: the im2col workspace limit, and the size of tile that keeps a
GEMM's unfolded operand in cache."""

from __future__ import annotations

import operator

_DEFAULT_WORKSPACE_LIMIT = 256 * 1024 * 1024

# Batches are unfolded this many bytes at a time (whole samples; never beyond the
# workspace limit): a buffer of about half the last-level cache (32 MiB here) is still in
# cache when the GEMM reads it, where one buffer for the whole batch has gone out to
# memory. Measured, conv + conv_backward with tiles of 16 MiB against 256 MiB:
# alexnet_c1 19.7 + 44.9 ms against 25.4 + 53.4, the dilated layer 13.4 + 29.5 against
# 17.1 + 37.3, alexnet_c2_g2 38.9 + 76.0 against 45.5 + 92.8 (OpenBLAS pinned to Haswell).
CACHE_TILE_BYTES = 16 * 1024 * 1024
_workspace_limit = _DEFAULT_WORKSPACE_LIMIT


def set_workspace_limit(nbytes: int | None) -> int:
    """Bound the scratch memory of one convolution call.

    The im2col (unfold) buffer and, in the backward pass, the buffer of column
    gradients together never exceed ``nbytes``; larger problems are processed in
    tiles of the batch and of the output's leading spatial dimensions.

    Parameters
    ----------
    nbytes : int or None
        The limit in bytes (> 0). ``None`` restores the default, 256 MiB.

    Returns
    -------
    int
        The previous limit, so that callers can restore it.
    """
    global _workspace_limit
    previous = _workspace_limit
    if nbytes is None:
        _workspace_limit = _DEFAULT_WORKSPACE_LIMIT
        return previous
    if isinstance(nbytes, bool):
        raise TypeError(f"nbytes: expected a positive int, got bool {nbytes!r}")
    try:
        value = operator.index(nbytes)
    except TypeError:
        raise TypeError(
            f"nbytes: expected a positive int, got {type(nbytes).__name__} {nbytes!r}"
        ) from None
    if value <= 0:
        raise ValueError(f"nbytes: expected a positive number of bytes, got {value}")
    _workspace_limit = value
    return previous


def get_workspace_limit() -> int:
    """The current workspace limit in bytes (see :func:`set_workspace_limit`)."""
    return _workspace_limit
