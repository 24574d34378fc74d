"""The ``foldconv`` command: train, evaluate, predict, demo, bench, summary, gradcheck.

``foldconv train`` with no arguments trains LeNet-5 on the bundled 8x8 digits; see
``foldconv <command> --help``. User errors (bad values, missing files) print
``foldconv: error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PROG = "foldconv"

EXIT_OK = 0
EXIT_FAILED = 1  # training diverged, a check failed
EXIT_USAGE = 2  # bad arguments or input (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def _number(kind: type, positive: bool) -> Callable[[str], Any]:
    """An argparse type: a finite int or float, > 0 (positive) or >= 0."""
    what = ("a positive " if positive else "a non-negative ") + ("int" if kind is int else "number")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = value > 0 if positive else value >= 0  # False for NaN too
        if not ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


_positive_int = _number(int, positive=True)
_nonneg_int = _number(int, positive=False)
_positive_float = _number(float, positive=True)
_nonneg_float = _number(float, positive=False)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    from foldconv.models import available_models  # noqa: PLC0415
    from foldconv.trainer import OPTIMIZERS, SCHEDULERS  # noqa: PLC0415

    p = sub.add_parser(
        "train",
        help="train a model (default: LeNet-5 on the bundled digits)",
        description=(
            "Train a CNN. Hyper-parameters not given come from the recipe for the model and "
            "dataset (or, with --resume, from the checkpoint). Writes metrics.jsonl, "
            "summary.json, best/last checkpoints (safetensors, PyTorch names) and PNG plots "
            "into --out."
        ),
    )
    p.add_argument("--model", default=None, choices=available_models(), help="default: lenet5")
    p.add_argument(
        "--dataset",
        default=None,
        choices=["digits", "mnist", "cifar10", "folder"],
        help="default: digits (scikit-learn's 8x8 digits, bundled)",
    )
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--download", action="store_true", help="fetch missing mnist/cifar10 files")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    p.add_argument("--momentum", type=_nonneg_float, default=None)
    p.add_argument("--weight-decay", type=_nonneg_float, default=None)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None, help="per-epoch lr schedule")
    p.add_argument("--label-smoothing", type=_nonneg_float, default=None)
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None)
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="default: 0")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda needs CuPy)")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/<model>-<dataset>-<time>)"
    )
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the processes of `mpiexec -n N` (--batch-size is global)",
    )
    p.add_argument(
        "--sync-batchnorm",
        action="store_true",
        help="with --distributed: BatchNorm statistics over the global batch",
    )
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from foldconv.trainer import TrainingDiverged, TrainingInterrupted, train  # noqa: PLC0415
    from foldconv.trainer.distributed import (  # noqa: PLC0415
        DistributedError,
        current_rank,
        launched_world_size,
    )

    if not args.distributed and launched_world_size() > 1:
        print(
            f"{PROG}: warning: started by an MPI launcher with {launched_world_size()} "
            "processes but without --distributed: each process trains on its own (add "
            "--distributed to train one model together)",
            file=sys.stderr,
        )
    try:
        summary = train(
            model=args.model,
            dataset=args.dataset,
            data_dir=args.data_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            optimizer=args.optimizer,
            scheduler=args.scheduler,
            seed=args.seed,
            device=args.device,
            out=args.out,
            resume=args.resume,
            progress=not args.no_progress,
            augment=args.augment,
            label_smoothing=args.label_smoothing,
            download=args.download,
            distributed=args.distributed,
            sync_batchnorm=args.sync_batchnorm,
        )
    except (ValueError, TypeError, OSError, DistributedError) as e:
        # Distributed: every rank meets the same error; rank 0 says it.
        if current_rank() == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as e:
        if current_rank() == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingInterrupted as e:
        if current_rank() == 0:
            print(f"\n{PROG}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if current_rank() != 0:
        return EXIT_OK
    print(
        f"test accuracy {100 * summary['test_accuracy']:.2f}% after {summary['epochs']} "
        f"epochs (best {100 * summary['best_test_accuracy']:.2f}% at epoch "
        f"{summary['best_epoch']}) in {summary['wall_seconds']:.1f} s, "
        f"{summary['images_per_second'] or 0:.0f} images/s; results in {summary['out']}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# evaluate / predict
# --------------------------------------------------------------------------------------------
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and confusion matrix of a checkpoint on its test set",
        description="Evaluate CHECKPOINT (a .safetensors file or a run directory, whose "
        "best.safetensors is used) on the test split of the dataset it was trained on.",
    )
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None, help="default: the directory used in training")
    p.add_argument("--dataset", default=None, choices=["digits", "mnist", "cifar10", "folder"])
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda needs CuPy)")
    p.set_defaults(handler=_cmd_evaluate)


def format_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as text: rows are true classes, columns predictions."""
    labels = [str(c)[:10] for c in classes]
    width = max([len(x) for x in labels] + [len(str(int(v))) for row in confusion for v in row])
    head = " " * (max(len(x) for x in labels) + 2) + " ".join(x.rjust(width) for x in labels)
    lines = ["confusion matrix (rows: true class, columns: predicted class)", head]
    pad = max(len(x) for x in labels)
    for name, row in zip(labels, confusion, strict=True):
        lines.append(name.rjust(pad) + "  " + " ".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from foldconv.trainer import evaluate  # noqa: PLC0415

    r = evaluate(
        args.checkpoint,
        data_dir=args.data_dir,
        dataset=args.dataset,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"checkpoint: {r['checkpoint']}")
    print(f"accuracy: {100 * r['accuracy']:.2f}% ({round(r['accuracy'] * r['n'])}/{r['n']})")
    print(f"loss: {r['loss']:.4f}")
    print(format_confusion(r["confusion"], r["classes"]))
    return EXIT_OK


def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="top-5 classes of image files",
        description="Classify image files with CHECKPOINT (a .safetensors file or a run "
        "directory). Images are converted to the training images' channels and size.",
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=_positive_int, default=5, help="how many classes (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda needs CuPy)")
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from foldconv.trainer import predict  # noqa: PLC0415

    results = predict(args.checkpoint, args.images, k=args.top, device=args.device)
    for path, top in zip(args.images, results, strict=True):
        print(f"{path}:")
        for rank, (name, prob) in enumerate(top, 1):
            print(f"  {rank}. {name:<12} {prob:.4f}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="a small demonstration of the convolution and its hand-written gradients",
        description="Run one 2-D convolution forward, then check its three gradients "
        "(input, weight, bias) against float64 central finite differences.",
    )
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.set_defaults(handler=_cmd_demo)


