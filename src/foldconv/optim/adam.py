"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), with PyTorch's formulas."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from foldconv import backend
from foldconv.backend import get_array_module
from foldconv.optim.optimizer import Optimizer, check_bool, check_nonneg

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam, with PyTorch's update rule (L2 weight decay added to the gradient).

    For each parameter :math:`\theta` with gradient :math:`g_t` at step
    :math:`t = 1, 2, \dots` (``lr`` :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`,
    ``eps`` :math:`\epsilon`, ``weight_decay`` :math:`\lambda`):

    .. math::

        g_t &\leftarrow -g_t \quad \text{if maximize} \\
        g_t &\leftarrow g_t + \lambda \theta_{t-1}
            \quad \text{(Adam; AdamW instead sets }
            \theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{if amsgrad, else}\ \hat v_t = v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \,
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    with :math:`m_0 = v_0 = \hat v_0 = 0`. Note that :math:`\epsilon` is added *after*
    dividing by :math:`\sqrt{1 - \beta_2^t}`, as in PyTorch. The state saved per
    parameter is ``step`` (int), ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`)
    and, with amsgrad, ``max_exp_avg_sq`` (:math:`\hat v`).

    Parameters
    ----------
    params : iterable of Parameter or of dict
        Parameters, or parameter groups (see :class:`~foldconv.optim.Optimizer`).
    lr : float
        :math:`\gamma \ge 0`.
    betas : tuple of two floats
        :math:`(\beta_1, \beta_2)`, each in [0, 1).
    eps : float
        :math:`\epsilon \ge 0`.
    weight_decay : float
        :math:`\lambda \ge 0`.
    amsgrad : bool
        Use the running maximum of :math:`v_t` (Reddi et al. 2018).
    maximize : bool
        Ascend instead of descend.

    Raises
    ------
    ValueError
        Naming the argument: negative ``lr``, ``eps`` or ``weight_decay``; ``betas``
        not two numbers in [0, 1).
    """

    _decoupled_weight_decay = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        betas = group["betas"]
        if isinstance(betas, list):
            betas = group["betas"] = tuple(betas)
        ok = isinstance(betas, tuple) and len(betas) == 2
        if ok:
            for b in betas:
                try:
                    check_nonneg("betas", b)
                except ValueError:
                    ok = False
                    break
                if not b < 1:
                    ok = False
        if not ok:
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        check_nonneg("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("amsgrad", group["amsgrad"])
        check_bool("maximize", group["maximize"])

    def _update(self, data: Any, grad: Any, group: dict[str, Any], state: dict[str, Any]) -> None:
        xp = get_array_module(data)
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        weight_decay = group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(data)
            state["exp_avg_sq"] = xp.zeros_like(data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(data)
        state["step"] += 1
        step = state["step"]
        if backend.gpu_path(xp):
            self._gpu_update(xp, data, grad, group, state)
            return
        m, v = state["exp_avg"], state["exp_avg_sq"]

        g = -grad if group["maximize"] else grad
        if weight_decay != 0:
            if self._decoupled_weight_decay:
                data *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * data
        # m + (1 - beta1)(g - m): PyTorch's lerp form of beta1 m + (1 - beta1) g.
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * (g * g)

        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        if group["amsgrad"]:
            v_max = state.get("max_exp_avg_sq")
            if v_max is None:  # amsgrad switched on after some steps
                v_max = state["max_exp_avg_sq"] = xp.zeros_like(data)
            xp.maximum(v_max, v, out=v_max)
            v = v_max
        denom = xp.sqrt(v) / bias_correction2_sqrt + group["eps"]
        data -= (lr / bias_correction1) * (m / denom)

    def _gpu_update(
        self, xp: Any, data: Any, grad: Any, group: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """The same update as one fused kernel launch (foldconv.cuda.optim)."""
        from foldconv.cuda import optim as cuda_optim  # noqa: PLC0415

        if group["amsgrad"] and state.get("max_exp_avg_sq") is None:
            state["max_exp_avg_sq"] = xp.zeros_like(data)  # amsgrad switched on later
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state and not state[key].flags.c_contiguous:
                state[key] = xp.ascontiguousarray(state[key])
        beta1, beta2 = group["betas"]
        cuda_optim.adam_update(
            data,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["max_exp_avg_sq"] if group["amsgrad"] else None,
            step=state["step"],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self._decoupled_weight_decay,
            maximize=group["maximize"],
        )


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter 2019), as PyTorch's AdamW.

    The same update as :class:`Adam` except that weight decay is not added to the
    gradient; instead, before the moment updates,

    .. math::

        \theta_{t-1} \leftarrow (1 - \gamma \lambda)\, \theta_{t-1}

    and then

    .. math::

        \theta_t = \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \,
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}.

    ``weight_decay`` defaults to 1e-2. Parameters as :class:`Adam`.
    """

    _decoupled_weight_decay = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
