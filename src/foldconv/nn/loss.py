"""Loss modules: ``loss = criterion(output, target)``, then ``criterion.backward()``.

Constructors take PyTorch's arguments in PyTorch's order. The loss is a 0-d array of the
output's dtype (``float(loss)`` for a Python float; ``reduction='none'`` gives one loss
per sample instead). ``backward(grad_output=1.0)`` returns dLoss/d(output), of the
output's shape and dtype.
"""

from __future__ import annotations

from typing import Any

from foldconv.functional import loss as F
from foldconv.functional.activation import _as_float_array
from foldconv.nn.module import Module

__all__ = ["CrossEntropyLoss", "MSELoss", "NLLLoss"]


class _WeightedLoss(Module):
    """Keeps the optional class ``weight`` as a buffer (in the state_dict, moved by
    :meth:`Module.to`), as PyTorch does."""

    def __init__(self, weight: Any, size_average: Any, ignore_index: Any, reduce: Any, reduction):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)
        self.ignore_index = F._check_ignore_index(ignore_index)
        if weight is not None:
            weight = _as_float_array(weight, "weight")
            if weight.ndim != 1:
                raise ValueError(
                    f"weight: expected a 1-d array (one weight per class), got shape "
                    f"{tuple(weight.shape)}"
                )
            self.register_buffer("weight", weight)
        else:
            object.__setattr__(self, "weight", None)
        self._cache = None

    def _saved(self) -> Any:
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward() called before forward()")
        return self._cache


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy of softmax(input) against class indices or class probabilities.

    See :func:`foldconv.functional.cross_entropy` for the formulas (PyTorch's).

    Parameters
    ----------
    weight : ndarray, shape (C,), optional
    size_average, reduce : deprecated, mapped to ``reduction`` as PyTorch does
    ignore_index : int
    reduction : {'mean', 'sum', 'none'}
    label_smoothing : float in [0, 1]

    Shapes: input (C,), (N, C) or (N, C, d1, ...) logits; target of the input's shape
    without the class axis (integer indices) or of the input's shape (probabilities).
    Returns a 0-d array ('mean', 'sum') or the per-sample losses ('none').
    """

    def __init__(
        self,
        weight: Any = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction)
        self.label_smoothing = F._check_label_smoothing(label_smoothing)

    def forward(self, input: Any, target: Any) -> Any:
        """The loss; keeps the softmax probabilities and the target for :meth:`backward`
        (on the GPU with index targets: each row's log-sum-exp instead)."""
        r = F._class_rows(input, target, self.weight, self.ignore_index, allow_probs=True)
        loss, saved = F._ce_loss(r, self.reduction, self.label_smoothing, keep=True)
        self._cache = (r, saved)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dL/dinput (see :func:`foldconv.functional.cross_entropy_backward`): for index
        targets without weights or smoothing, g * (softmax(input) - onehot(target))."""
        r, saved = self._saved()
        return F._ce_grad(r, saved, self.reduction, self.label_smoothing, grad_output)

    def extra_repr(self) -> str:
        s = f"reduction={self.reduction!r}"
        if self.ignore_index != -100:
            s += f", ignore_index={self.ignore_index}"
        return s + f", label_smoothing={self.label_smoothing}"


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of log-probabilities at class indices.

    See :func:`foldconv.functional.nll_loss`. Parameters: weight, size_average,
    ignore_index, reduce, reduction (PyTorch's order and defaults).
    """

    def __init__(
        self,
        weight: Any = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction)

    def forward(self, input: Any, target: Any) -> Any:
        """The loss; keeps the target rows for :meth:`backward`."""
        r = F._class_rows(input, target, self.weight, self.ignore_index, allow_probs=False)
        loss, saved = F._nll_loss(r, self.reduction)
        self._cache = (r, saved)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dL/dinput_ij = -g_i w[t_i] [j = t_i] on the rows not ignored."""
        r, saved = self._saved()
        return F._nll_grad(r, saved, self.reduction, grad_output)

    def extra_repr(self) -> str:
        s = f"reduction={self.reduction!r}"
        return s + (f", ignore_index={self.ignore_index}" if self.ignore_index != -100 else "")


class MSELoss(Module):
    """Mean (or sum) of squared differences between input and target (same shapes).

    Parameters
    ----------
    size_average, reduce : deprecated, mapped to ``reduction`` as PyTorch does
    reduction : {'mean', 'sum', 'none'}
    """

    def __init__(self, size_average: Any = None, reduce: Any = None, reduction: str = "mean"):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)
        self._cache = None

    def forward(self, input: Any, target: Any) -> Any:
        """The loss; keeps input and target for :meth:`backward`."""
        loss = F.mse_loss(input, target, reduction=self.reduction)
        self._cache = (input, target)
        return loss

    def backward(self, grad_output: Any = 1.0) -> Any:
        """dL/dinput = 2 (input - target) * g, g = grad_output (/ numel for 'mean')."""
        if self._cache is None:
            raise RuntimeError("MSELoss: backward() called before forward()")
        input, target = self._cache
        return F.mse_loss_backward(input, target, reduction=self.reduction, grad_output=grad_output)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