def _finite_difference(f: Callable[[], float], a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def _cmd_demo(args: argparse.Namespace) -> int:
    from foldconv.functional import conv2d, conv_backward  # noqa: PLC0415

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((2, 3, 7, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    opts = dict(stride=2, padding=1)
    y = conv2d(x, w, b, **opts)
    print("conv2d: x (2, 3, 7, 7) * w (4, 3, 3, 3) + b (4,), stride 2, padding 1")
    print(f"forward output shape: {tuple(y.shape)}")
    # L = sum(g * y) for a fixed random g, so dL/dy = g.
    g = rng.standard_normal(y.shape)
    dx, dw, db = conv_backward(g, x, w, **opts)

    def loss() -> float:
        return float(np.sum(g * conv2d(x, w, b, **opts)))

    ok = True
    print("gradient check against float64 central finite differences (eps = 1e-6):")
    for name, analytic, array in (("dL/dx", dx, x), ("dL/dw", dw, w), ("dL/db", db, b)):
        numeric = _finite_difference(loss, array)
        err = float(np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1e-300))
        passed = err < 1e-6
        ok &= passed
        print(
            f"  {name:6} shape {str(tuple(analytic.shape)):14} relative error {err:.2e}  "
            f"{'ok' if passed else 'FAILED'}"
        )
    print("all gradients match" if ok else "gradient check FAILED")
    return EXIT_OK if ok else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
def _add_bench(sub: Any) -> None:
    from foldconv.benchmark import add_arguments  # noqa: PLC0415

    p = sub.add_parser(
        "bench",
        help="time the convolution benchmark suite (or one layer) against PyTorch",
        description="Forward and forward+backward of each layer, ours and PyTorch's (when "
        "installed) interleaved in one run: medians, GFLOP/s and ratios ours/PyTorch.",
    )
    add_arguments(p)
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from foldconv.benchmark import layers_from_args, run  # noqa: PLC0415

    layers = layers_from_args(args)
    out = run(
        layers,
        min_reps=args.min_reps,
        budget_s=args.budget,
        as_json=args.json,
        algorithm=args.algorithm,
        settle_s=args.settle,
        baseline=args.baseline,
        rounds=args.rounds,
        channels_last=args.channels_last,
        clock=args.clock,
        progress=lambda s: print(s, file=sys.stderr),
    )
    print(out)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# experiment
# --------------------------------------------------------------------------------------------
def _add_experiment(sub: Any) -> None:
    from foldconv.experiments import DATASETS, EXPERIMENTS  # noqa: PLC0415

    p = sub.add_parser(
        "experiment",
        help="re-measure one of the AlexNet paper's claims at small scale",
        description="Train the two arms of a small AlexNet-like network that differ only in "
        "the property under test (same initial weights and data order per seed), for several "
        "seeds; print the spread and write NAME.json and NAME.png into --out. "
        "relu-vs-tanh: epochs to 25% training error (Figure 1); lrn: with and without local "
        "response normalisation; overlapping-pool: 3x3 stride 2 against 2x2 stride 2; "
        "dropout: with and without dropout 0.5. See docs/experiments.md.",
    )
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help=", ".join(EXPERIMENTS))
    p.add_argument("--dataset", default="digits", choices=list(DATASETS), help="default: digits")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--subset", type=_positive_int, default=None, help="training images to use")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    p.add_argument("--momentum", type=_nonneg_float, default=None)
    p.add_argument("--weight-decay", type=_nonneg_float, default=None)
    p.add_argument(
        "--evals-per-epoch",
        type=_positive_int,
        default=None,
        help="training-error measurements per epoch (default 8 for relu-vs-tanh, else 1)",
    )
    p.add_argument(
        "--target-error", type=_positive_float, default=None, help="default 0.25 (a fraction)"
    )
    p.add_argument("--init", choices=["default", "he"], default=None, help="weight init")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/experiment-<name>-...)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from foldconv.experiments import format_result, run_experiment  # noqa: PLC0415

    result = run_experiment(
        args.name,
        dataset=args.dataset,
        data_dir=args.data_dir,
        seeds=args.seeds,
        epochs=args.epochs,
        subset=args.subset,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        evals_per_epoch=args.evals_per_epoch,
        target_error=args.target_error,
        init=args.init,
        out=args.out,
        progress=not args.no_progress,
    )
    print(format_result(result))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# visualize
