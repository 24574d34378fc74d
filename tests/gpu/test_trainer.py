"""The trainer on a GPU: LeNet-5 on digits on cuda and on cpu from the same seed,
checkpoints moving between CPU and GPU runs (and resuming), ``foldconv evaluate/predict
--device cuda`` in a subprocess, and a real CuPy out-of-memory error during a step.

Kept short for the few minutes of GPU time they get: the bundled digits (subsets of them
for the float64 runs), two or three epochs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from foldconv import nn
from foldconv.cuda.memory import GPUOutOfMemoryError
from foldconv.data import ArrayDataset, load_dataset
from foldconv.models import FeatureClassifier, lenet5
from foldconv.trainer import evaluate, predict, read_checkpoint, train

SRC = str(Path(__file__).resolve().parents[2] / "src")
QUIET = dict(progress=False, verbose=False)


def _subset(ds, n, dtype):
    return ArrayDataset(ds.images[:n].astype(dtype), ds.labels[:n], classes=ds.classes)


@pytest.fixture(scope="module")
def digits64():
    """640 training and 240 test digits in float64 (20 batches of 32 per epoch)."""
    tr, te = load_dataset("digits")
    return _subset(tr, 640, np.float64), _subset(te, 240, np.float64)


def _lenet64():
    return lenet5(10, rng=np.random.default_rng(0), dtype=np.float64)


def _train(device, out, dataset, model, epochs, resume=None):
    """train(...) with the per-step losses collected: (summary, {step: loss})."""
    losses = {}
    summary = train(
        model,
        dataset,
        epochs=epochs,
        batch_size=32,
        seed=0,
        device=device,
        out=out,
        resume=resume,
        on_step=lambda info: losses.__setitem__(info["step"], info["loss"]),
        **QUIET,
    )
    return summary, losses


@pytest.fixture(scope="module")
def runs64(tmp_path_factory, digits64):
    """The same float64 LeNet-5 run (2 epochs) on the CPU and on the GPU."""
    root = tmp_path_factory.mktemp("runs64")
    return {
        dev: (root / dev, *_train(dev, root / dev, digits64, _lenet64(), 2))
        for dev in ("cpu", "cuda")
    }


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def test_lenet_float64_on_cuda_is_the_cpu_run(cp, runs64):
    (cpu_dir, cpu_sum, cpu_loss), (gpu_dir, gpu_sum, gpu_loss) = runs64["cpu"], runs64["cuda"]
    assert sorted(gpu_loss) == sorted(cpu_loss) == list(range(1, 41))
    for step in cpu_loss:
        assert abs(gpu_loss[step] - cpu_loss[step]) <= 1e-9 * abs(cpu_loss[step]), step
    assert gpu_sum["test_accuracy"] == cpu_sum["test_accuracy"]
    assert gpu_sum["config"]["device"] == "cuda" and gpu_sum["status"] == "completed"
    # The GPU run's checkpoint is a CPU one: same keys, dtypes, shapes, host arrays.
    for tag in ("last", "best"):
        wc, ic = read_checkpoint(cpu_dir / f"{tag}.safetensors")
        wg, ig = read_checkpoint(gpu_dir / f"{tag}.safetensors")
        assert sorted(wg) == sorted(wc) and set(ig) == set(ic)
        for k in wc:
            assert isinstance(wg[k], np.ndarray) and wg[k].dtype == wc[k].dtype, k
            assert wg[k].shape == wc[k].shape, k
            assert _rel(wg[k], wc[k]) <= 1e-8, k


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_moves_between_devices_and_resumes(cp, tmp_path, digits64, runs64, first, then):
    """One epoch on ``first``, the second resumed from its checkpoint on ``then``: the
    uninterrupted CPU run's losses and weights (float64, to 1e-8)."""
    _train(first, tmp_path, digits64, _lenet64(), 1)
    summary, losses = _train(then, tmp_path, digits64, _lenet64(), 2, resume=tmp_path)
    assert summary["config"]["device"] == then and summary["epochs"] == 2
    _, ref_summary, ref_losses = runs64["cpu"]
    assert sorted(losses) == list(range(21, 41))
    for step in losses:
        assert abs(losses[step] - ref_losses[step]) <= 1e-8 * abs(ref_losses[step]), step
    w = read_checkpoint(tmp_path / "last.safetensors")[0]
    ref = read_checkpoint(runs64["cpu"][0] / "last.safetensors")[0]
    for k in ref:
        assert _rel(w[k], ref[k]) <= 1e-8, k
    assert summary["test_accuracy"] == ref_summary["test_accuracy"]


@pytest.fixture(scope="module")
def runs32(tmp_path_factory):
    """The default recipe's model (float32 LeNet-5) on the bundled digits, 3 epochs of
    batch 32 (about 96% on the CPU), on the CPU and on the GPU."""
    root = tmp_path_factory.mktemp("runs32")
    out = {}
    for dev in ("cpu", "cuda"):
        losses = {}
        summary = train(
            "lenet5",
            "digits",
            epochs=3,
            batch_size=32,
            seed=0,
            device=dev,
            out=root / dev,
            on_step=lambda info, losses=losses: losses.__setitem__(info["step"], info["loss"]),
            **QUIET,
        )
        out[dev] = (root / dev, summary, losses)
    return out


