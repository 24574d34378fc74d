"""Loss modules: ``loss = criterion(output, target)``, then ``criterion.backward()``.

The loss is a 0-d array of the output's dtype (``float(loss)`` for a Python float;
``reduction='none'`` gives one loss per sample instead). ``backward(grad_output=1.0)``
returns dLoss/d(output), of the output's shape and dtype.
"""

from __future__ import annotations

from typing import Any

from foldconv.backend import get_array_module
from foldconv.functional import loss as F
from foldconv.functional.activation import _compute_dtype
from foldconv.nn.module import Module

__all__ = ["CrossEntropyLoss", "MSELoss"]


class CrossEntropyLoss(Module):
    """Cross-entropy of softmax(logits) against integer class indices.

    Per sample: -(1 - e) * log p[target] - (e / C) * sum_c log p[c], with p the softmax
    over axis 1 and e the label smoothing (PyTorch's definition).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}
    label_smoothing : float in [0, 1]

    Shapes: input (N, C) or (N, C, d1, ...) float logits; target (N,) or (N, d1, ...)
    integers in [0, C). Returns a 0-d array ('mean', 'sum') or the target's shape ('none').
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction = F._check_reduction(reduction)
        self.label_smoothing = F._check_label_smoothing(label_smoothing)
        self._cache = None

    def forward(self, input: Any, target: Any) -> Any:
        """The loss; keeps the softmax probabilities and the target for :meth:`backward`."""
        logits, target = F._check_ce_args(input, target)
        xp = get_array_module(logits)
        ct = _compute_dtype(logits.dtype)
        logp = F._log_softmax_rows(F._class_last(logits).astype(ct, copy=False))
        loss = F._ce_from_log_probs(logp, target, self.reduction, self.label_smoothing, logits)
        self._cache = (xp.exp(logp), target, tuple(logits.shape), logits.dtype)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dL/dlogits = g * (softmax(logits) - q), q = (1 - e) onehot(target) + e / C.

        g is ``grad_output`` (divided by the number of samples for 'mean'; per sample, of
        the target's shape, for 'none').
        """
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss: backward() called before forward()")
        probs, target, shape, dtype = self._cache
        return F._ce_grad_from_probs(
            probs, target, self.reduction, self.label_smoothing, grad_output, shape, dtype
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


class MSELoss(Module):
    """Mean (or sum) of squared differences between input and target (same shapes).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = F._check_reduction(reduction)
        self._cache = None

    def forward(self, input: Any, target: Any) -> Any:
        """The loss; keeps input and target for :meth:`backward`."""
        loss = F.mse_loss(input, target, self.reduction)
        self._cache = (input, target)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dL/dinput = 2 (input - target) * g, g = grad_output (/ numel for 'mean')."""
        if self._cache is None:
            raise RuntimeError("MSELoss: backward() called before forward()")
        input, target = self._cache
        return F.mse_loss_backward(input, target, self.reduction, grad_output)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
