"""Upsample and its fixed-mode forms, as ``torch.nn``'s.

The forward is :func:`foldconv.functional.interpolate`; the backward its adjoint,
:func:`foldconv.functional.interpolate_backward`.
"""

from __future__ import annotations

from typing import Any

from foldconv.functional import resample as F
from foldconv.nn.module import Module

__all__ = ["Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d"]


class Upsample(Module):
    """Resize (N, C, *S) input, 1 to 3 spatial dims, as ``torch.nn.Upsample``.

    Parameters
    ----------
    size : int or tuple of ints, optional
        The output's spatial size (give this or ``scale_factor``).
    scale_factor : float or tuple of floats, optional
    mode : {'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear'}
    align_corners : bool, optional
        Linear modes only.
    recompute_scale_factor : bool, optional
        See :func:`foldconv.functional.interpolate`.

    Shapes: (N, C, *S) -> (N, C, *size) or (N, C, *floor(S * scale_factor)).
    """

    def __init__(
        self,
        size: int | tuple[int, ...] | None = None,
        scale_factor: float | tuple[float, ...] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
        recompute_scale_factor: bool | None = None,
    ) -> None:
        super().__init__()
        self.name = type(self).__name__
        self.size = size
        # as torch: a tuple of floats, a float, or None (a scale factor of 0 too)
        if isinstance(scale_factor, tuple):
            self.scale_factor: Any = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor
        self._input_shape: tuple[int, ...] | None = None

    def _args(self) -> tuple:
        return (
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) -> y: (N, C, *S'), same dtype."""
        y = F.interpolate(x, *self._args())
        self._input_shape = tuple(x.shape)
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx[i] = sum_o A[o, i] dy[o] along each spatial axis, A the forward's taps."""
        if self._input_shape is None:
            raise RuntimeError(f"{type(self).__name__}: backward() called before forward()")
        return F.interpolate_backward(grad_output, self._input_shape, *self._args())

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return info + f", mode={self.mode!r}"


class UpsamplingNearest2d(Upsample):
    """:class:`Upsample` with mode 'nearest' on (N, C, H, W), as ``torch.nn``'s."""

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale_factor: float | tuple[float, float] | None = None,
    ) -> None:
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """:class:`Upsample` with mode 'bilinear' and align_corners=True, as ``torch.nn``'s."""

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale_factor: float | tuple[float, float] | None = None,
    ) -> None:
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)
