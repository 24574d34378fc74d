"""The optimizer base class, and saving optimizer state as arrays plus JSON.

An :class:`Optimizer` holds *parameter groups*: dicts with a ``"params"`` list of
:class:`~foldconv.nn.module.Parameter` and that group's hyper-parameters (``lr``,
``momentum``, ...), as in PyTorch. Per-parameter state (momentum buffers, Adam moments,
step counts) lives in :attr:`Optimizer.state`, keyed by the parameter object, and is
exported by :meth:`Optimizer.state_dict` keyed by the parameter's position across all
groups (0, 1, 2, ... in group order), so it can be loaded into a new optimizer built
over a new copy of the same model.

:func:`flatten_state` / :func:`unflatten_state` turn such a state dict into
``(name -> NumPy array, JSON-able dict)`` and back, the pair a trainer writes into a
safetensors file and a JSON file.
"""

from __future__ import annotations

import abc
import copy
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from foldconv.backend import get_array_module, is_cupy_array, to_device
from foldconv.nn.module import Parameter

__all__ = ["Optimizer", "flatten_state", "unflatten_state"]

_STATE_FORMAT = "foldconv.optim.state/1"


# -- argument checks shared by the optimizers ---------------------------------------------
def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_nonneg(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number >= 0 (NaN fails)."""
    if not _is_real(value) or not value >= 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")


def check_real(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number."""
    if not _is_real(value) or not abs(value) < float("inf"):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def _as_python_number(value: Any) -> Any:
    """NumPy scalars become Python numbers, so state stays plain and JSON-able."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class Optimizer(abc.ABC):
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``step``.

    Subclasses implement :meth:`_update` (one parameter's in-place update) and may
    extend :meth:`_check_group` to validate their hyper-parameters.

    Parameters
    ----------
    params : iterable of Parameter, or iterable of dict
        The parameters to optimize, or parameter groups: dicts with a ``"params"``
        entry (an iterable of Parameter) and optional per-group hyper-parameters that
        override ``defaults``.
    defaults : dict
        Hyper-parameters used by groups that do not set them.

    Attributes
    ----------
    param_groups : list of dict
        Each group's ``"params"`` (a list of Parameter) and hyper-parameters; change
        ``group["lr"]`` to change that group's learning rate.
    state : dict
        Parameter -> dict of that parameter's state (arrays on the parameter's device,
        or Python numbers).
    defaults : dict
    """

    def __init__(self, params: Iterable[Any], defaults: Mapping[str, Any]) -> None:
        if isinstance(params, Parameter) or hasattr(params, "shape"):
            raise TypeError(
                "params: expected an iterable of Parameters or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list"
            )
        if isinstance(params, Mapping):
            raise TypeError(
                "params: expected an iterable of Parameters or of dicts, got a single dict; "
                "wrap it in a list"
            )
        self.defaults: dict[str, Any] = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        items = list(params)
        if not items:
            raise ValueError("params: expected at least one parameter, got an empty iterable")
        if all(isinstance(item, Mapping) for item in items):
            groups = items
        elif any(isinstance(item, Mapping) for item in items):
            raise TypeError("params: expected all Parameters or all dicts, got a mix of both")
        else:
            groups = [{"params": items}]
        for group in groups:
            self.add_param_group(group)

    # -- groups -------------------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Append a parameter group; missing hyper-parameters are taken from ``defaults``.

        Raises
        ------
        TypeError
            If ``params`` holds something other than Parameters.
        ValueError
            If a parameter is already in another group, or a hyper-parameter is invalid.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group: expected a 'params' entry, got none")
        raw = param_group["params"]
        if isinstance(raw, Parameter):
            plist = [raw]
        elif isinstance(raw, (set, frozenset)):
            raise TypeError("params: expected an ordered iterable of Parameters, got a set")
        else:
            plist = list(raw)
        for i, p in enumerate(plist):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}]: expected a Parameter, got {type(p).__name__}")
        if len({id(p) for p in plist}) != len(plist):
            raise ValueError("params: expected each parameter once, got duplicates in a group")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in plist):
            raise ValueError("params: expected each parameter in one group, got one in two")
        group = dict(self.defaults)
        group.update({k: v for k, v in param_group.items() if k != "params"})
        group["params"] = plist
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate one group's hyper-parameters (``lr`` here; subclasses add theirs)."""
        check_nonneg("lr", group.get("lr", 0.0))

    # -- stepping -----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every parameter's gradient to ``None`` (PyTorch's ``set_to_none=True``)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient, in place on ``p.data``.

        Parameters whose ``grad`` is ``None`` are skipped (and get no state).
        float16 parameters are updated in float32 (their state kept in float32) and
        the result is rounded back to float16.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; called first.

        Returns
        -------
        The closure's loss, or ``None``.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.data.shape:
                    raise ValueError(
                        f"grad: expected shape {tuple(p.data.shape)}, got {tuple(p.grad.shape)}"
                    )
                get_array_module(p.data, p.grad)  # a NumPy/CuPy mix is a TypeError
                state = self.state.setdefault(p, {})
                if p.data.dtype == np.float16:
                    data = p.data.astype(np.float32)
                    self._update(data, p.grad.astype(np.float32), group, state)
                    p.data[...] = data
                else:
                    self._update(p.data, p.grad, group, state)
        return loss

    @abc.abstractmethod
    def _update(self, data: Any, grad: Any, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Update ``data`` in place from ``grad`` (never modify ``grad``)."""

    # -- state ----------------------------------------------------------------------------
    def _indexed_params(self) -> list[Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as plain data.

        Returns
        -------
        dict
            ``{"state": {index: {name: array or number}}, "param_groups": [...]}`` where
            ``index`` is the parameter's position across all groups, arrays are copies
            (on the parameter's device) and each group lists its hyper-parameters and
            ``"params"`` as indices. Parameters without state are absent.
        """
        index = {id(p): i for i, p in enumerate(self._indexed_params())}
        state: dict[int, dict[str, Any]] = {}
        for p, entries in self.state.items():
            if not entries or id(p) not in index:
                continue
            state[index[id(p)]] = {
                k: (v.copy() if hasattr(v, "shape") else _as_python_number(v))
                for k, v in entries.items()
            }
        groups = []
        for group in self.param_groups:
            saved = {
                k: copy.deepcopy(_as_python_number(v)) for k, v in group.items() if k != "params"
            }
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (or :func:`unflatten_state`'s result).

        The groups' hyper-parameters (``lr`` included) come from ``state_dict``; their
        parameters stay this optimizer's. State arrays are copied onto each parameter's
        device and cast to its dtype (float32 for float16 parameters).

        Raises
        ------
        ValueError
            If the group structure or a state array's shape does not match.
        """
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                "state_dict: expected a dict with 'state' and 'param_groups', got "
                + (
                    f"keys {sorted(state_dict)}"
                    if isinstance(state_dict, Mapping)
                    else type(state_dict).__name__
                )
            )
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict: expected {len(self.param_groups)} parameter groups, "
                f"got {len(saved_groups)}"
            )
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict: expected {len(group['params'])} parameters in group {i}, "
                    f"got {len(saved['params'])}"
                )
        # Saved index -> this optimizer's parameter, following the groups' order.
        mapping: dict[int, Parameter] = {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for idx, p in zip(saved["params"], group["params"], strict=True):
                mapping[int(idx)] = p
        new_state: dict[Parameter, dict[str, Any]] = {}
        for key, entries in state_dict["state"].items():
            idx = int(key)
            if idx not in mapping:
                raise ValueError(
                    f"state_dict: state for parameter {idx}, which no group lists "
                    f"(indices {sorted(mapping)})"
                )
            p = mapping[idx]
            new_state[p] = {name: self._state_value(p, idx, name, v) for name, v in entries.items()}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            new = {}
            for k, v in saved.items():
                if k == "params":
                    continue
                v = copy.deepcopy(v)
                # JSON turns tuples (betas) into lists; restore the type the group had.
                if isinstance(group.get(k), tuple) and isinstance(v, list):
                    v = tuple(v)
                new[k] = v
            new["params"] = group["params"]
            self._check_group(new)
            new_groups.append(new)
        self.param_groups = new_groups
        self.state = new_state

    @staticmethod
    def _state_value(p: Parameter, idx: int, name: str, value: Any) -> Any:
        if not hasattr(value, "shape"):
            return _as_python_number(value)
        if tuple(value.shape) != tuple(p.data.shape):
            raise ValueError(
                f"state_dict: state[{idx}][{name!r}]: expected shape {tuple(p.data.shape)}, "
                f"got {tuple(value.shape)}"
            )
        dtype = np.float32 if p.data.dtype == np.float16 else p.data.dtype
        device = "cuda" if is_cupy_array(p.data) else "cpu"
        moved = to_device(value, device)
        # astype copies, so the loaded dict and the optimizer never share memory.
        return moved.astype(dtype, copy=True)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        lines.append(")")
        return "\n".join(lines)


# -- saving -------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"state_dict: expected plain numbers, strings and lists, got {value!r}")


def flatten_state(
    state_dict: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split an optimizer state dict into NumPy arrays and a JSON-able dict.

    Parameters
    ----------
    state_dict : dict
        From :meth:`Optimizer.state_dict`.
    prefix : str
        Prepended to every array name (e.g. ``"optimizer."`` when sharing a file with
        model weights).

    Returns
    -------
    arrays : dict of str -> ndarray
        ``"{prefix}state.{index}.{name}"`` -> contiguous NumPy copy of that state array
        (CuPy arrays are brought to the host); ready for ``safetensors.numpy.save_file``.
    meta : dict
        The parameter groups, the non-array state (step counts), and the list of array
        names; ``json.dumps`` accepts it.

    Examples
    --------
    Saving and restoring with safetensors::

        from safetensors.numpy import load_file, save_file

        arrays, meta = flatten_state(opt.state_dict())
        save_file(arrays, "opt.safetensors")
        Path("opt.json").write_text(json.dumps(meta))

        meta = json.loads(Path("opt.json").read_text())
        opt.load_state_dict(unflatten_state(load_file("opt.safetensors"), meta))
    """
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("state_dict: expected a dict with 'state' and 'param_groups'")
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state_dict["state"].items():
        plain: dict[str, Any] = {}
        for name, value in entries.items():
            if "." in str(name):
                raise ValueError(f"state_dict: state names must not contain '.', got {name!r}")
            if hasattr(value, "shape"):
                arrays[f"{prefix}state.{int(idx)}.{name}"] = np.ascontiguousarray(
                    to_device(value, "cpu")
                ).copy()
            else:
                plain[str(name)] = _jsonable(value)
        scalars[str(int(idx))] = plain
    meta = {
        "format": _STATE_FORMAT,
        "state": scalars,
        "param_groups": _jsonable(list(state_dict["param_groups"])),
        "arrays": sorted(k[len(prefix) :] for k in arrays),
    }
    return arrays, meta


def unflatten_state(
    arrays: Mapping[str, Any], meta: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Inverse of :func:`flatten_state`: rebuild a state dict for ``load_state_dict``.

    Parameters
    ----------
    arrays : mapping of str -> ndarray
        May hold other entries (e.g. model weights); only names listed in ``meta`` are
        read.
    meta : dict
        :func:`flatten_state`'s second result (possibly after a JSON round trip).
    prefix : str
        The prefix given to :func:`flatten_state`.

    Raises
    ------
    ValueError
        If ``meta`` is not such a dict, or an array it lists is missing.
    """
    if not isinstance(meta, Mapping) or meta.get("format") != _STATE_FORMAT:
        raise ValueError(
            f"meta: expected the dict flatten_state returned (format {_STATE_FORMAT!r}), got "
            + (
                f"format {meta.get('format')!r}"
                if isinstance(meta, Mapping)
                else type(meta).__name__
            )
        )
    missing = [name for name in meta["arrays"] if prefix + name not in arrays]
    if missing:
        raise ValueError(f"arrays: missing entries {[prefix + m for m in missing]}")
    state: dict[int, dict[str, Any]] = {
        int(idx): dict(entries) for idx, entries in meta["state"].items()
    }
    for name in meta["arrays"]:
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = np.array(to_device(arrays[prefix + name], "cpu"))
    groups = copy.deepcopy(list(meta["param_groups"]))
    return {"state": dict(sorted(state.items())), "param_groups": groups}
