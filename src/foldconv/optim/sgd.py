"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foldconv.optim.optimizer import Optimizer, check_bool, check_nonneg, check_real

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, with PyTorch's update rule.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`
    (``lr`` :math:`\gamma`, ``momentum`` :math:`\mu`, ``dampening`` :math:`\tau`,
    ``weight_decay`` :math:`\lambda`):

    .. math::

        g_t &\leftarrow -g_t \quad \text{if maximize} \\
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad \text{(if } \lambda \ne 0) \\
        b_t &= g_t \ \text{at the first step,}\quad
        b_t = \mu b_{t-1} + (1 - \tau) g_t \ \text{afterwards} \quad \text{(if } \mu \ne 0) \\
        g_t &\leftarrow g_t + \mu b_t \ \text{if nesterov, else}\ g_t \leftarrow b_t \\
        \theta_t &= \theta_{t-1} - \gamma g_t

    The first momentum step copies the gradient into the buffer without dampening,
    as PyTorch does. The momentum buffer ``b`` is the state saved as
    ``"momentum_buffer"``.

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters, or parameter groups (see :class:`~foldconv.optim.Optimizer`).
    lr : float
        Learning rate :math:`\gamma \ge 0`.
    momentum : float
        :math:`\mu \ge 0`.
    dampening : float
        :math:`\tau`; must be 0 with Nesterov momentum.
    weight_decay : float
        L2 penalty :math:`\lambda \ge 0`, added to the gradient.
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
    maximize : bool
        Ascend instead of descend.

    Raises
    ------
    ValueError
        Naming the argument: negative ``lr``, ``momentum`` or ``weight_decay``;
        ``nesterov`` without momentum or with dampening.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_nonneg("momentum", group["momentum"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_real("dampening", group["dampening"])
        dampening = group["dampening"]
        check_bool("nesterov", group["nesterov"])
        check_bool("maximize", group["maximize"])
        if group["nesterov"] and (group["momentum"] <= 0 or dampening != 0):
            raise ValueError(
                "nesterov: expected momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update(self, data: Any, grad: Any, group: dict[str, Any], state: dict[str, Any]) -> None:
        lr = group["lr"]
        momentum = group["momentum"]
        weight_decay = group["weight_decay"]
        g = -grad if group["maximize"] else grad
        if weight_decay != 0:
            g = g + weight_decay * data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # A copy: ``g`` may be ``p.grad`` itself, which later backward passes add into.
                buf = g.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        data -= lr * g
