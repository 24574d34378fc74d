"""Checkpoints and atomic file IO.

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the old one with :func:`os.replace`. A state file gets a fresh
name and is written before the weights file that points at it, so a kill at any moment
leaves a previous, consistent checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.backend import to_device
from foldconv.nn.module import Module

CHECKPOINT_FORMAT = "foldconv-checkpoint/1"
STATE_FORMAT = "foldconv-train-state/1"


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to a temporary file in the same directory, which is flushed and fsynced
    and then renamed over ``path`` (:func:`os.replace`, atomic on POSIX and Windows). On
    any failure the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _generators(model: Module) -> dict[str, np.random.Generator]:
    """The model's random generators (dropout's) by the first attribute path reaching each."""
    found: dict[str, np.random.Generator] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, np.random.Generator) and id(value) not in seen:
                seen.add(id(value))
                found[f"{mod_name}.{attr}" if mod_name else attr] = value
    return found


def _rng_states(model: Module, generators: dict[str, Any] | None = None) -> dict[str, Any]:
    """The states of the model's generators (``generators``: those of _generators(model),
    found already) and of foldconv's global one."""
    from foldconv.nn import init  # noqa: PLC0415

    gens = _generators(model) if generators is None else generators
    states = {name: g.bit_generator.state for name, g in gens.items()}
    return {"model": states, "global": init._global_rng.bit_generator.state}


def _set_rng_states(model: Module, states: Mapping[str, Any]) -> None:
    from foldconv.nn import init  # noqa: PLC0415

    gens = _generators(model)
    saved = states.get("model", {})
    missing = sorted(set(gens) - set(saved))
    if missing:
        raise ValueError(
            "checkpoint: the model's random generators do not match the checkpoint "
            f"(no state for {', '.join(missing)})"
        )
    for name, g in gens.items():
        g.bit_generator.state = saved[name]
    if "global" in states:
        init._global_rng.bit_generator.state = states["global"]


def _export_array(a: Any) -> np.ndarray:
    """A contiguous host copy, floats as float32 (float64 kept: exact resume in float64)."""
    a = np.asarray(to_device(a, "cpu"))
    dtype = np.float32 if a.dtype.kind == "f" and a.dtype != np.float64 else a.dtype
    # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (BatchNorm's
    # num_batches_tracked) into shape (1,).
    return np.array(a, dtype=dtype, order="C", copy=True)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _resolve_checkpoint(path: str | os.PathLike, prefer: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for tag in (prefer, "last" if prefer == "best" else "best"):
            cand = p / f"{tag}.safetensors"
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"checkpoint: no best.safetensors or last.safetensors in directory {p}"
        )
    if not p.exists():
        raise FileNotFoundError(f"checkpoint: {p} does not exist")
    return p


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint: cannot read {path}: {e}") from e
    return arrays, meta


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The weights and the description (``"foldconv"`` metadata) of a checkpoint file.

    Raises
    ------
    ValueError
        If the file is not a foldconv checkpoint.
    """
    p = Path(path)
    weights, meta = _read_safetensors(p)
    if meta.get("format") != CHECKPOINT_FORMAT or "foldconv" not in meta:
        raise ValueError(
            f"checkpoint: {p} is not a foldconv checkpoint (expected metadata format "
            f"{CHECKPOINT_FORMAT!r}, got {meta.get('format')!r})"
        )
    return weights, json.loads(meta["foldconv"])


def load_checkpoint(
    path: str | os.PathLike, model: Module | None = None
) -> tuple[Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights.

    Parameters
    ----------
    path : a ``.safetensors`` checkpoint, or a run directory (its ``best.safetensors``)
    model : Module, optional
        The network to load into; default: built by name from the checkpoint's description
        (models from :mod:`foldconv.models`).

    Returns
    -------
    model : Module, in eval mode
    info : dict
        The checkpoint's description: ``model``, ``num_classes``, ``classes``,
        ``in_channels``, ``input_hw``, ``image_hw``, ``mean``, ``std``, ``epoch``,
        ``step``, ``test_accuracy``, ``config``, ...
    """
    p = _resolve_checkpoint(path, "best")
    weights, info = read_checkpoint(p)
    if model is None:
        from foldconv.models import MODELS, get_model  # noqa: PLC0415

        name = info.get("model")
        if name not in MODELS:
            raise ValueError(
                f"checkpoint: {p} holds a custom model {name!r}; pass model= to load it"
            )
        kwargs = info.get("arch_kwargs") or {"in_channels": info["in_channels"]}
        model = get_model(name, info["num_classes"], **kwargs)
    model.load_state_dict(weights)
    model.eval()
    info["path"] = str(p)
    return model, info


def write_checkpoint(
    out: Path,
    tag: str,
    model: Module,
    optimizer: Any,
    trainer_state: Mapping[str, Any],
    info: Mapping[str, Any],
) -> Path:
    """Write ``<tag>.state-<id>.safetensors`` then ``<tag>.safetensors`` (atomically).

    The state file holds the optimizer's arrays and, as JSON metadata, its groups and
    ``trainer_state``; the weights file holds the model's state dict and ``info`` plus the
    state file's name and id. Older state files of the same tag are removed afterwards.
    """
    import safetensors.numpy as stn  # noqa: PLC0415

    from foldconv.optim import flatten_state  # noqa: PLC0415

    state_id = uuid.uuid4().hex[:12]
    state_name = f"{tag}.state-{state_id}.safetensors"
    opt_arrays, opt_meta = flatten_state(optimizer.state_dict(), prefix="optimizer.")
    atomic_write_bytes(
        out / state_name,
        stn.save(
            opt_arrays,
            metadata={
                "format": STATE_FORMAT,
                "id": state_id,
                "trainer": json.dumps(trainer_state),
                "optimizer": json.dumps(opt_meta),
            },
        ),
    )
    info = dict(info)
    info.update(
        state_file=state_name,
        state_id=state_id,
        saved_at=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    weights = {k: _export_array(v) for k, v in model.state_dict().items()}
    path = out / f"{tag}.safetensors"
    atomic_write_bytes(
        path,
        stn.save(weights, metadata={"format": CHECKPOINT_FORMAT, "foldconv": json.dumps(info)}),
    )
    for old in out.glob(f"{tag}.state-*.safetensors"):
        if old.name != state_name:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def read_training_state(
    checkpoint: Path, info: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """The state file a weights file names: (optimizer arrays, optimizer metadata,
    trainer state)."""
    state_path = checkpoint.parent / info["state_file"]
    if not state_path.is_file():
        raise FileNotFoundError(
            f"checkpoint: the training state {state_path.name} named by "
            f"{checkpoint.name} is missing from {state_path.parent}"
        )
    arrays, meta = _read_safetensors(state_path)
    if meta.get("format") != STATE_FORMAT or meta.get("id") != info.get("state_id"):
        raise ValueError(f"checkpoint: {state_path} does not belong to {checkpoint.name}")
    return arrays, json.loads(meta["optimizer"]), json.loads(meta["trainer"])