def test_lenet_float32_on_cuda_reaches_the_cpu_accuracy(cp, runs32):
    (_, cpu_sum, cpu_loss), (_, gpu_sum, gpu_loss) = runs32["cpu"], runs32["cuda"]
    assert sorted(gpu_loss) == sorted(cpu_loss)
    # Float32 sums in another order: the first steps agree closely, and the runs drift
    # apart only slowly.
    for step in (1, 2, 3):
        assert abs(gpu_loss[step] - cpu_loss[step]) <= 1e-4 * abs(cpu_loss[step]), step
    last = max(cpu_loss)
    tail_cpu = np.mean([cpu_loss[s] for s in range(last - 9, last + 1)])
    tail_gpu = np.mean([gpu_loss[s] for s in range(last - 9, last + 1)])
    assert abs(tail_gpu - tail_cpu) <= 0.1 * tail_cpu
    assert abs(gpu_sum["test_accuracy"] - cpu_sum["test_accuracy"]) <= 0.03
    assert gpu_sum["test_accuracy"] > 0.9  # it learned


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run(
        [sys.executable, "-m", "foldconv", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_evaluate_and_predict_on_cuda(cp, runs32, tmp_path):
    run = runs32["cuda"][0]
    ref = evaluate(run, device="cpu")
    proc = _cli("evaluate", str(run), "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"accuracy: [\d.]+% \((\d+)/(\d+)\)", proc.stdout)
    assert m, proc.stdout
    correct, n = int(m.group(1)), int(m.group(2))
    assert n == ref["n"]
    assert abs(correct - round(ref["accuracy"] * n)) <= 1  # a float32 near-tie at most

    from PIL import Image

    tr, te = load_dataset("digits")
    png = tmp_path / "digit.png"
    Image.fromarray(np.round(te.images[0, 0] * 255).astype(np.uint8)).save(png)
    cpu_top = predict(run, [png], k=3)[0]
    proc = _cli("predict", str(run), str(png), "--top", "3", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+\d\. (\S+)\s+([\d.]+)$", proc.stdout, flags=re.M)
    assert [name for name, _ in rows][:1] == [cpu_top[0][0]], proc.stdout
    for (name, prob), (cpu_name, cpu_prob) in zip(rows, cpu_top, strict=True):
        assert abs(float(prob) - cpu_prob) <= 2e-4, (name, cpu_name)


def test_real_out_of_memory_names_the_layer_and_keeps_the_checkpoint(cp, tmp_path):
    """CuPy's own OutOfMemoryError, from its memory pool held to what the run uses plus
    1 MiB from step 12 on (epoch 2): the next step's first large allocation is in
    features.0, a 256-channel convolution. The epoch-1 files stay byte for byte, and the
    run resumes from them once the limit is lifted."""
    tr, te = load_dataset("digits")
    data = (_subset(tr, 640, np.float32), _subset(te, 128, np.float32))

    def wide():
        g = np.random.default_rng(0)
        return FeatureClassifier(
            nn.Sequential(nn.Conv2d(1, 256, 3, padding=1, rng=g), nn.ReLU(), nn.MaxPool2d(4)),
            nn.Sequential(nn.Linear(256 * 7 * 7, 10, rng=g)),
            in_channels=1,
            input_size=28,
            min_input_size=28,
        )

    pool = cp.get_default_memory_pool()
    saved = {}

    def on_step(info):
        if info["step"] == 12:
            saved.update({p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()})
            pool.free_all_blocks()
            pool.set_limit(size=pool.total_bytes() + (1 << 20))

    kw = dict(batch_size=64, seed=0, device="cuda", out=tmp_path, **QUIET)
    try:
        with pytest.raises(GPUOutOfMemoryError) as exc:
            train(wide(), data, epochs=2, on_step=on_step, **kw)
    finally:
        pool.set_limit(size=0)  # no limit
    err = exc.value
    assert isinstance(err.__cause__, cp.cuda.memory.OutOfMemoryError)
    assert err.layer == "features.0 (Conv2d)" and err.phase == "forward"
    assert err.input_shape == (64, 1, 28, 28)
    assert err.requested_bytes is not None and err.requested_bytes > 0
    msg = str(err)
    assert "out of GPU memory in features.0 (Conv2d) forward (input shape (64, 1, 28, 28)" in msg
    assert "training stopped at epoch 2, step 13" in msg and "last good checkpoint" in msg
    for name, data_bytes in saved.items():
        if name != "summary.json":
            assert (tmp_path / name).read_bytes() == data_bytes, name
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "out_of_memory"
    summary = train(wide(), data, epochs=2, resume=tmp_path, **kw)
    assert summary["status"] == "completed" and summary["steps"] == 20
