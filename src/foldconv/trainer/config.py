"""Recipes and configuration of a training run: hyper-parameters per model and dataset,
their checks, the optimizer and the learning-rate schedule, and the rule
recipe < checkpoint < explicit argument that settles a run's configuration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from foldconv.nn.module import Module

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "multistep", "cosine", "plateau")

# Hyper-parameters per model; (model, dataset) entries refine them. The digits recipe was
# measured on a 2-core machine: see the README / BENCHMARKS.md.
_MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "lenet5": dict(
        epochs=10,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
    "alexnet": dict(
        epochs=30,
        batch_size=128,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="plateau",
        augment=True,
    ),
    "vgg": dict(
        epochs=30,
        batch_size=64,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
    "resnet18": dict(
        epochs=30,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        optimizer="sgd",
        scheduler="cosine",
        augment=True,
    ),
}
_MODEL_RECIPES["alexnet_paper"] = _MODEL_RECIPES["alexnet"]
_MODEL_RECIPES["vgg11"] = _MODEL_RECIPES["vgg16"] = _MODEL_RECIPES["vgg"]
_PAIR_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("lenet5", "digits"): dict(epochs=10, batch_size=32, lr=0.05),
    ("lenet5", "mnist"): dict(epochs=12, batch_size=64, lr=0.05),
}
_ADAM_LR = 1e-3


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def default_config(model: str = "lenet5", dataset: str = "digits") -> dict[str, Any]:
    """The recipe :func:`train` uses for ``model`` on ``dataset`` when not told otherwise.

    Returns
    -------
    dict
        ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``, ``optimizer``,
        ``scheduler`` and ``augment``.
    """
    base = dict(_MODEL_RECIPES.get(model, _MODEL_RECIPES["lenet5"]))
    base.update(_PAIR_RECIPES.get((model, dataset), {}))
    return base


def _check_hparams(cfg: dict[str, Any]) -> None:
    if not _is_int(cfg["epochs"]) or cfg["epochs"] < 1:
        raise ValueError(f"epochs: expected a positive int, got {cfg['epochs']!r}")
    if not _is_int(cfg["batch_size"]) or cfg["batch_size"] < 1:
        raise ValueError(f"batch_size: expected a positive int, got {cfg['batch_size']!r}")
    if not _is_real(cfg["lr"]) or not math.isfinite(cfg["lr"]) or cfg["lr"] <= 0:
        raise ValueError(f"lr: expected a positive number, got {cfg['lr']!r}")
    for key in ("momentum", "weight_decay", "label_smoothing"):
        v = cfg[key]
        if not _is_real(v) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{key}: expected a non-negative number, got {v!r}")
    if cfg["momentum"] >= 1:
        raise ValueError(f"momentum: expected a number in [0, 1), got {cfg['momentum']!r}")
    if cfg["label_smoothing"] > 1:
        raise ValueError(
            f"label_smoothing: expected a number in [0, 1], got {cfg['label_smoothing']!r}"
        )
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ValueError(
            f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}"
        )
    if cfg["scheduler"] not in SCHEDULERS:
        raise ValueError(
            f"scheduler: expected one of {', '.join(SCHEDULERS)} (or None), "
            f"got {cfg['scheduler']!r}"
        )
    if not _is_int(cfg["seed"]) or cfg["seed"] < 0:
        raise ValueError(f"seed: expected a non-negative int, got {cfg['seed']!r}")


def _check_device(device: Any) -> str:
    """``device`` if it can be used: 'cpu', or 'cuda'/'cuda:<index>' with CuPy and a GPU
    (a ValueError naming the device and how to install CuPy otherwise)."""
    if not isinstance(device, str) or not (
        device == "cpu" or device == "cuda" or device.startswith("cuda:")
    ):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device != "cpu":
        from foldconv.backend import cuda_module  # noqa: PLC0415

        cuda_module(device)  # DeviceUnavailableError: a ValueError and a RuntimeError
    return device


def _make_optimizer(name: str, params: list[Any], cfg: Mapping[str, Any]) -> Any:
    from foldconv import optim  # noqa: PLC0415

    if name == "sgd":
        return optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    if name == "adam":
        return optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _make_scheduler(name: str, optimizer: Any, epochs: int) -> Any:
    from foldconv.optim import lr_scheduler as S  # noqa: PLC0415, N812

    if name == "none":
        return None
    if name == "step":
        return S.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "multistep":
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        return S.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=epochs)
    # AlexNet: divide by 10 when the validation error stops improving.
    return S.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=2)


def _module_name(model: Module) -> str:
    """A model's registry name when a :mod:`foldconv.models` builder made it, else its class."""
    from foldconv.models import MODELS  # noqa: PLC0415

    arch = getattr(model, "arch", None)
    return arch if arch in MODELS else type(model).__name__


