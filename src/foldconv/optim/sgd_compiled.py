"""SGD's update compiled (Numba): one pass over each parameter, the optional fast path of
optim/sgd.py on the CPU.

The NumPy path spends five or six ufunc calls per parameter (weight decay, momentum,
Nesterov, the step), each a pass over the block: for LeNet-5's ten small parameters the
calls cost more than the arithmetic (0.17-0.25 ms of a 4.5 ms step at batch 64). Here each
element goes through the same operations in the same order, in the parameter's dtype, so
the result is the NumPy path's to the last bit:

    g = -g (maximize);  g = p·λ + g;  b = g (first step) or b·μ + g·(1 - τ) (b·μ + g when
    τ = 0);  g = b·μ + g (Nesterov) or b;  p = p - g·γ

with λ, μ, τ and γ rounded to the parameter's dtype first, as NumPy does with a Python
float. The compiler is told nothing that would let it reorder or fuse these operations
(no fast-math flags). Used for C-contiguous float32/float64 NumPy arrays of one dtype whose
hyperparameters are Python floats or ints (a NumPy float64 scalar would make NumPy compute
in float64), with Numba installed and ``foldconv.set_compiled`` on.
"""

from __future__ import annotations

import functools
from typing import Any

from foldconv.functional import compiled


def applies(arrays: tuple[Any, ...], group: dict[str, Any]) -> bool:
    """The kernel can run this update exactly."""
    if not compiled.takes(*arrays):
        return False
    if not all(a.flags.c_contiguous for a in arrays):
        return False
    return all(
        type(group[k]) in (int, float) for k in ("lr", "momentum", "dampening", "weight_decay")
    )


@functools.cache
def _kernel() -> Any:
    @compiled.njit(nogil=True, boundscheck=False)
    def update(p, g, b, lr, mu, keep, wd, flags, i0, i1):  # pragma: no cover - compiled
        # flags, bit by bit: maximize, weight decay, momentum, first step, dampening,
        # Nesterov (one int: no array to build per call)
        maximize, decay, momentum = flags & 1 != 0, flags & 2 != 0, flags & 4 != 0
        first, damp, nesterov = flags & 8 != 0, flags & 16 != 0, flags & 32 != 0
        # Views indexed by the loop counter (see functional/activation_compiled.py).
        ps, gs = p[i0:i1], g[i0:i1]
        bs = b[i0:i1] if momentum else b[0:0]
        for i in range(ps.size):
            gi = -gs[i] if maximize else gs[i]
            if decay:
                gi = ps[i] * wd + gi
            if momentum:
                if first:
                    bi = gi
                elif damp:
                    bi = bs[i] * mu + gi * keep
                else:
                    bi = bs[i] * mu + gi
                bs[i] = bi
                gi = bi * mu + gi if nesterov else bi
            ps[i] = ps[i] - gi * lr

    return update


def update(data: Any, grad: Any, buf: Any, group: dict[str, Any], first: bool, i0: int, i1: int):
    """The update of elements [i0, i1) of the flattened ``data`` (and ``buf``, the momentum
    buffer, or None), in place."""
    t = data.dtype.type
    momentum, dampening, weight_decay = group["momentum"], group["dampening"], group["weight_decay"]
    flags = (
        bool(group["maximize"])
        | (weight_decay != 0) << 1
        | (momentum != 0) << 2
        | bool(first) << 3
        | (dampening != 0) << 4
        | bool(group["nesterov"]) << 5
    )
    b = data.reshape(-1)[:0] if buf is None else buf.reshape(-1)
    _kernel()(
        data.reshape(-1),
        grad.reshape(-1),
        b,
        t(group["lr"]),
        t(momentum),
        t(1 - dampening),
        t(weight_decay),
        flags,
        i0,
        i1,
    )
