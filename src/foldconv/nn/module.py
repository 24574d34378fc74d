"""The module system: parameters, modules with hand-written backward passes, containers.

A :class:`Module` runs ``forward`` when called and keeps what its ``backward``
needs; ``backward(grad_output)`` returns the gradient with respect to the input
and *accumulates* parameter gradients into ``Parameter.grad``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from foldconv.backend import get_array_module, is_cupy_array, to_device

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class Parameter:
    """A trainable array and its accumulated gradient.

    Attributes
    ----------
    data : ndarray
        The values.
    grad : ndarray or None
        The gradient accumulated by ``backward`` calls since the last ``zero_grad``
        (``None`` until the first one).
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate(self, grad: Any, *, take: bool = False) -> None:
        """Add ``grad`` to ``self.grad`` (a copy on the first call).

        With ``take=True`` the caller hands over a fresh array it will not touch again, so
        the first call keeps it instead of copying it (for AlexNet's fc6, 151 MB a step).
        """
        if grad.shape != self.data.shape:
            raise ValueError(
                f"grad: expected shape {tuple(self.data.shape)}, got {tuple(grad.shape)}"
            )
        if self.grad is None:
            if take and grad.dtype == self.data.dtype and grad.flags.c_contiguous:
                self.grad = grad
            else:
                xp = get_array_module(grad)
                self.grad = xp.array(grad, dtype=self.data.dtype, copy=True)
        else:
            self.grad += grad

    def zero_grad(self) -> None:
        self.grad = None

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer.

    Subclasses implement ``forward(x)`` and ``backward(grad_output)``; assigning a
    :class:`Parameter`, a :class:`Module` or (through :meth:`register_buffer`) an
    array to an attribute registers it under that name, so that
    :meth:`named_parameters` and :meth:`state_dict` give PyTorch's dotted names.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}: call Module.__init__() before assigning attributes"
            )
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif value is None and name in ("weight", "bias"):
            # An absent optional parameter (bias=False) is recorded as such.
            self._parameters[name] = None
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for table in ("_parameters", "_modules", "_buffers"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._modules, self._buffers):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array: Any) -> None:
        """Register a non-trainable array saved in :meth:`state_dict` (e.g. running stats)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        self._modules[name] = module

    # -- running ----------------------------------------------------------------------
    # Running out of GPU memory inside a module's forward or backward becomes a
    # foldconv.cuda.memory.GPUOutOfMemoryError naming the module by its qualified name, the
    # shape it was given and the bytes asked for. The try blocks cost nothing until
    # something is raised (CPython 3.11+ zero-cost exceptions); only then is the error
    # looked at, and anything that is not a GPU out-of-memory error passes unchanged.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.forward(*args, **kwargs)
        except Exception as err:
            from foldconv.cuda.memory import is_gpu_oom, translate  # noqa: PLC0415

            if not is_gpu_oom(err):
                raise
            new = translate(err, self, "forward", args)
            if new is err:
                raise
            raise new from err

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each ``backward`` a subclass defines as ``__call__`` wraps ``forward``:
        a GPU out-of-memory error in it names the module."""
        super().__init_subclass__(**kwargs)
        backward = cls.__dict__.get("backward")
        if backward is not None and not getattr(backward, "_names_gpu_oom", False):
            cls.backward = _naming_gpu_oom(backward)  # type: ignore[method-assign]

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, grad_output: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    # -- traversal --------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Parameters with PyTorch's dotted names (``features.0.weight``)."""
        seen: set[int] = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mod_name, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- state --------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> OrderedDict[str, Any]:
        """Name -> array for every parameter and buffer (PyTorch's names and shapes).

        The arrays are the module's own (not copies), as in PyTorch.
        """
        state: OrderedDict[str, Any] = OrderedDict()
        for mod_name, module in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[pre + name] = p.data
            for name, b in module._buffers.items():
                if b is not None:
                    state[pre + name] = b
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Raises
        ------
        ValueError
            Listing missing keys, unexpected keys and shape mismatches (missing and
            unexpected keys are tolerated when ``strict`` is False; shape mismatches
            never are).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}"
            )
        slots: dict[str, tuple[Module, str, str]] = {}
        for mod_name, module in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    slots[pre + name] = (module, name, "param")
            for name, b in module._buffers.items():
                if b is not None:
                    slots[pre + name] = (module, name, "buffer")
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        mismatched = []
        for key, (module, name, kind) in slots.items():
            if key in state_dict:
                target = module._parameters[name].data if kind == "param" else module._buffers[name]
                got = tuple(np.shape(state_dict[key]))
                if got != tuple(target.shape):
                    mismatched.append(f"{key}: expected shape {tuple(target.shape)}, got {got}")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise ValueError(
                f"state_dict: does not match {type(self).__name__}: " + " | ".join(problems)
            )
        for key, (module, name, kind) in slots.items():
            if key not in state_dict:
                continue
            if kind == "param":
                target = module._parameters[name].data
            else:
                target = module._buffers[name]
            xp = get_array_module(target)
            value = state_dict[key]
            if xp is not np and not hasattr(value, "__cuda_array_interface__"):
                value = xp.asarray(np.asarray(value))
            elif xp is np:
                value = to_device(value, "cpu")
            target[...] = value

    def to(self, device: str | None = None, dtype: Any = None) -> Module:
        """Move (``'cpu'``, ``'cuda'``, ``'cuda:<index>'``) and/or cast floating parameters
        and buffers in place.

        Moving also moves the parameters' gradients and what the last forward kept for
        backward (the modules' private array attributes), so that a ``backward`` may follow
        on the new device. Integer buffers (e.g. ``num_batches_tracked``) keep their dtype.
        Returns self.

        Raises
        ------
        RuntimeError
            For 'cuda' without CuPy (the message says how to install it); nothing is moved.
        """
        if device is not None:
            if not isinstance(device, str):
                raise TypeError(
                    f"device: expected 'cpu' or 'cuda', got {type(device).__name__} {device!r}"
                )
            if device != "cpu":
                from foldconv.backend import cuda_module  # noqa: PLC0415

                cuda_module(device)  # fails before anything moved
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype.type not in _FLOAT_DTYPES:
                raise TypeError(f"dtype: expected float16, float32 or float64, got {dtype}")

        def convert(a: Any) -> Any:
            if device is not None:
                a = to_device(a, device)
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a

        for module in self.modules():
            for p in module._parameters.values():
                if p is None:
                    continue
                p.data = convert(p.data)
                if p.grad is not None:
                    p.grad = convert(p.grad)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = convert(b)
            if device is not None:
                _move_saved_arrays(module, device)
            hook = getattr(module, "_on_to", None)
            if hook is not None:
                hook(device, dtype)
        return self

    # -- printing ---------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _move_saved_arrays(module: Module, device: str) -> None:
    """Move what a forward kept for backward (private array attributes, and tuples holding
    arrays) to ``device``."""
    for name, value in list(vars(module).items()):
        if not name.startswith("_") or name in ("_parameters", "_modules", "_buffers"):
            continue
        if _is_array(value):
            object.__setattr__(module, name, to_device(value, device))
        elif isinstance(value, tuple) and any(_is_array(v) for v in value):
            moved = tuple(to_device(v, device) if _is_array(v) else v for v in value)
            object.__setattr__(module, name, moved)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_cupy_array(value)