# --------------------------------------------------------------------------------------------
def _add_visualize(sub: Any) -> None:
    p = sub.add_parser(
        "visualize",
        help="write each layer's activations for an image as PNG grids",
        description="Run IMAGE (PNG, JPEG, ...; preprocessed as the checkpoint's test images "
        "were) through CHECKPOINT (a .safetensors file or a run directory) and write one PNG "
        "per layer into --out: the maps of each convolution, activation, normalisation and "
        "pooling layer tiled on a grid (each map scaled to its own range), the values of "
        "each fully connected layer on a square grid.",
    )
    p.add_argument("checkpoint")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/feature-maps-<image>-...)"
    )
    p.set_defaults(handler=_cmd_visualize)


def _cmd_visualize(args: argparse.Namespace) -> int:
    from foldconv.feature_maps import visualize  # noqa: PLC0415

    r = visualize(args.checkpoint, args.image, args.out)
    print(f"checkpoint: {r['checkpoint']}")
    for layer in r["layers"]:
        shape = "x".join(str(s) for s in layer["shape"])
        print(f"  {layer['name']:<16} {layer['type']:<18} {shape:<10} -> {layer['file']}")
    if r["prediction"] is not None:
        name, prob = r["prediction"]
        print(f"prediction: {name} ({prob:.4f})")
    print(f"{len(r['files'])} PNG files in {r['out']}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# summary / gradcheck
# --------------------------------------------------------------------------------------------
# Input sizes for the models that accept any size above a minimum (the others fix theirs):
# the ImageNet size for AlexNet and VGG, the CIFAR size for ResNet-18.
_SUMMARY_SIZE = {"alexnet": 224, "vgg11": 224, "vgg16": 224, "resnet18": 32}


def _shape(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive ints, e.g. '3,227,227'."""
    try:
        shape = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive ints such as 3,227,227, got {text!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return shape


def _inspected_model(args: argparse.Namespace, default_size: Callable[[Any], int]):
    """The model named by --model and the sample shape from --input (or its default)."""
    from foldconv.models import MODELS  # noqa: PLC0415

    # The builder's own default class count (1000 for AlexNet and VGG, as published).
    kwargs: dict[str, Any] = {"rng": args.seed}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.input is not None and args.model == "lenet5" and len(args.input) == 3:
        # LeNet-5 is built for one size: build it for the size asked.
        kwargs["in_channels"], kwargs["input_size"] = args.input[0], args.input[-1]
    elif args.input is not None and len(args.input) == 3:
        kwargs["in_channels"] = args.input[0]
    model = MODELS[args.model](**kwargs)
    if args.input is not None:
        return model, args.input
    size = getattr(model, "input_size", None) or default_size(model)
    return model, (model.in_channels, size, size)


def _add_model_args(p: argparse.ArgumentParser, input_help: str, batch: int) -> None:
    """--model, --input, --batch and --num-classes, as summary and gradcheck take them."""
    from foldconv.models import available_models  # noqa: PLC0415

    p.add_argument("--model", default="lenet5", choices=available_models())
    p.add_argument("--input", type=_shape, default=None, metavar="C,H,W", help=input_help)
    p.add_argument(
        "--batch", type=_positive_int, default=batch, help=f"batch size N (default {batch})"
    )
    p.add_argument("--num-classes", type=_positive_int, default=None)


def _add_summary(sub: Any) -> None:

    p = sub.add_parser(
        "summary",
        help="per-layer output shapes, parameters, multiply-adds, memory and algorithms",
        description="Print a model's layers (nested, by depth) with output shape, "
        "parameter count, multiply-adds, output and kept-for-backward memory, and the "
        "algorithm 'auto' picks for each pass of each convolution; then totals. Shapes "
        "and memory are measured on zero batches of 2 and 3 and extrapolated to --batch.",
    )
    _add_model_args(
        p,
        input_help="one sample's shape (default: the model's own size: lenet5 1,28,28, "
        "alexnet_paper 3,227,227, alexnet/vgg 3,224,224, resnet18 3,32,32)",
        batch=1,
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="for the initial weights")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(handler=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from foldconv.inspect import summary  # noqa: PLC0415

    model, shape = _inspected_model(args, lambda m: _SUMMARY_SIZE.get(args.model, 224))
    result = summary(model, shape, args.batch)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return EXIT_OK


def _add_gradcheck(sub: Any) -> None:

    p = sub.add_parser(
        "gradcheck",
        help="check every layer's hand-written backward against finite differences",
        description="Check the model's backward and each of its modules' against float64 "
        "central finite differences (random directions and single entries); print each "
        "module's max relative error of the input and parameter gradients. Exit status 1 "
        "when a check fails.",
    )
    _add_model_args(
        p,
        input_help="one sample's shape (default: the model's own size, else its smallest)",
        batch=2,
    )
    p.add_argument("--eval", action="store_true", help="check the model in eval mode")
    p.add_argument("--rtol", type=_positive_float, default=1e-6, help="pass at <= (1e-6)")
    p.add_argument("--eps", type=_positive_float, default=1e-6, help="difference step (1e-6)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.set_defaults(handler=_cmd_gradcheck)


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    from foldconv.inspect import gradcheck  # noqa: PLC0415

    # ResNet-18's smallest input (8) leaves batch norm 2 values per channel at the last
    # stage, a function too curved for differences: 16 leaves 8.
    sizes = {"resnet18": 16}
    model, shape = _inspected_model(
        args, lambda m: sizes.get(args.model, getattr(m, "min_input_size", 32))
    )
    if args.eval:
        model.eval()
    x = np.random.default_rng(args.seed).standard_normal((args.batch,) + tuple(shape))
    result = gradcheck(model, x, rtol=args.rtol, eps=args.eps, seed=args.seed)
    print(result)
    return EXIT_OK if result.passed else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------
# Subcommands, in --help order.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_train,
    _add_evaluate,
    _add_predict,
    _add_bench,
    _add_demo,
    _add_experiment,
    _add_visualize,
    _add_summary,
    _add_gradcheck,
]


def build_parser() -> argparse.ArgumentParser:
    from foldconv import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convolutional neural networks with every gradient written by hand.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad arguments exit through argparse (status 2, usage message); errors in the input
    (ValueError, TypeError, missing files) print ``foldconv: error: ...`` and return 2;
    running out of GPU memory prints which layer asked for how much and returns 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from foldconv.cuda.memory import GPUOutOfMemoryError  # noqa: PLC0415

    try:
        return int(args.handler(args))
    except GPUOutOfMemoryError as e:
        # Names the layer, the shapes and the bytes (and, training, the checkpoint kept).
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, TypeError, OSError) as e:
        # OSError covers FileNotFoundError and PermissionError from paths the user gave.
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
