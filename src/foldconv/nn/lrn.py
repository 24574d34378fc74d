"""LocalResponseNorm: AlexNet's normalisation across neighbouring channels."""

from __future__ import annotations

from typing import Any

import numpy as np

from foldconv.functional import lrn as F
from foldconv.nn.module import Module

__all__ = ["LocalResponseNorm"]


class LocalResponseNorm(Module):
    """Local response normalisation over channels, as ``torch.nn.LocalResponseNorm``.

    ``y_c = x_c / (k + (alpha / size) * sum_{j in win(c)} x_j^2) ** beta`` with the window
    ``win(c) = [c - size//2, c + (size-1)//2]`` (missing channels count as zeros).

    ``alpha`` is divided by ``size`` (PyTorch's convention): the AlexNet paper's
    normalisation (its alpha = 1e-4, n = 5, beta = 0.75, k = 2) is
    ``LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``.

    Parameters
    ----------
    size : int
        Channels in the window (> 0).
    alpha, beta, k : float

    Input (N, C, *S) with at least 3 dimensions, axis 1 being the channels (as in
    PyTorch, which has no unbatched form for this layer); output of the same shape.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        # validate with a dummy input, so that a bad layer fails where it is built
        F._check_args(np.zeros((1, 1, 1)), size, alpha, beta, k)
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self._x = None
        self._cache = None

    def forward(self, x: Any) -> Any:
        """x: (N, C, *S) -> y: (N, C, *S), same dtype; keeps x, s and s^(-beta)."""
        # Let go of the last call's s and s^(-beta) first, so that the new ones can take
        # their memory rather than fresh pages.
        self._x = self._cache = None
        y, self._cache = F.local_response_norm(
            x, self.size, self.alpha, self.beta, self.k, return_cache=True
        )
        self._x = x
        return y

    def backward(self, grad_output: Any) -> Any:
        """dx_i = dy_i s_i^{-β} − (2αβ/n) x_i Σ_{c: i∈win(c)} dy_c x_c s_c^{-β-1}."""
        if self._x is None:
            raise RuntimeError("LocalResponseNorm: backward() called before forward()")
        # The cache is let go of once used (a second backward recomputes it), so that the
        # arrays the rest of the backward allocates can take its memory.
        cache, self._cache = self._cache, None
        return F.local_response_norm_backward(
            grad_output, self._x, self.size, self.alpha, self.beta, self.k, cache=cache
        )

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