_MISSING: Any = object()


def _naming_gpu_oom(backward: Any) -> Any:
    """``backward`` with GPU out-of-memory errors translated as in :meth:`Module.__call__`.

    The common call ``m.backward(grad_output)`` is passed on as such (no ``*args`` tuple
    or ``**kwargs`` dict to build): the wrapper adds about 50 ns a call.
    """

    @functools.wraps(backward)
    def wrapper(self: Module, grad_output: Any = _MISSING, *args: Any, **kwargs: Any) -> Any:
        try:
            if grad_output is _MISSING:
                return backward(self, *args, **kwargs)
            if args or kwargs:
                return backward(self, grad_output, *args, **kwargs)
            return backward(self, grad_output)
        except Exception as err:
            from foldconv.cuda.memory import is_gpu_oom, translate  # noqa: PLC0415

            if not is_gpu_oom(err):
                raise
            new = translate(err, self, "backward", (grad_output, *args))
            if new is err:
                raise
            raise new from err

    wrapper._names_gpu_oom = True  # type: ignore[attr-defined]
    return wrapper


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse.

    Children are named ``0``, ``1``, ... as in PyTorch.
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i}]: expected a Module, got {type(m).__name__}")
            self.add_module(str(i), m)

    def append(self, module: Module) -> Sequential:
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*mods[index])
        try:
            return mods[index]
        except IndexError:
            raise IndexError(
                f"index: expected -{len(mods)} <= index < {len(mods)}, got {index}"
            ) from None

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output: Any) -> Any:
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output