def _norm_model(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _norm_dataset(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _check_resume_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Only ``epochs`` may differ from the checkpoint's configuration when resuming."""
    for key, value in overrides.items():
        if key == "epochs" or value is None:
            continue
        saved = cfg.get(key)
        if key == "scheduler" and isinstance(value, str) and value.lower() == "none":
            value = "none"
        same = (
            value.lower() == saved.lower()
            if isinstance(value, str) and isinstance(saved, str)
            else value == saved
        )
        if not same:
            raise ValueError(
                f"{key}: cannot change on resume (the checkpoint has {saved!r}, got "
                f"{value!r}); only epochs may be changed"
            )


def resolve_config(
    model: str | Module | None,
    dataset: Any,
    data_dir: Any,
    overrides: Mapping[str, Any],
    resume_info: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], str | None]:
    """The configuration of a run: the recipe, then the checkpoint's (when resuming), then
    the explicit arguments (``overrides``; None means not given).

    Returns
    -------
    cfg : dict
        Checked hyper-parameters with ``model``, ``dataset`` (``'custom'`` for a
        (train, test) pair) and ``data_dir``.
    model_name : str or None
        The registry name to build, None for a Module passed in.
    """
    from foldconv.models import MODELS, available_models  # noqa: PLC0415

    model_name = _norm_model(model) if isinstance(model, str) else None
    ds_name = _norm_dataset(dataset) if isinstance(dataset, str) else None
    if dataset is not None and not isinstance(dataset, str):
        if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
            raise TypeError(
                "dataset: expected a dataset name or a (train, test) pair of datasets, "
                f"got {type(dataset).__name__}"
            )
        ds_name = "custom"
    if resume_info is not None:
        cfg = dict(resume_info["config"])
        if model is None:
            if cfg["model"] not in MODELS:
                raise ValueError(
                    f"model: the checkpoint holds a custom model {cfg['model']!r}; pass "
                    "the same Module as model= to resume it"
                )
            model_name = cfg["model"]
        elif model_name is not None and model_name != cfg["model"]:
            raise ValueError(
                f"model: the checkpoint trains {cfg['model']!r}; cannot resume it as {model!r}"
            )
        if ds_name is None:
            ds_name = cfg["dataset"]
        elif ds_name != cfg["dataset"]:
            raise ValueError(
                f"dataset: the checkpoint trains on {cfg['dataset']!r}; cannot resume on "
                f"{ds_name!r}"
            )
        _check_resume_overrides(cfg, overrides)
        if data_dir is not None:
            cfg["data_dir"] = str(data_dir)
        if overrides.get("epochs") is not None:
            cfg["epochs"] = overrides["epochs"]
    else:
        if model is None:
            model_name = "lenet5"
        if ds_name is None:
            ds_name = "digits"
        if model_name is not None and model_name not in MODELS:
            raise ValueError(
                f"model: expected one of {', '.join(available_models())}, got {model!r}"
            )
        cfg = default_config(model_name or "", ds_name)
        cfg.update(seed=0, label_smoothing=0.0)
        for k, v in overrides.items():
            if v is not None:
                cfg[k] = v
        if str(cfg["optimizer"]).lower() in ("adam", "adamw") and overrides.get("lr") is None:
            cfg["lr"] = _ADAM_LR
        cfg["model"] = model_name or _module_name(model)
        cfg["dataset"] = ds_name
        cfg["data_dir"] = None if data_dir is None else str(data_dir)
    if cfg["scheduler"] is None:
        cfg["scheduler"] = "none"
    for key in ("optimizer", "scheduler"):
        if isinstance(cfg[key], str):
            cfg[key] = cfg[key].lower()
    _check_hparams(cfg)
    return cfg, model_name


def replan_schedule(scheduler: Any, name: str, total: int, optimizer: Any) -> None:
    """Fit a schedule planned over the total epochs to a new total (resume with more
    epochs): the learning rate becomes the schedule's closed-form value for the epochs
    already done under the new plan, and later steps follow the new plan."""
    s = scheduler
    if s is None or name == "plateau":
        return
    done = int(s.last_epoch)
    if name == "cosine":
        s.T_max = total
        lrs = [
            s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * done / total)) / 2
            for base in s.base_lrs
        ]
    elif name == "step":
        s.step_size = max(1, total // 3)
        lrs = [base * s.gamma ** (done // s.step_size) for base in s.base_lrs]
    else:
        s.milestones = sorted({max(1, total // 2), max(1, (3 * total) // 4)})
        lrs = [base * s.gamma ** sum(m <= done for m in s.milestones) for base in s.base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    s.last_lr = list(lrs)
