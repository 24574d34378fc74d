"""The command line: subcommands through main([...]), a real subprocess, bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from foldconv.cli import main


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "forward output shape: (2, 4, 4, 4)" in out
    for grad in ("dL/dx", "dL/dw", "dL/db"):
        line = next(l for l in out.splitlines() if grad in l)
        assert line.rstrip().endswith("ok")
        assert float(line.split("relative error")[1].split()[0]) < 1e-6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the default recipe (LeNet-5 on digits) through main()."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--seed", "3"])
    assert code == 0
    return out


def test_train_defaults_and_files(trained, capsys):
    summary = json.loads((trained / "summary.json").read_text())
    cfg = summary["config"]
    assert (cfg["model"], cfg["dataset"], cfg["epochs"], cfg["seed"]) == ("lenet5", "digits", 1, 3)
    (record,) = [json.loads(r) for r in (trained / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= summary["test_accuracy"] == record["test_accuracy"] <= 1
    for name in ("best.safetensors", "last.safetensors", "metrics.jsonl", "filters.png"):
        assert (trained / name).is_file()


def test_train_prints_epoch_line_and_result(tmp_path, capsys):
    code = main(
        ["train", "--epochs", "1", "--batch-size", "128", "--out", str(tmp_path), "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: train loss" in out and "test acc" in out
    assert "test accuracy" in out and str(tmp_path) in out


def test_resume_through_cli(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]
    assert main(["train", "--resume", str(run), "--lr", "0.3", "--no-progress"]) == 2
    assert "foldconv: error: lr: cannot change on resume" in capsys.readouterr().err


def test_evaluate(trained, capsys):
    assert main(["evaluate", str(trained)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((trained / "summary.json").read_text())
    acc = float(out.split("accuracy: ")[1].split("%")[0])
    assert acc == pytest.approx(100 * summary["best_test_accuracy"], abs=0.006)
    assert "confusion matrix" in out
    rows = [l for l in out.splitlines() if l.strip() and l.split()[0] in list("0123456789")]
    table = np.array([[int(v) for v in r.split()[1:]] for r in rows[-10:]])
    assert table.shape == (10, 10) and table.sum() == 360


def test_predict(trained, tmp_path, capsys):
    from PIL import Image

    from foldconv.data import load_dataset

    _, test = load_dataset("digits")
    paths = []
    for i in range(2):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(np.round(test.images[i, 0] * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    assert main(["predict", str(trained / "best.safetensors"), *paths]) == 0
    out = capsys.readouterr().out
    for p in paths:
        assert f"{p}:" in out
    ranks = [l.split() for l in out.splitlines() if l.startswith("  ")]
    assert len(ranks) == 10  # top-5 for each image
    probs = [float(r[2]) for r in ranks[:5]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--epochs", "0"], "--epochs: expected a positive int, got 0"),
        (["train", "--model", "lenet6"], "invalid choice: 'lenet6'"),
        (["train", "--lr", "fast"], "--lr: expected a positive number, got 'fast'"),
        (["train", "--scheduler", "linear"], "invalid choice: 'linear'"),
        (["predict", "x.safetensors"], "the following arguments are required: IMAGE"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_message(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_errors_print_message_without_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foldconv: error: checkpoint:") and "Traceback" not in err
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foldconv: error:") and "Traceback" not in err
    assert main([]) == 2


def test_cuda_error_without_cupy(capsys):
    from foldconv.backend import _cupy

    if _cupy() is not None:
        pytest.skip("CuPy is installed")
    assert main(["train", "--device", "cuda"]) == 2
    assert "CuPy" in capsys.readouterr().err


def test_evaluate_and_predict_on_cuda_without_cupy(trained, capsys):
    from foldconv.backend import _cupy

    if _cupy() is not None:
        pytest.skip("CuPy is installed")
    from PIL import Image

    png = trained / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    for argv in (
        ["evaluate", str(trained), "--device", "cuda"],
        ["predict", str(trained), str(png), "--device", "cuda:0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"foldconv: error: device: {argv[-1]!r} needs CuPy"), err
        assert "pip install 'foldconv[cuda12]'" in err and "Traceback" not in err


def test_out_of_gpu_memory_exits_1_with_the_message(trained, capsys, monkeypatch):
    """The CLI's handling of GPUOutOfMemoryError (raised here by a stand-in evaluate)."""
    import foldconv.trainer
    from foldconv.cuda.memory import GPUOutOfMemoryError

    def evaluate(*args, **kwargs):
        raise GPUOutOfMemoryError(
            "stand-in",
            requested_bytes=1 << 20,
            layer="classifier.1 (Linear)",
            input_shape=(256, 9216),
            phase="forward",
        )

    monkeypatch.setattr(foldconv.trainer, "evaluate", evaluate)
    assert main(["evaluate", str(trained)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "foldconv: error: out of GPU memory in classifier.1 (Linear) forward (input shape "
        "(256, 9216), requested 1,048,576 bytes (1.00 MiB)): stand-in"
    ), err
    assert "Traceback" not in err


def test_real_subprocess(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "foldconv", "train", "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "test accuracy" in proc.stdout
    assert "epoch 1/1" in proc.stderr  # the tqdm bar
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1

    bad = subprocess.run(
        [sys.executable, "-m", "foldconv.cli", "train", "--batch-size", "-3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "--batch-size" in bad.stderr and "Traceback" not in bad.stderr
