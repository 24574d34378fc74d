"""The training loop: :func:`train` and the run behind it.

A run is set up in steps (configuration, data, model, loaders, optimisation, position),
then trains epoch by epoch; after each epoch it evaluates, writes ``metrics.jsonl`` and the
``last`` (and when improved ``best``) checkpoint. Ctrl-C never lands inside an update: the
run rolls back to the last step boundary, saves, and raises :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from foldconv.allocator import keep_freed_memory_from_env
from foldconv.backend import get_array_module, to_device
from foldconv.nn.module import Module
from foldconv.trainer.checkpoints import (
    _generators,
    _resolve_checkpoint,
    _rng_states,
    _set_rng_states,
    _write_json,
    atomic_write_bytes,
    read_checkpoint,
    read_training_state,
    write_checkpoint,
)
from foldconv.trainer.config import (
    _check_device,
    _make_optimizer,
    _make_scheduler,
    _module_name,
    replan_schedule,
    resolve_config,
)
from foldconv.trainer.evaluation import _evaluate_loader
from foldconv.trainer.pipeline import (
    _batches,
    _build_transforms,
    _channel_stats,
    _DeviceFeeder,
    _target_size,
)
from foldconv.trainer.plots import write_plots


def _first_layer(model: Module) -> Module:
    """The module a Sequential chain (or a FeatureClassifier's features) runs first."""
    from foldconv.models._base import FeatureClassifier  # noqa: PLC0415
    from foldconv.nn.module import Sequential  # noqa: PLC0415

    while True:
        if isinstance(model, FeatureClassifier):
            model = model.features
        elif type(model) is Sequential and len(model):
            model = model[0]
        else:
            return model


@contextlib.contextmanager
def skip_input_grad(model: Module) -> Iterator[None]:
    """Within: the model's first layer, when a convolution, skips dL/dx in backward.

    The trainer never reads the gradient of the images; PyTorch does not compute it
    either (they do not require grad). For LeNet-5 that is conv1's 25 x 6 GEMM over
    the batch and its col2im. The flag is restored on exit, so the model the user
    holds keeps returning dL/dx from ``backward``.
    """
    from foldconv.nn.conv import _ConvNd  # noqa: PLC0415

    layer = _first_layer(model)
    if not isinstance(layer, _ConvNd) or not layer.needs_input_grad:
        yield
        return
    layer.needs_input_grad = False
    try:
        yield
    finally:
        layer.needs_input_grad = True


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint stays.

    Attributes
    ----------
    epoch, step : int
        1-based epoch and global optimizer step at which the loss was not finite.
    summary : dict
        The summary written to ``summary.json`` (``status`` = ``"diverged"``).
    """

    def __init__(self, message: str, epoch: int, step: int, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.summary = summary


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved first (``checkpoint``)."""

    def __init__(self, message: str, checkpoint: Path | None, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.summary = summary


# --------------------------------------------------------------------------------------------
# the training run
# --------------------------------------------------------------------------------------------
class _Interrupts:
    """SIGINT handling that never lands inside an update: during a critical section a
    Ctrl-C is remembered and raised as KeyboardInterrupt when the section ends.

    ``deferred`` (distributed runs): a Ctrl-C is only remembered; the ranks agree on it at
    the next step, so that all stop at the same step boundary.
    """

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.critical = False
        self.pending = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.critical or self.deferred:
            self.pending = True
            return
        raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                self._installed = False

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.pending and not self.deferred:
            self.pending = False
            raise KeyboardInterrupt


def train(
    model: str | Module | None = None,
    dataset: str | tuple[Any, Any] | None = None,
    data_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    scheduler: str | None = None,
    seed: int | None = None,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    augment: bool | None = None,
    label_smoothing: float | None = None,
    download: bool = False,
    verbose: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    distributed: bool = False,
    sync_batchnorm: bool = False,
) -> dict[str, Any]:
    """Train a classifier and write metrics, checkpoints and plots into ``out``.

    Every hyper-parameter left as None takes the recipe of :func:`default_config` for
    this model and dataset (or, when resuming, the checkpoint's value).

    Parameters
    ----------
    model : str or Module, default 'lenet5'
        A name from :mod:`foldconv.models` (built with the dataset's class and channel
        counts, initialised from ``seed``), or a Module mapping (N, C, H, W) to
        (N, num_classes) logits.
    dataset : str or (train, test), default 'digits'
        ``'digits'``, ``'mnist'``, ``'cifar10'`` or ``'folder'`` (see
        :func:`foldconv.data.load_dataset`), or two ArrayDatasets.
    data_dir : path, optional
        Where the dataset's files are.
    epochs, batch_size, lr, momentum, weight_decay : numbers, optional
    optimizer : 'sgd', 'adam' or 'adamw', optional
    scheduler : None/'none', 'step', 'multistep', 'cosine' or 'plateau', optional
        Stepped once per epoch ('plateau' on the test error).
    seed : int, default 0
        Seeds the weights, the data order, the augmentation and dropout.
    device : 'cpu', 'cuda' or 'cuda:<index>'
        'cuda' needs CuPy (``pip install "foldconv[cuda12]"`` or ``[cuda13]``). The data
        pipeline stays on the host; each batch is copied to the GPU once per step, and the
        loss and accuracy come back once per step. Checkpoints hold host arrays, so a run
        resumes on either device.
    out : path, optional
        Output directory; default ``runs/<model>-<dataset>-<timestamp>`` (the resumed
        directory when resuming).
    resume : path, optional
        A run directory (or its ``last.safetensors``) to continue exactly where it
        stopped. Only ``epochs`` may differ from the checkpoint's configuration: a new
        total re-plans a cosine/step/multistep schedule over it (the learning rate becomes
        the new plan's value for the epochs done).
    progress : bool
        Show a tqdm bar per epoch (loss, accuracy, images/s).
    augment : bool, optional
        Random crops (and flips for natural images) during training.
    label_smoothing : float, optional (default 0)
    download : bool
        Let mnist/cifar10 fetch missing files.
    verbose : bool
        Print a line after each epoch.
    on_step : callable, optional
        Called after every optimizer step with ``{'epoch', 'step', 'batch', 'loss',
        'accuracy', 'lr'}`` (epoch and step 1-based).
    distributed : bool
        Synchronous data-parallel training over the processes of the MPI job this process
        belongs to (start it with ``mpiexec -n N``; needs mpi4py: ``pip install
        "foldconv[mpi]"``). ``batch_size`` is the global batch and must be a multiple of
        N; each rank takes 1/N of every batch. Only rank 0 writes files and prints. See
        :mod:`foldconv.trainer.distributed`.
    sync_batchnorm : bool
        With ``distributed``: BatchNorm layers use the statistics of the global batch
        (forward and backward), as ``torch.nn.SyncBatchNorm``; default: each rank's own.

    Returns
    -------
    dict
        The summary also written to ``summary.json``: ``status``, ``test_accuracy``,
        ``best_test_accuracy``, ``best_epoch``, ``epochs``, ``steps``, ``wall_seconds``,
        ``images_per_second`` (all processes together), ``train_loss``,
        ``train_accuracy``, ``processes``, ``out``, ``checkpoints`` and ``config``.

    Raises
    ------
    TrainingDiverged
        When a loss is NaN or infinite (the message names the epoch and step).
    TrainingInterrupted
        On Ctrl-C, after saving ``last.safetensors``.
    foldconv.cuda.memory.GPUOutOfMemoryError
        When the GPU runs out of memory: the message names the layer, its input shape, the
        bytes asked for, the step, and the checkpoint that stays (none is written for the
        failed step; ``summary.json`` gets status ``"out_of_memory"``).
    foldconv.trainer.distributed.DistributedError
        With ``distributed``: mpi4py missing, or not started by an MPI launcher.
    """
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed: expected a bool, got {type(distributed).__name__}")
    if sync_batchnorm and not distributed:
        raise ValueError(
            "sync_batchnorm: only applies with distributed=True, got sync_batchnorm=True"
        )
    # Every step allocates the same arrays again: keep freed memory in the process rather
    # than fault it in page by page each step (foldconv/allocator.py; off with
    # FOLDCONV_KEEP_FREED_MEMORY=0).
    keep_freed_memory_from_env()

    def build(dist: Any = None) -> _Run:
        return _Run(
            model=model,
            dataset=dataset,
            data_dir=data_dir,
            overrides=dict(
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                optimizer=optimizer,
                scheduler=scheduler,
                seed=seed,
                augment=augment,
                label_smoothing=label_smoothing,
            ),
            device=device,
            out=out,
            resume=resume,
            progress=progress,
            download=download,
            verbose=verbose,
            on_step=on_step,
            dist=dist,
            sync_batchnorm=bool(sync_batchnorm),
        )

    if not distributed:
        return build().run()
    return _train_distributed(build, device)


def _train_distributed(build: Callable[[Any], _Run], device: Any) -> dict[str, Any]:
    """Set up on every rank, agree that it worked, then train; an error on a rank past
    set-up aborts the job with a message naming the rank (never a hang)."""
    from foldconv.trainer import distributed as D  # noqa: PLC0415

    dist = D.init_distributed(device if isinstance(device, str) else "cpu")
    watcher = D.Watcher(dist.rank, dist.size)
    try:
        run = D.agree(dist, lambda: build(dist))
    except BaseException:
        watcher.release()
        raise
    try:
        D.check_same_run(dist, run.cfg, [p.data.shape for p in run.params])
    except BaseException:
        watcher.release()
        raise
    try:
        run.join()
        summary = run.run()
    except (TrainingDiverged, TrainingInterrupted):
        # Decided on values every rank shares: every rank raises the same.
        watcher.release()
        raise
    except BaseException as e:
        D.fail(dist, watcher, e)
        raise
    watcher.release()
    return summary


class _Run:
    """One call of :func:`train`: set-up, the loop, checkpoints and reports."""

    def __init__(
        self,
        *,
        model: str | Module | None,
        dataset: str | tuple[Any, Any] | None,
        data_dir: Any,
        overrides: dict[str, Any],
        device: str,
        out: Any,
        resume: Any,
        progress: bool,
        download: bool,
        verbose: bool,
        on_step: Callable[[dict[str, Any]], None] | None,
        dist: Any = None,
        sync_batchnorm: bool = False,
    ) -> None:
        self.dist = dist  # a distributed.Communicator, or None for one process
        self.rank = 0 if dist is None else dist.rank
        self.world = 1 if dist is None else dist.size
        self.is_root = self.rank == 0
        self.sync_batchnorm = sync_batchnorm
        self.device = _check_device(device)
        if self.device.startswith("cuda:"):  # the run's arrays and kernels on that GPU
            from foldconv.backend import cuda_module  # noqa: PLC0415

            cuda_module(self.device).cuda.Device(int(self.device[5:])).use()
        self.feed = _DeviceFeeder(self.device)
        self.progress = bool(progress)
        self.verbose = bool(verbose)
        self.on_step = on_step
        if on_step is not None and not callable(on_step):
            raise TypeError(f"on_step: expected a callable, got {type(on_step).__name__}")
        if model is not None and not isinstance(model, (str, Module)):
            raise TypeError(f"model: expected a model name or a Module, got {type(model).__name__}")
        resume_info: dict[str, Any] | None = None
        resume_weights: dict[str, np.ndarray] | None = None
        if resume is not None:
            self.resume_path = _resolve_checkpoint(resume, "last")
            resume_weights, resume_info = read_checkpoint(self.resume_path)
        self.cfg, model_name = resolve_config(model, dataset, data_dir, overrides, resume_info)
        self.cfg["device"] = self.device
        if self.cfg["batch_size"] % self.world:
            raise ValueError(
                f"batch_size: expected a multiple of the {self.world} processes (it is the "
                f"global batch; each process takes batch_size / {self.world}), got "
                f"{self.cfg['batch_size']}"
            )
        self._load_data(dataset, download)
        self._build_model(model, model_name, resume_info)
        self._build_loaders(resume_info)
        self._build_optimisation()
        self._start_position(resume_weights, resume_info, out)
        self.interrupts = _Interrupts(deferred=dist is not None)

    # -- set-up, in the constructor's order ---------------------------------------------------
    def _load_data(self, dataset: Any, download: bool) -> None:
        """The training and test sets, their classes and image shape."""
        ds_name = self.cfg["dataset"]
        if ds_name == "custom":
            if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
                raise ValueError(
                    "dataset: this checkpoint was trained on custom datasets; pass the same "
                    "(train, test) pair again to resume"
                )
            train_ds, test_ds = dataset
        else:
            from foldconv.data import load_dataset  # noqa: PLC0415

            train_ds, test_ds = load_dataset(ds_name, self.cfg["data_dir"], download=download)
        if len(train_ds) == 0:
            raise ValueError("dataset: the training set is empty")
        self.train_ds, self.test_ds = train_ds, test_ds
        classes = list(getattr(train_ds, "classes", None) or [])
        self.num_classes = len(classes) or int(np.max(train_ds.labels)) + 1
        self.classes = classes or [str(i) for i in range(self.num_classes)]
        self.image_chw = tuple(int(s) for s in train_ds.images.shape[1:])

    def _build_model(
        self, model: str | Module | None, model_name: str | None, resume_info: Any
    ) -> None:
        """The Module passed in, or the named one built and initialised from the seed."""
        cfg = self.cfg
        if isinstance(model, Module):
            self.model = model
            if resume_info is not None and _module_name(model) != cfg["model"]:
                raise ValueError(
                    f"model: the checkpoint trains {cfg['model']!r}; cannot resume it as "
                    f"{_module_name(model)!r}"
                )
        else:
            from foldconv.models import get_model  # noqa: PLC0415

            init_rng = np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=(1,)))
            kwargs = {"in_channels": self.image_chw[0]}
            if resume_info is not None:
                kwargs = dict(resume_info.get("arch_kwargs") or kwargs)
            self.model = get_model(model_name, self.num_classes, rng=init_rng, **kwargs)
        if self.device != "cpu":
            self.model.to(self.device)

    def _build_loaders(self, resume_info: Any) -> None:
        """Transforms (normalised with the training set's statistics, or the checkpoint's),
        the two loaders, and the description every checkpoint carries."""
        cfg, image_chw = self.cfg, self.image_chw
        target_hw = _target_size(self.model, image_chw[1:])
        if resume_info is not None:
            mean, std = resume_info["mean"], resume_info["std"]
        else:
            mean, std = _channel_stats(self.train_ds.images)
        self.train_tf, self.eval_tf = _build_transforms(
            cfg["dataset"], image_chw[1:], target_hw, mean, std, bool(cfg["augment"])
        )
        from foldconv.data import DataLoader  # noqa: PLC0415

        self.train_loader = DataLoader(
            self.train_ds,
            batch_size=cfg["batch_size"],
            shuffle=True,
            drop_last=False,
            seed=cfg["seed"],
            transform=self.train_tf,
        )
        test_ds = self.test_ds
        if self.dist is not None:  # each rank evaluates every world-th test image
            from foldconv.trainer.distributed import ShardDataset  # noqa: PLC0415

            test_ds = ShardDataset(test_ds, self.rank, self.world)
        self.test_loader = DataLoader(
            test_ds,
            batch_size=max(256, cfg["batch_size"]),
            shuffle=False,
            transform=self.eval_tf,
        )
        self.info_base = {
            "model": cfg["model"],
            "dataset": cfg["dataset"],
            "num_classes": self.num_classes,
            "classes": self.classes,
            "in_channels": image_chw[0],
            "image_hw": list(image_chw[1:]),
            "input_hw": list(target_hw),
            "mean": list(mean),
            "std": list(std),
            "arch_kwargs": dict(getattr(self.model, "arch_kwargs", None) or {}),
        }

    def _build_optimisation(self) -> None:
        cfg = self.cfg
        self.params = list(self.model.parameters())
        if not self.params:
            raise ValueError("model: has no parameters to train")
        self.optimizer = _make_optimizer(cfg["optimizer"], self.params, cfg)
        self.scheduler = _make_scheduler(cfg["scheduler"], self.optimizer, cfg["epochs"])
        from foldconv.nn import CrossEntropyLoss  # noqa: PLC0415

        self.criterion = CrossEntropyLoss(label_smoothing=float(cfg["label_smoothing"]))

    def _start_position(self, resume_weights: Any, resume_info: Any, out: Any) -> None:
        """Position and history: zero, or the checkpoint's; and the output directory."""
        self.epoch = 0  # 0-based epoch in progress
        self.batch = 0  # batches completed in it
        self.step = 0  # optimizer steps completed
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0
        self.best_epoch = 0
        self.elapsed = 0.0  # wall seconds of earlier sessions
        self.train_seconds = 0.0
        self.train_images = 0
        if resume_info is not None:
            self._restore(resume_weights, resume_info)
            default_out = self.resume_path.parent
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            default_out = Path("runs") / f"{self.cfg['model']}-{self.cfg['dataset']}-{stamp}"
        self.out = Path(out) if out is not None else default_out
        if self.is_root:  # distributed: rank 0's directory, see join()
            self.out.mkdir(parents=True, exist_ok=True)
        self.cfg["out"] = str(self.out)
        self.last_test_acc: float | None = (
            self.history[-1]["test_accuracy"] if self.history else None
        )

    def join(self) -> None:
        """Distributed, once every rank is set up: rank 0's output directory, parameters
        and buffers on every rank; BatchNorm synchronised if asked; the gradient buckets."""
        from foldconv.trainer import distributed as D  # noqa: PLC0415

        d = self.dist
        self.out = Path(d.bcast(str(self.out)))
        self.cfg["out"] = str(self.out)
        d.bcast_arrays([p.data for p in self.params] + self._buffers())
        D.decorrelate_generators(list(_generators(self.model).values()), d.rank)
        self._unsync_bn = D.convert_sync_batchnorm(self.model, d) if self.sync_batchnorm else None
        self.buckets = D.GradientBuckets(self.params, d)

    def _buffers(self) -> list[Any]:
        return [
            b for _, m in self.model.named_modules() for b in m._buffers.values() if b is not None
        ]

    # -- resume -----------------------------------------------------------------------------
    def _restore(self, weights: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> None:
        from foldconv.optim import unflatten_state  # noqa: PLC0415

        if info["num_classes"] != self.info_base["num_classes"]:
            raise ValueError(
                f"checkpoint: {info['num_classes']} classes, but the dataset has "
                f"{self.info_base['num_classes']}"
            )
        self.model.load_state_dict(weights)
        arrays, opt_meta, state = read_training_state(self.resume_path, info)
        self.optimizer.load_state_dict(unflatten_state(arrays, opt_meta, prefix="optimizer."))
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(self.model, state["rng"])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.step = int(state["step"])
        self.partial = dict(state["partial"])
        self.history = list(state["history"])
        self.best_acc = float(state["best_accuracy"])
        self.best_epoch = int(state["best_epoch"])
        self.elapsed = float(state["elapsed"])
        self.train_seconds = float(state["train_seconds"])
        self.train_images = int(state["train_images"])
        if int(info["config"]["epochs"]) != int(self.cfg["epochs"]):
            replan_schedule(
                self.scheduler, self.cfg["scheduler"], int(self.cfg["epochs"]), self.optimizer
            )

    # -- saving -----------------------------------------------------------------------------
    def _save(self, tag: str) -> Path:
        """Write ``<tag>.state-<id>.safetensors`` then ``<tag>.safetensors`` (atomically)."""
        trainer_state = {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "partial": self.partial,
            "history": self.history,
            "best_accuracy": self.best_acc,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed + (time.perf_counter() - self.t0),
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": _rng_states(self.model),
        }
        info = dict(self.info_base)
        info.update(
            epoch=len(self.history),
            step=self.step,
            test_accuracy=self.last_test_acc,
            config=self.cfg,
        )
        return write_checkpoint(self.out, tag, self.model, self.optimizer, trainer_state, info)

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_bytes(self.out / "metrics.jsonl", text.encode())

    def _summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        wall = self.elapsed + (time.perf_counter() - self.t0)
        summary = {
            "status": status,
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "best_test_accuracy": self.best_acc if self.best_acc >= 0 else None,
            "best_epoch": self.best_epoch or None,
            "train_loss": last.get("train_loss"),
            "train_accuracy": last.get("train_accuracy"),
            "epochs": len(self.history),
            "steps": self.step,
            "wall_seconds": wall,
            "train_seconds": self.train_seconds,
            "images_per_second": (
                self.train_images / self.train_seconds if self.train_seconds > 0 else None
            ),
            "num_parameters": int(sum(p.size for p in self.params)),
            "processes": self.world,
            "out": str(self.out),
            "checkpoints": {
                tag: str(self.out / f"{tag}.safetensors")
                for tag in ("best", "last")
                if (self.out / f"{tag}.safetensors").exists()
            },
            "classes": self.info_base["classes"],
            "config": self.cfg,
        }
        if message:
            summary["message"] = message
        return summary

    def _finish_files(self, status: str, message: str | None = None) -> dict[str, Any]:
        summary = self._summary(status, message)
        if not self.is_root:
            return summary
        _write_json(self.out / "summary.json", summary)
        try:
            write_plots(self.out, self.history, self.model)
        except Exception as e:  # a plotting failure must not lose the run  # noqa: BLE001
            if self.verbose:
                print(f"foldconv: warning: could not draw plots: {e}")
        return summary

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.t0 = time.perf_counter()
        self.interrupts.install()
        try:
            return self._loop()
        finally:
            self.interrupts.uninstall()
            if getattr(self, "_unsync_bn", None) is not None:
                self._unsync_bn()

    def _snapshot_targets(self) -> None:
        """What a step's snapshot copies: the model's random generators and buffers, found
        once an epoch (walking the modules every step cost ~0.08 ms, 2% of a LeNet-5 step)."""
        self._gens = _generators(self.model)
        self._buffer_slots = [
            (m, name) for _, m in self.model.named_modules() for name in m._buffers
        ]

    def _snapshot(self) -> tuple[dict[str, Any], list[tuple[Module, str, Any]]]:
        if not hasattr(self, "_gens"):
            self._snapshot_targets()
        rng = _rng_states(self.model, self._gens)
        buffers = []
        for m, name in self._buffer_slots:
            b = m._buffers.get(name)
            if b is not None:
                buffers.append((m, name, b.copy()))
        return rng, buffers

    @staticmethod
    def _rollback(model: Module, snap: tuple[dict[str, Any], list[Any]]) -> None:
        rng, buffers = snap
        _set_rng_states(model, rng)
        for m, name, value in buffers:
            m._buffers[name][...] = value

    def _loop(self) -> dict[str, Any]:
        from tqdm.auto import tqdm  # noqa: PLC0415

        cfg = self.cfg
        model, opt = self.model, self.optimizer
        n_batches = len(self.train_loader)
        snap = None
        bar = None
        try:
            while self.epoch < cfg["epochs"]:
                e = self.epoch
                model.train()
                self._snapshot_targets()
                bar = tqdm(
                    total=n_batches,
                    initial=self.batch,
                    desc=f"epoch {e + 1}/{cfg['epochs']}",
                    unit="batch",
                    disable=not (self.progress and self.is_root),
                    leave=False,
                    dynamic_ncols=True,
                )
                lr = float(opt.param_groups[0]["lr"])
                batches = _batches(self.train_loader, e, self.batch)
                while True:
                    # Images/s counts the data pipeline (augmentation) too.
                    t_batch = time.perf_counter()
                    try:
                        x, y = next(batches)
                    except StopIteration:
                        break
                    snap = self._snapshot()
                    loss, correct, n = self._forward_backward(x, y, e, bar)
                    with self.interrupts.section():
                        opt.step()
                        snap = None
                        self.step += 1
                        self.batch += 1
                        dt = time.perf_counter() - t_batch
                        p = self.partial
                        p["loss_sum"] += loss * n
                        p["correct"] += correct
                        p["seen"] += n
                        p["seconds"] += dt
                        self.train_seconds += dt
                        self.train_images += n
                    bar.update(1)
                    if self.progress:
                        bar.set_postfix(
                            loss=f"{p['loss_sum'] / p['seen']:.4f}",
                            acc=f"{100 * p['correct'] / p['seen']:.2f}%",
                            img_s=f"{p['seen'] / max(p['seconds'], 1e-9):.0f}",
                            refresh=False,
                        )
                    if self.on_step is not None:
                        self.on_step(
                            {
                                "epoch": e + 1,
                                "step": self.step,
                                "batch": self.batch,
                                "loss": loss,
                                "accuracy": correct / n,
                                "lr": lr,
                            }
                        )
                bar.close()
                bar = None
                test_loss, test_acc = self._evaluate()
                with self.interrupts.section():
                    self._end_epoch(e, lr, test_loss, test_acc)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            if snap is not None:
                self._rollback(model, snap)
            raise self._interrupted() from None
        except Exception as err:
            from foldconv.cuda.memory import is_gpu_oom  # noqa: PLC0415

            if not is_gpu_oom(err):
                raise
            if bar is not None:
                bar.close()
            if snap is not None:
                self._rollback(model, snap)
            oom = self._out_of_memory(err)
            if oom is err:
                raise
            raise oom from err
        return self._finish_files("completed")

    def _out_of_memory(self, err: BaseException) -> Any:
        """The GPUOutOfMemoryError to raise for ``err``, saying where training stopped and
        which checkpoint stays (none is written: the files on disk are those of the last
        completed epoch); ``summary.json`` records the stop."""
        from foldconv.cuda.memory import GPUOutOfMemoryError, _requested_bytes  # noqa: PLC0415

        if not isinstance(err, GPUOutOfMemoryError):  # outside every Module call
            err = GPUOutOfMemoryError(
                f"outside the model's layers (the batch copy, the metrics or the "
                f"optimizer's update): {err}",
                requested_bytes=_requested_bytes(err),
            )
        kept = self.out / "last.safetensors"
        keep = (
            f"the last good checkpoint is {kept}"
            if kept.exists()
            else "no checkpoint was written yet (none completed an epoch)"
        )
        n = len(self.train_loader)
        if self.batch < n:
            where = (
                f"at epoch {self.epoch + 1}, step {self.step + 1} (batch {self.batch + 1} of {n})"
            )
        else:  # every batch done: in the evaluation that ends the epoch
            where = f"while evaluating epoch {self.epoch + 1} (after step {self.step})"
        err.context = f"training stopped {where}; {keep}"
        err._refresh()
        if self.is_root:
            self._finish_files("out_of_memory", str(err))
        return err

    def _forward_backward(self, x: Any, y: Any, e: int, bar: Any) -> tuple[float, int, int]:
        """Forward, loss and backward of one batch: (mean loss, correct, images)."""
        if self.dist is not None:
            return self._forward_backward_distributed(x, y, e, bar)
        model, crit = self.model, self.criterion
        if self.device == "cpu":
            logits = model(x)
            loss = float(crit(logits, y))
            if not math.isfinite(loss):
                self._diverged(loss, e, bar)
            self.optimizer.zero_grad()
            with skip_input_grad(model):
                model.backward(crit.backward())
            correct = int((logits.argmax(axis=1) == y).sum())
            return loss, correct, len(y)
        # On the GPU: one copy of the batch in, the whole step queued, then one copy of
        # (loss, correct) out, the step's only synchronisation. A non-finite loss is seen
        # after backward, still before the update (the step stops in _diverged).
        xd, yd = self.feed(x, "x"), self.feed(y, "y")
        logits = model(xd)
        loss_d = crit(logits, yd)
        self.optimizer.zero_grad()
        with skip_input_grad(model):
            model.backward(crit.backward())
        xp = get_array_module(logits)
        correct_d = (logits.argmax(axis=1) == yd).sum()
        loss_h, correct_h = to_device(xp.stack([loss_d.astype(xp.float64), correct_d]), "cpu")
        loss = float(loss_h)
        if not math.isfinite(loss):
            self._diverged(loss, e, bar)
        return loss, int(correct_h), len(y)

    def _forward_backward_distributed(
        self, x: Any, y: Any, e: int, bar: Any
    ) -> tuple[float, int, int]:
        """This rank's shard of the global batch; the loss, the accuracy and a pending
        Ctrl-C agreed on by one small allreduce; the loss gradient scaled by the shard's
        share of the batch, so that the bucketed sum is the gradient of the mean loss over
        the whole batch."""
        from foldconv.trainer.distributed import shard  # noqa: PLC0415

        d, model, crit = self.dist, self.model, self.criterion
        rows = shard(len(y), d.rank, d.size)
        xs, ys = x[rows], y[rows]
        n_local, m = len(ys), len(y)
        self.optimizer.zero_grad()
        logits, loss_local, correct = None, 0.0, 0
        # A rank may get no image of a small last batch; with synchronised BatchNorm it
        # still takes part in the layers' collectives, with an empty shard.
        if n_local or self.sync_batchnorm:
            xd, yd = self.feed(xs, "x"), self.feed(ys, "y")
            logits = model(xd)
            if n_local:
                loss_local = float(crit(logits, yd))
                correct = int((logits.argmax(axis=1) == yd).sum())
        totals = d.allreduce_values(
            [loss_local * n_local, correct, n_local, float(self.interrupts.pending)]
        )
        if totals[3] > 0:  # Ctrl-C on some rank: every rank stops before this update
            self.interrupts.pending = False
            raise KeyboardInterrupt
        loss = float(totals[0] / m)
        if not math.isfinite(loss):
            self._diverged(loss, e, bar)
        if logits is not None:
            if n_local:
                grad = crit.backward(n_local / m)
            else:
                grad = get_array_module(logits).zeros_like(logits)
            with skip_input_grad(model):
                model.backward(grad)
        self.buckets.allreduce()
        return loss, int(totals[1]), m

    def _evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the test set; distributed: split over the ranks, with
        rank 0's BatchNorm running statistics on every rank first."""
        if self.dist is None:
            loss, acc, _ = _evaluate_loader(
                self.model, self.test_loader, self.device, self.info_base["num_classes"]
            )
            return loss, acc
        d = self.dist
        d.bcast_arrays(self._buffers())
        loss, acc, confusion = _evaluate_loader(
            self.model, self.test_loader, self.device, self.info_base["num_classes"]
        )
        seen = int(confusion.sum())
        tot = d.allreduce_values([loss * seen if seen else 0.0, np.trace(confusion), seen])
        if tot[2] == 0:
            return float("nan"), float("nan")
        return float(tot[0] / tot[2]), float(tot[1] / tot[2])

    def _end_epoch(self, e: int, lr: float, test_loss: float, test_acc: float) -> None:
        p = self.partial
        record = {
            "epoch": e + 1,
            "step": self.step,
            "train_loss": p["loss_sum"] / max(p["seen"], 1),
            "train_accuracy": p["correct"] / max(p["seen"], 1),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": lr,
            "epoch_seconds": p["seconds"],
            "images_per_second": p["seen"] / p["seconds"] if p["seconds"] > 0 else None,
        }
        self.history.append(record)
        self.last_test_acc = test_acc
        if self.scheduler is not None:
            if self.cfg["scheduler"] == "plateau":
                self.scheduler.step(1.0 - test_acc)
            else:
                self.scheduler.step()
        self.epoch = e + 1
        self.batch = 0
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        improved = test_acc > self.best_acc
        if improved:
            self.best_acc = test_acc
            self.best_epoch = e + 1
        if self.is_root:
            self._write_metrics()
            self._save("last")
            if improved:
                self._save("best")
        if self.verbose and self.is_root:
            ips = record["images_per_second"]
            print(
                f"epoch {e + 1}/{self.cfg['epochs']}: train loss {record['train_loss']:.4f}, "
                f"train acc {100 * record['train_accuracy']:.2f}%, test loss {test_loss:.4f}, "
                f"test acc {100 * test_acc:.2f}% ({record['epoch_seconds']:.1f} s, "
                f"{ips or 0:.0f} img/s)",
                flush=True,
            )

    def _diverged(self, loss: float, e: int, bar: Any) -> None:
        if bar is not None:
            bar.close()
        step = self.step + 1
        kept = self.out / "last.safetensors"
        keep = (
            f"the last good checkpoint is {kept}"
            if kept.exists()
            else "no checkpoint was written yet (none completed an epoch)"
        )
        message = (
            f"loss is {loss} at epoch {e + 1}, step {step} (batch {self.batch + 1} of "
            f"{len(self.train_loader)}); training stopped, {keep}. Try a smaller --lr."
        )
        summary = self._finish_files("diverged", message)
        raise TrainingDiverged(message, e + 1, step, summary)

    def _interrupted(self) -> TrainingInterrupted:
        # Saving must not itself be cut short by a second Ctrl-C.
        with self.interrupts.section():
            path = self._save("last") if self.is_root else self.out / "last.safetensors"
            summary = self._finish_files("interrupted")
        message = (
            f"interrupted at epoch {self.epoch + 1}, step {self.step} (batch {self.batch} of "
            f"{len(self.train_loader)} done); checkpoint saved to {path}; continue with "
            f"`foldconv train --resume {self.out}`"
        )
        summary["message"] = message
        return TrainingInterrupted(message, path, summary)
