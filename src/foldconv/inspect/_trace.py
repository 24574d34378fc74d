"""What :func:`foldconv.summary` and :func:`foldconv.gradcheck` share: a private copy of a
model that leaves the user's one untouched, a record of every module call in a forward,
and rewinding the random generators a forward draws from.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foldconv.nn import init as _init
from foldconv.nn.module import Module, Parameter


def is_array(a: Any) -> bool:
    """An ndarray of NumPy or CuPy (anything with shape, dtype and nbytes)."""
    return hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "nbytes")


def _attribute_arrays(value: Any, depth: int = 0) -> Iterator[Any]:
    """Arrays in an attribute's value, looking one level into tuples, lists and dicts
    (where layers keep their caches, e.g. LocalResponseNorm's ``_cache`` tuple)."""
    if is_array(value):
        yield value
    elif depth < 2 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _attribute_arrays(v, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for v in value.values():
            yield from _attribute_arrays(v, depth + 1)


_REGISTRIES = ("_parameters", "_modules", "_buffers")


def held_arrays(module: Module) -> list[Any]:
    """The arrays a module holds in its own plain attributes (not its parameters, buffers
    or children): the caches its ``backward`` reads."""
    out = []
    for name, value in module.__dict__.items():
        if name in _REGISTRIES or name == "forward":
            continue
        out.extend(_attribute_arrays(value))
    return out


def memory_root(a: Any) -> Any:
    """The array that owns ``a``'s memory (a view keeps its whole base alive)."""
    while getattr(a, "base", None) is not None and is_array(a.base):
        a = a.base
    return a


def private_copy(model: Module, dtype: Any = None) -> Module:
    """A deep copy of ``model`` whose forwards and backwards cannot change ``model``.

    Parameter arrays are shared, not copied, when they already have ``dtype`` (or when
    ``dtype`` is None), so that copying AlexNet costs no memory; otherwise the copy gets
    them converted to ``dtype``. Parameter gradients are not copied (the copy's start at
    None), and the caches a module keeps from an earlier forward are shared (forward
    replaces them by assignment, it does not write into them). Buffers (running
    statistics) and random generators are copied, so a forward of the copy moves neither
    the model's statistics nor its dropout masks.
    """
    memo: dict[int, Any] = {}
    want = None if dtype is None else np.dtype(dtype)
    for module in model.modules():
        for p in module._parameters.values():
            if p is None or id(p) in memo:
                continue
            data = p.data
            if want is not None and data.dtype.kind == "f" and data.dtype != want:
                data = data.astype(want)
            fresh = Parameter(data)
            memo[id(p)] = fresh
        for a in held_arrays(module):
            memo[id(a)] = a
    clone = copy.deepcopy(model, memo)
    if want is not None:
        clone.to(dtype=want)
    return clone


@dataclass
class Call:
    """One call of a module's forward: its positional arguments and what it returned."""

    name: str
    module: Module
    args: tuple
    output: Any
    index: int  # order of the calls' starts (the root's call is 0)


@dataclass
class Trace:
    """Every module call in one forward, in the order they started."""

    calls: list[Call] = field(default_factory=list)

    def by_module(self) -> dict[int, list[Call]]:
        out: dict[int, list[Call]] = {}
        for c in self.calls:
            out.setdefault(id(c.module), []).append(c)
        return out


def traced_forward(model: Module, x: Any, before: Callable[[], None] | None = None) -> Trace:
    """Run ``model(x)`` recording each module's calls.

    Each module gets, for the duration of the call, an instance attribute ``forward``
    that wraps its class's forward (``Module.__call__`` calls ``self.forward``), so
    modules reached through ``__call__`` are seen whatever the container's code; a
    module whose forward is reached otherwise (a method calling ``child.forward``
    directly) is seen too, since the attribute is what that lookup finds.
    """
    trace = Trace()
    names = {id(m): n for n, m in model.named_modules()}
    wrapped = []
    counter = [0]

    def wrap(module: Module, name: str) -> None:
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            index = counter[0]
            counter[0] += 1
            try:
                out = original(*args, **kwargs)
            except (ValueError, TypeError) as e:
                if getattr(e, "_foldconv_layer", None) is None:  # the innermost layer only
                    shape = getattr(args[0], "shape", None) if args else None
                    where = f"layer {name or '(the model)'!r} ({type(module).__name__})"
                    e.args = (f"{e} [in {where}, on an input of shape {shape}]",) + e.args[1:]
                    e._foldconv_layer = name
                raise
            trace.calls.append(Call(name, module, args, out, index))
            return out

        object.__setattr__(module, "forward", forward)
        wrapped.append(module)

    for module in model.modules():
        if "forward" not in module.__dict__:
            wrap(module, names[id(module)])
    try:
        if before is not None:
            before()
        model(x)
    finally:
        for module in wrapped:
            del module.__dict__["forward"]
    trace.calls.sort(key=lambda c: c.index)
    return trace


class RandomState:
    """Snapshots of every random generator a forward may draw from, to rewind them.

    Those are the NumPy Generators held in the modules' attributes (Dropout's ``_rng``),
    foldconv's global generator (layers built without ``rng``) and NumPy's legacy global
    state. Rewinding before each forward makes a random layer draw the same mask every
    time, so that its forward is a fixed function to differentiate.
    """

    def __init__(self, model: Module) -> None:
        self._generators: dict[int, np.random.Generator] = {}
        for module in model.modules():
            for value in module.__dict__.values():
                if isinstance(value, np.random.Generator):
                    self._generators[id(value)] = value
        self._generators[id(_init._global_rng)] = _init._global_rng
        self._states = {k: g.bit_generator.state for k, g in self._generators.items()}
        self._legacy = np.random.get_state()  # noqa: NPY002 - a user layer may draw from it

    def rewind(self) -> None:
        for k, g in self._generators.items():
            g.bit_generator.state = self._states[k]
        np.random.set_state(self._legacy)  # noqa: NPY002
