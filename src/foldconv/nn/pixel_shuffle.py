"""PixelShuffle and PixelUnshuffle layers, as ``torch.nn``'s."""

from __future__ import annotations

from typing import Any

from foldconv.functional import shuffle as F
from foldconv.nn.module import Module

__all__ = ["PixelShuffle", "PixelUnshuffle"]


class PixelShuffle(Module):
    """(*, C r^2, H, W) -> (*, C, H r, W r), as ``torch.nn.PixelShuffle``.

    Parameters
    ----------
    upscale_factor : int r >= 1
    """

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = F._check_factor(upscale_factor, "upscale_factor")

    def forward(self, x: Any) -> Any:
        """x: (*, C r^2, H, W) -> y: (*, C, H r, W r), same dtype."""
        return F.pixel_shuffle(x, self.upscale_factor)

    def backward(self, grad_output: Any) -> Any:
        """dx = pixel_unshuffle(dy, r), the inverse permutation."""
        return F.pixel_shuffle_backward(grad_output, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H r, W r) -> (*, C r^2, H, W), as ``torch.nn.PixelUnshuffle``.

    Parameters
    ----------
    downscale_factor : int r >= 1
    """

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.downscale_factor = F._check_factor(downscale_factor, "downscale_factor")

    def forward(self, x: Any) -> Any:
        """x: (*, C, H r, W r) -> y: (*, C r^2, H, W), same dtype."""
        return F.pixel_unshuffle(x, self.downscale_factor)

    def backward(self, grad_output: Any) -> Any:
        """dx = pixel_shuffle(dy, r), the inverse permutation."""
        return F.pixel_unshuffle_backward(grad_output, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"
