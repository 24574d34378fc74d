"""Training, evaluation and prediction: the engine behind ``foldconv train``.

:func:`train` builds a model and its data pipeline from names (or takes a model and
datasets), trains it with a progress bar, and writes into its output directory:

- ``metrics.jsonl``: one JSON record per epoch (losses, accuracies, learning rate, time);
- ``summary.json``: ``test_accuracy`` (a fraction), ``epochs``, ``wall_seconds``,
  ``images_per_second`` and the full ``config``;
- ``best.safetensors`` and ``last.safetensors``: the weights under PyTorch's names
  (``torch.nn.Module.load_state_dict(safetensors.torch.load_file(path))`` reads them), with
  the checkpoint's description as JSON in the file's metadata under ``"foldconv"``;
- ``best.state-<id>.safetensors`` and ``last.state-<id>.safetensors``: what resuming needs
  besides the weights (optimizer arrays, and as JSON metadata the optimizer's groups, the
  scheduler, every random generator's state, the position in the epoch and the history);
  the weights file names its state file;
- ``loss.png``, ``accuracy.png`` and ``filters.png`` (the first convolution's filters, as
  in Figure 3 of the AlexNet paper).

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the old one with :func:`os.replace`. A state file gets a fresh
name and is written before the weights file that points at it, so a kill at any moment
leaves a previous, consistent checkpoint.

Exact resumption: the data order of epoch ``e`` and the augmentation of its batch ``b``
depend only on ``(seed, e, b)`` (see :class:`foldconv.data.DataLoader`), and the
checkpoint holds the weights, buffers, optimizer and scheduler state and the state of the
model's random generators (dropout) at a step boundary, so a resumed run computes the same
losses, step for step, as an uninterrupted one.

The package has one concern per module: :mod:`~foldconv.trainer.config` (recipes and
configuration), :mod:`~foldconv.trainer.pipeline` (data), :mod:`~foldconv.trainer.loop`
(the training loop), :mod:`~foldconv.trainer.checkpoints` (checkpoints and atomic IO),
:mod:`~foldconv.trainer.plots` and :mod:`~foldconv.trainer.evaluation` (evaluation and
prediction). Every name below is importable from ``foldconv.trainer``.
"""

# Private helpers are re-exported too, for the code that imported them from the old module.
# ruff: noqa: F401
from __future__ import annotations

from foldconv.trainer.checkpoints import (
    CHECKPOINT_FORMAT,
    STATE_FORMAT,
    _export_array,
    _read_safetensors,
    _resolve_checkpoint,
    _rng_states,
    _set_rng_states,
    _write_json,
    atomic_write_bytes,
    load_checkpoint,
    read_checkpoint,
    read_training_state,
    write_checkpoint,
)
from foldconv.trainer.config import (
    _ADAM_LR,
    _MODEL_RECIPES,
    _PAIR_RECIPES,
    OPTIMIZERS,
    SCHEDULERS,
    _check_device,
    _check_hparams,
    _is_int,
    _is_real,
    _make_optimizer,
    _make_scheduler,
    default_config,
    replan_schedule,
    resolve_config,
)
from foldconv.trainer.evaluation import _evaluate_loader, evaluate, predict
from foldconv.trainer.loop import TrainingDiverged, TrainingInterrupted, _Interrupts, _Run, train
from foldconv.trainer.pipeline import _batches, _build_transforms, _channel_stats, _target_size
from foldconv.trainer.plots import filter_mosaic, write_plots

__all__ = [
    "CHECKPOINT_FORMAT",
    "OPTIMIZERS",
    "SCHEDULERS",
    "STATE_FORMAT",
    "TrainingDiverged",
    "TrainingInterrupted",
    "atomic_write_bytes",
    "default_config",
    "evaluate",
    "filter_mosaic",
    "load_checkpoint",
    "predict",
    "read_checkpoint",
    "train",
    "write_plots",
]
