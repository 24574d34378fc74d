"""Learning-rate schedules with PyTorch's semantics and values.

Call ``scheduler.step()`` once per epoch *after* the epoch's ``optimizer.step()`` calls
(``ReduceLROnPlateau.step(metric)`` with the epoch's validation metric). Constructing a
scheduler counts as epoch 0: the learning rates stay as they are (and each group gets an
``initial_lr`` entry, as in PyTorch).

All state is plain Python numbers and lists, so ``state_dict()`` can be written as JSON.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from foldconv.optim.optimizer import Optimizer

__all__ = [
    "CosineAnnealingLR",
    "LRScheduler",
    "MultiStepLR",
    "ReduceLROnPlateau",
    "StepLR",
]


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer: expected a foldconv.optim.Optimizer, got {type(optimizer).__name__}"
        )


def _check_positive(name: str, value: Any) -> None:
    if not _is_real(value) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def _check_nonneg(name: str, value: Any) -> None:
    if not _is_real(value) or not value >= 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")


def _check_nonneg_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


class LRScheduler(abc.ABC):
    """Base class of the epoch-indexed schedules.

    Subclasses implement :meth:`_compute_lr`, the learning rates for epoch
    :attr:`last_epoch` given the groups' current ones.

    Attributes
    ----------
    optimizer : Optimizer
    last_epoch : int
        Number of :meth:`step` calls so far (0 right after construction).
    base_lrs : list of float
        Each group's ``initial_lr``.
    """

    _state_keys: tuple[str, ...] = ("last_epoch", "base_lrs", "last_lr")

    def __init__(self, optimizer: Optimizer) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._initial = True
        self._apply(self._compute_lr())
        self._initial = False

    @abc.abstractmethod
    def _compute_lr(self) -> list[float]:
        """The learning rate of each parameter group at ``self.last_epoch``."""

    def _current_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _apply(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.last_lr = self._current_lrs()

    def step(self) -> None:
        """Advance one epoch and set each group's ``lr`` for it."""
        self.last_epoch += 1
        self._apply(self._compute_lr())

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the latest :meth:`step` (or construction)."""
        return list(self.last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (and hyper-parameters) as JSON-able plain data."""
        out = {}
        for key in self._state_keys:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the optimizer's lrs come with its own state).

        Raises
        ------
        ValueError
            If keys are missing.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = [k for k in self._state_keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict: missing keys {missing} for {type(self).__name__}")
        for key in self._state_keys:
            value = state_dict[key]
            setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self.last_lr})"


class StepLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` every ``step_size`` epochs.

    .. math::

        \eta_e = \eta_{e-1} \cdot \gamma \ \text{if } e > 0 \text{ and }
        e \bmod \text{step\_size} = 0, \ \text{else } \eta_{e-1}

    (with an untouched lr this is :math:`\eta_0 \gamma^{\lfloor e / \text{step\_size}
    \rfloor}`).

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Period, in epochs (positive).
    gamma : float
        Multiplicative factor (positive).
    """

    _state_keys = LRScheduler._state_keys + ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        _check_positive_int("step_size", step_size)
        _check_positive("gamma", gamma)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        lrs = self._current_lrs()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lrs
        return [lr * self.gamma for lr in lrs]


class MultiStepLR(LRScheduler):
    r"""Multiply each group's lr by ``gamma`` at each milestone epoch.

    .. math::

        \eta_e = \eta_{e-1} \cdot \gamma^{c(e)}

    where :math:`c(e)` is how many times ``e`` appears in ``milestones`` (a repeated
    milestone decays repeatedly, as in PyTorch).

    Parameters
    ----------
    optimizer : Optimizer
    milestones : iterable of int
        Epochs (non-negative) at which to decay.
    gamma : float
        Multiplicative factor (positive).
    """

    _state_keys = LRScheduler._state_keys + ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise ValueError(
                f"milestones: expected a list of non-negative ints, got {milestones!r}"
            )
        ms = list(milestones)
        if not all(_is_int(m) and m >= 0 for m in ms):
            raise ValueError(f"milestones: expected a list of non-negative ints, got {ms!r}")
        _check_positive("gamma", gamma)
        self.milestones = sorted(int(m) for m in ms)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        count = self.milestones.count(self.last_epoch)
        lrs = self._current_lrs()
        if count == 0:
            return lrs
        return [lr * self.gamma**count for lr in lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from each group's lr down to ``eta_min`` over ``T_max`` epochs.

    Ideally (SGDR without restarts, Loshchilov & Hutter 2017)

    .. math::

        \eta_e = \eta_{\min} + \tfrac12 (\eta_{\text{base}} - \eta_{\min})
            \left(1 + \cos \frac{e \pi}{T_{\max}}\right),

    but, like PyTorch, the lr is updated recursively from the group's current lr, so
    that changes made to ``lr`` from outside carry through:

    .. math::

        \eta_e = \eta_{\min} + (\eta_{e-1} - \eta_{\min})
            \frac{1 + \cos(e\pi / T_{\max})}{1 + \cos((e-1)\pi / T_{\max})},

    except at the epochs where that ratio is 0/0 (:math:`e - 1 - T_{\max}` a multiple
    of :math:`2T_{\max}`, where the ideal lr is back at :math:`\eta_{\min}`), which use

    .. math::

        \eta_e = \eta_{e-1} + \tfrac12 (\eta_{\text{base}} - \eta_{\min})
            \left(1 - \cos \frac{\pi}{T_{\max}}\right).

    Past ``T_max`` the lr therefore rises again along the cosine (period
    :math:`2T_{\max}`), exactly as PyTorch's values.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Half-period, in epochs (positive).
    eta_min : float
        Minimum learning rate (non-negative).
    """

    _state_keys = LRScheduler._state_keys + ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803
        _check_positive_int("T_max", T_max)
        _check_nonneg("eta_min", eta_min)
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        lrs = self._current_lrs()
        e, t, lo = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return lrs
        if (e - 1 - t) % (2 * t) == 0:
            rise = (1 - math.cos(math.pi / t)) / 2
            return [lr + (base - lo) * rise for lr, base in zip(lrs, self.base_lrs, strict=True)]
        ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
        return [ratio * (lr - lo) + lo for lr in lrs]


class ReduceLROnPlateau:
    r"""Divide the learning rate when a metric stops improving (AlexNet's schedule).

    After each :meth:`step` (``metric``): the metric is *better* than the best so far
    if, in ``mode='min'``,

    .. math::

        m < \text{best}\,(1 - \text{threshold}) \ \text{(rel)} \quad\text{or}\quad
        m < \text{best} - \text{threshold} \ \text{(abs)}

    (``mode='max'``: :math:`m > \text{best}(1 + \text{threshold})` or
    :math:`m > \text{best} + \text{threshold}`). A better metric resets the count of bad
    epochs; otherwise it grows by one. During a cooldown the count is held at 0. When
    the count exceeds ``patience``, every group's lr becomes

    .. math::

        \eta \leftarrow \max(\eta \cdot \text{factor}, \text{min\_lr})

    (unless that changes it by no more than ``eps``), the count is reset and a cooldown
    of ``cooldown`` epochs starts. Matches PyTorch's ``ReduceLROnPlateau``.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {'min', 'max'}
    factor : float
        In [0, 1).
    patience : int
        Bad epochs tolerated before reducing (non-negative).
    threshold : float
        Significance of an improvement (non-negative).
    threshold_mode : {'rel', 'abs'}
    cooldown : int
        Epochs to wait after a reduction before counting bad epochs again.
    min_lr : float or list of float
        Lower bound on each group's lr (one for all, or one per group).
    eps : float
        Reductions smaller than this are skipped.
    """

    _state_keys = (
        "mode",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "min_lrs",
        "eps",
        "best",
        "num_bad_epochs",
        "cooldown_counter",
        "last_epoch",
        "last_lr",
    )

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if not _is_real(factor) or not 0 <= factor < 1:
            raise ValueError(f"factor: expected a number in [0, 1), got {factor!r}")
        _check_nonneg_int("patience", patience)
        _check_nonneg("threshold", threshold)
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        _check_nonneg_int("cooldown", cooldown)
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(
                    f"min_lr: expected one value or {n} (one per group), got {len(min_lr)}"
                )
            for v in min_lr:
                _check_nonneg("min_lr", v)
            min_lrs = [float(v) for v in min_lr]
        else:
            _check_nonneg("min_lr", min_lr)
            min_lrs = [float(min_lr)] * n
        _check_nonneg("eps", eps)
        self.optimizer = optimizer
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.min_lrs = min_lrs
        self.eps = float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self.last_lr = [float(g["lr"]) for g in optimizer.param_groups]

    def _is_better(self, metric: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return metric < self.best * (1.0 - self.threshold)
            return metric < self.best - self.threshold
        if self.threshold_mode == "rel":
            return metric > self.best * (self.threshold + 1.0)
        return metric > self.best + self.threshold

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metric: Any) -> None:
        """Record one epoch's ``metric`` (a number or 0-d array) and maybe reduce lrs."""
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise TypeError(
                f"metric: expected a number, got {type(metric).__name__} {metric!r}"
            ) from None
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self.last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _reduce(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise ValueError(
                f"min_lr: expected {len(groups)} values (the optimizer's groups), "
                f"got {len(self.min_lrs)}; a group was added after the scheduler was built"
            )
        for group, min_lr in zip(groups, self.min_lrs, strict=True):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    def get_last_lr(self) -> list[float]:
        """The groups' learning rates after the latest :meth:`step` (or construction)."""
        return list(self.last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state as JSON-able plain data (``best`` may be ``inf``)."""
        return {
            k: (list(v) if isinstance(v, list) else v)
            for k in self._state_keys
            for v in [getattr(self, k)]
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises
        ------
        ValueError
            If keys are missing or ``mode``/``threshold_mode`` are unknown.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = [k for k in self._state_keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict: missing keys {missing} for ReduceLROnPlateau")
        if state_dict["mode"] not in ("min", "max"):
            raise ValueError(
                f"state_dict: mode: expected 'min' or 'max', got {state_dict['mode']!r}"
            )
        if state_dict["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(
                "state_dict: threshold_mode: expected 'rel' or 'abs', got "
                f"{state_dict['threshold_mode']!r}"
            )
        for k in self._state_keys:
            v = state_dict[k]
            setattr(self, k, list(v) if isinstance(v, (list, tuple)) else v)
        self.best = float(self.best)

    def __repr__(self) -> str:
        return (
            f"ReduceLROnPlateau(mode={self.mode!r}, best={self.best}, "
            f"num_bad_epochs={self.num_bad_epochs}, last_lr={self.last_lr})"
        )
