"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foldconv import backend
from foldconv.backend import get_array_module
from foldconv.functional.threads import active_threads, parallel_map
from foldconv.optim import sgd_compiled
from foldconv.optim.optimizer import Optimizer, check_bool, check_nonneg, check_real

__all__ = ["SGD"]

# Elements per block of the CPU update: 1 MiB of float32 per array, so that the
# five arrays of a block (data, grad, buffer, two scratch) stay in the L2/L3 caches.
_BLOCK = 1 << 18


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
        *,
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

    def _scratch(self, data: Any, n: int) -> tuple[Any, Any]:
        """Two 1-d arrays of ``n`` elements of ``data``'s dtype, reused across steps.

        Fresh temporaries the size of AlexNet's fc6 (151 MB each, several per update)
        cost more in page faults than the arithmetic; these are kept instead (never in
        the state dict).
        """
        xp = get_array_module(data)
        cache = self.__dict__.setdefault("_scratch_buffers", {})
        key = (xp.__name__, data.dtype.str)
        buf = cache.get(key)
        if buf is None or buf.size < 2 * n:
            cache.pop(key, None)
            buf = cache[key] = xp.empty(2 * n, dtype=data.dtype)
        return buf[:n], buf[n : 2 * n]

    def _update(self, data: Any, grad: Any, group: dict[str, Any], state: dict[str, Any]) -> None:
        # The same arithmetic as PyTorch's rule (so the same rounding), in place: each
        # intermediate goes into a scratch array that nothing else still needs.
        xp = get_array_module(data)
        lr = group["lr"]
        momentum = group["momentum"]
        weight_decay = group["weight_decay"]
        if backend.gpu_path(xp):
            # One fused kernel launch: the same operations per element, no temporaries.
            from foldconv.cuda import optim as cuda_optim  # noqa: PLC0415

            buf = state.get("momentum_buffer") if momentum != 0 else None
            if buf is not None and not buf.flags.c_contiguous:
                buf = state["momentum_buffer"] = xp.ascontiguousarray(buf)
            buf = cuda_optim.sgd_update(
                data,
                grad,
                buf,
                lr=lr,
                momentum=momentum,
                dampening=group["dampening"],
                weight_decay=weight_decay,
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            if buf is not None:
                state["momentum_buffer"] = buf
            return
        buf = state.get("momentum_buffer") if momentum != 0 else None
        first = momentum != 0 and buf is None
        if first:
            # What ``g.copy()`` would give: g is a scratch array (data's dtype) after
            # maximize or weight decay, the gradient itself otherwise.
            dtype = data.dtype if group["maximize"] or weight_decay != 0 else grad.dtype
            buf = state["momentum_buffer"] = xp.empty(data.shape, dtype=dtype)
        arrays = (data, grad) if buf is None else (data, grad, buf)
        if sgd_compiled.applies(arrays, group):
            # One compiled pass, bitwise the blocks below; large arrays in contiguous
            # ranges on foldconv's threads (each element's operations are the same
            # whichever thread runs it).
            n = data.size
            tasks = max(1, min(active_threads(), -(-n // _BLOCK)))
            per = -(-n // tasks)
            if tasks == 1:
                sgd_compiled.update(data, grad, buf, group, first, 0, n)
            else:
                parallel_map(
                    lambda i: sgd_compiled.update(
                        data, grad, buf, group, first, i * per, min(n, (i + 1) * per)
                    ),
                    range(tasks),
                )
            return
        if all(arr.flags.c_contiguous for arr in arrays) and data.size > _BLOCK:
            # Block by block: the update's five or six passes then run over blocks
            # that stay in cache, and only data, grad and the buffer travel to and
            # from memory once each (the same operations per element, so the same
            # rounding as one pass over the whole array).
            # Contiguous runs of blocks go to foldconv's threads (NumPy's ufuncs release
            # the GIL), each with its own scratch; every element sees the same operations
            # whichever thread runs it, so the result does not depend on the count.
            flat = [arr.reshape(-1) for arr in arrays]
            n_blocks = -(-data.size // _BLOCK)
            tasks = max(1, min(active_threads(), n_blocks))
            a, b = self._scratch(data, _BLOCK * tasks)
            per_task = -(-n_blocks // tasks)

            def run(i: int) -> None:
                sa, sb = a[i * _BLOCK : (i + 1) * _BLOCK], b[i * _BLOCK : (i + 1) * _BLOCK]
                stop = min(data.size, (i + 1) * per_task * _BLOCK)
                for s in range(i * per_task * _BLOCK, stop, _BLOCK):
                    e = min(s + _BLOCK, data.size)
                    blocks = [f[s:e] for f in flat] + [None] * (3 - len(flat))
                    self._update_block(xp, *blocks, sa[: e - s], sb[: e - s], group, first=first)

            parallel_map(run, range(tasks))
        else:
            a, b = self._scratch(data, data.size)
            a, b = a.reshape(data.shape), b.reshape(data.shape)
            self._update_block(xp, data, grad, buf, a, b, group, first=first)

    @staticmethod
    def _update_block(
        xp: Any,
        data: Any,
        grad: Any,
        buf: Any,
        a: Any,
        b: Any,
        group: dict[str, Any],
        *,
        first: bool,
    ) -> None:
        """PyTorch's rule on one block, in place: ``data`` and ``buf`` (the momentum
        buffer, ``None`` without momentum) are updated; ``a`` and ``b`` are scratch
        arrays of the same shape. ``first``: the buffer is new and takes the gradient."""
        lr = group["lr"]
        momentum = group["momentum"]
        weight_decay = group["weight_decay"]
        g = grad
        if group["maximize"]:
            xp.negative(grad, out=a)
            g = a
        if weight_decay != 0:
            xp.multiply(data, weight_decay, out=b)
            b += g  # g + λθ
            g = b
        if momentum != 0:
            if first:
                # A copy: ``g`` may be ``p.grad`` itself or a scratch array.
                buf[...] = g
            else:
                buf *= momentum
                dampening = group["dampening"]
                if dampening == 0:
                    buf += g  # (1 - 0)·g is g exactly
                else:
                    free = b if g is a else a
                    xp.multiply(g, 1 - dampening, out=free)
                    buf += free
            if group["nesterov"]:
                free = b if g is a else a
                xp.multiply(buf, momentum, out=free)
                free += g  # g + μ b
                g = free
            else:
                g = buf
        step = a if g is not a else b
        xp.multiply(g, lr, out=step)
        data -= step
