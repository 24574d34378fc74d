"""Process-wide settings: the im2col workspace limit."""

from __future__ import annotations

import operator

_DEFAULT_WORKSPACE_LIMIT = 256 * 1024 * 1024
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
