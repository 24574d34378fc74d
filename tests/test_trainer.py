"""The trainer: files it writes, checkpoints, exact resumption, crash safety, NaN, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from foldconv import nn
from foldconv.cuda.memory import GPUOutOfMemoryError
from foldconv.data import ArrayDataset, load_dataset
from foldconv.models import lenet5
from foldconv.trainer import (
    CHECKPOINT_FORMAT,
    TrainingDiverged,
    TrainingInterrupted,
    evaluate,
    load_checkpoint,
    predict,
    read_checkpoint,
    train,
)


@pytest.fixture(scope="module")
def small_digits():
    """320 training and 120 test digits (8x8): a few batches per epoch."""
    train_ds, test_ds = load_dataset("digits")
    return (
        ArrayDataset(train_ds.images[:320], train_ds.labels[:320], classes=train_ds.classes),
        ArrayDataset(test_ds.images[:120], test_ds.labels[:120], classes=test_ds.classes),
    )


class OOMLinear(nn.Linear):
    """A Linear whose ``oom_at``-th training forward raises GPUOutOfMemoryError, as
    foldconv's GPU code does when an allocation does not fit (there is no GPU here)."""

    def __init__(self, *args, oom_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.oom_at = oom_at

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.oom_at is not None and self.calls == self.oom_at:
                raise GPUOutOfMemoryError("stand-in", requested_bytes=3 * 2**30)
        elif self.oom_at == "eval":
            raise GPUOutOfMemoryError("stand-in")
        return super().forward(x)


class TinyNet(nn.Sequential):
    """A small network for 8x8 digits with BatchNorm (buffers) and Dropout (an RNG).

    ``fail_at``: the forward call (1-based) at which to raise KeyboardInterrupt *after*
    the layers ran (BatchNorm has already updated its running statistics), or
    ``nan_at``: the call from which the logits are NaN, or ``oom_at``: the call at which
    the last layer runs out of GPU memory (BatchNorm ran before it).
    """

    def __init__(self, seed=0, fail_at=None, nan_at=None, oom_at=None):
        g = np.random.default_rng(seed)
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1, rng=g),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25, rng=g),
            OOMLinear(8 * 4 * 4, 10, rng=g, oom_at=oom_at),
        )
        self.calls = 0
        self.fail_at = fail_at
        self.nan_at = nan_at

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.calls += 1
            if self.fail_at is not None and self.calls == self.fail_at:
                raise KeyboardInterrupt
            if self.nan_at is not None and self.calls >= self.nan_at:
                y = y * np.nan
        return y


def collect():
    losses = {}

    def on_step(info):
        losses[info["step"]] = info["loss"]

    return losses, on_step


def weights(path):
    w, _ = read_checkpoint(path)
    return w


# -- files -----------------------------------------------------------------------------------
def test_short_run_writes_all_files(tmp_path, small_digits):
    out = tmp_path / "run"
    summary = train(
        "lenet5", small_digits, epochs=2, batch_size=32, out=out, progress=False, verbose=False
    )
    names = {p.name for p in out.iterdir()}
    for f in (
        "metrics.jsonl",
        "summary.json",
        "best.safetensors",
        "last.safetensors",
        "loss.png",
        "accuracy.png",
        "filters.png",
    ):
        assert f in names
    # exactly one state file per checkpoint, the one each names; no temporary files left
    for tag in ("best", "last"):
        states = [n for n in names if n.startswith(f"{tag}.state-")]
        _, info = read_checkpoint(out / f"{tag}.safetensors")
        assert states == [info["state_file"]]
    assert not [n for n in names if n.endswith(".tmp")]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [10, 20]  # 320 / 32 batches per epoch
    for r in records:
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
        assert r["images_per_second"] > 0 and r["epoch_seconds"] > 0
    assert records[1]["train_loss"] < records[0]["train_loss"]

    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["status"] == "completed"
    assert saved["test_accuracy"] == records[-1]["test_accuracy"]
    assert saved["epochs"] == 2 and saved["steps"] == 20
    assert saved["wall_seconds"] > 0 and saved["images_per_second"] > 0
    cfg = saved["config"]
    assert cfg["model"] == "lenet5" and cfg["batch_size"] == 32 and cfg["epochs"] == 2
    for key in ("lr", "momentum", "weight_decay", "optimizer", "scheduler", "seed"):
        assert key in cfg

    from PIL import Image

    for png in ("loss.png", "accuracy.png", "filters.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_default_out_dir_is_runs_model_dataset_time(tmp_path, monkeypatch, small_digits):
    monkeypatch.chdir(tmp_path)
    s = train(epochs=1, progress=False, verbose=False, dataset=small_digits)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("lenet5-custom-")
    assert s["out"] == str(run.relative_to(tmp_path))


def test_checkpoint_loads_into_torch(tmp_path, small_digits):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from tests.models.test_models import torch_lenet5

    out = tmp_path / "run"
    train("lenet5", small_digits, epochs=1, out=out, progress=False, verbose=False)
    sd = safetensors_torch.load_file(str(out / "last.safetensors"))
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())
    ref = torch_lenet5()
    ref.load_state_dict(sd)  # strict: PyTorch's names and shapes
    ours, info = load_checkpoint(out / "last.safetensors")
    assert info["epoch"] == 1 and info["model"] == "lenet5"
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), expected, rtol=1e-4, atol=1e-5)


# -- resume ------------------------------------------------------------------------------------
def test_resume_at_epoch_boundary_is_exact(tmp_path, small_digits):
    kw = dict(batch_size=32, scheduler="step", progress=False, verbose=False)
    full_losses, full_cb = collect()
    train("lenet5", small_digits, epochs=2, out=tmp_path / "a", on_step=full_cb, **kw)
    part_losses, part_cb = collect()
    train("lenet5", small_digits, epochs=1, out=tmp_path / "b", on_step=part_cb, **kw)
    train(
        resume=tmp_path / "b",
        dataset=small_digits,
        epochs=2,
        on_step=part_cb,
        progress=False,
        verbose=False,
    )
    assert sorted(part_losses) == list(range(1, 21))
    assert part_losses == full_losses  # the loss at every step, after resuming too
    wa, wb = (
        weights(tmp_path / "a" / "last.safetensors"),
        weights(tmp_path / "b" / "last.safetensors"),
    )
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda r: {k: v for k, v in json.loads(r).items() if "second" not in k}  # noqa: E731
    assert [strip(r) for r in ma] == [strip(r) for r in mb]


@pytest.mark.parametrize("where", ["forward", "callback"])
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, small_digits, where):
    """Dropout's generator, BatchNorm's running stats, the cosine schedule and momentum."""
    kw = dict(
        dataset=small_digits,
        epochs=3,
        batch_size=32,
        scheduler="cosine",
        progress=False,
        verbose=False,
    )
    full_losses, full_cb = collect()
    train(TinyNet(), out=tmp_path / "a", on_step=full_cb, **kw)

    part_losses, part_cb = collect()
    if where == "forward":
        # The 14th forward raises after BatchNorm updated its statistics: step 13 is done.
        model, cb = TinyNet(fail_at=14), part_cb
    else:

        def cb(info):
            part_cb(info)
            if info["step"] == 13:
                raise KeyboardInterrupt

        model = TinyNet()
    with pytest.raises(TrainingInterrupted) as exc:
        train(model, out=tmp_path / "b", on_step=cb, **kw)
    assert isinstance(exc.value, KeyboardInterrupt)
    _, info = read_checkpoint(tmp_path / "b" / "last.safetensors")
    assert info["step"] == 13 and info["epoch"] == 1  # 1 epoch completed, 3 batches into the 2nd
    assert "step 13" in str(exc.value) and "--resume" in str(exc.value)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "interrupted"

    train(TinyNet(seed=99), resume=tmp_path / "b", on_step=part_cb, **kw)
    assert sorted(part_losses) == list(range(1, 31))
    assert part_losses == full_losses
    wa, wb = (
        weights(tmp_path / "a" / "last.safetensors"),
        weights(tmp_path / "b" / "last.safetensors"),
    )
    assert "1.running_mean" in wa
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_resume_with_more_epochs_replans_cosine(tmp_path, small_digits):
    kw = dict(batch_size=32, scheduler="cosine", lr=0.04, progress=False, verbose=False)
    lrs = {}
    train("lenet5", small_digits, epochs=1, out=tmp_path, **kw)
    train(
        resume=tmp_path,
        dataset=small_digits,
        epochs=3,
        verbose=False,
        on_step=lambda i: lrs.setdefault(i["epoch"], i["lr"]),
    )
    # cosine over 3 epochs: 0.04 * (1 + cos(pi * e / 3)) / 2 for e = 1, 2
    assert lrs[2] == pytest.approx(0.03) and lrs[3] == pytest.approx(0.01)
    records = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([0.04, 0.03, 0.01])


def test_resume_refuses_changed_hyperparameters(tmp_path, small_digits):
    train("lenet5", small_digits, epochs=1, out=tmp_path, progress=False, verbose=False)
    with pytest.raises(ValueError, match=r"lr: cannot change on resume \(the checkpoint has"):
        train(resume=tmp_path, dataset=small_digits, epochs=2, lr=0.5, verbose=False)
    with pytest.raises(ValueError, match="model: the checkpoint trains 'lenet5'"):
        train("resnet18", small_digits, resume=tmp_path, epochs=2, verbose=False)


# -- crash safety ---------------------------------------------------------------------------
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, small_digits, monkeypatch):
    kw = dict(batch_size=32, scheduler="none", progress=False, verbose=False)
    train("lenet5", small_digits, epochs=1, out=tmp_path, **kw)
    before = (tmp_path / "last.safetensors").read_bytes()
    _, info = read_checkpoint(tmp_path / "last.safetensors")
    state_before = (tmp_path / info["state_file"]).read_bytes()

    real_replace = os.replace

    def crashing_replace(src, dst):
        # The new state file lands; the weights file that would point at it does not.
        if str(dst).endswith("last.safetensors"):
            raise OSError("simulated crash while renaming")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        train(resume=tmp_path, dataset=small_digits, epochs=2, progress=False, verbose=False)
    monkeypatch.setattr(os, "replace", real_replace)

    assert (tmp_path / "last.safetensors").read_bytes() == before
    assert (tmp_path / info["state_file"]).read_bytes() == state_before
    assert not list(tmp_path.glob(".*.tmp"))
    # ... and it still resumes, to the same result as an uninterrupted run.
    train(resume=tmp_path, dataset=small_digits, epochs=2, progress=False, verbose=False)
    train("lenet5", small_digits, epochs=2, out=tmp_path / "ref", **kw)
    wa, wb = weights(tmp_path / "last.safetensors"), weights(tmp_path / "ref" / "last.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


# -- NaN and Ctrl-C ---------------------------------------------------------------------------
def test_nan_loss_stops_with_epoch_and_step(tmp_path, small_digits):
    # 10 batches per epoch: the 14th forward is epoch 2, step 14.
    kw = dict(dataset=small_digits, epochs=3, batch_size=32, progress=False, verbose=False)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 14") as exc:
        train(TinyNet(nan_at=14), out=tmp_path, **kw)
    assert (exc.value.epoch, exc.value.step) == (2, 14)
    assert "last good checkpoint" in str(exc.value)
    _, info = read_checkpoint(tmp_path / "last.safetensors")
    assert info["epoch"] == 1 and info["step"] == 10
    assert all(np.isfinite(v).all() for v in weights(tmp_path / "last.safetensors").values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "epoch 2, step 14" in summary["message"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_sigint_saves_a_checkpoint(tmp_path, small_digits):
    def on_step(info):
        if info["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, through the handler

    with pytest.raises(KeyboardInterrupt):
        train(
            "lenet5",
            small_digits,
            epochs=2,
            batch_size=32,
            out=tmp_path,
            on_step=on_step,
            progress=False,
            verbose=False,
        )
    _, info = read_checkpoint(tmp_path / "last.safetensors")
    assert info["step"] == 4 and info["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# -- out of GPU memory ------------------------------------------------------------------------
def test_gpu_oom_mid_step_names_the_layer_and_keeps_the_last_checkpoint(tmp_path, small_digits):
    """The translation path with a layer raising GPUOutOfMemoryError at epoch 2, step 14:
    the error names the layer and where training stopped, no checkpoint is written, the
    epoch-1 files stay byte for byte, and resuming from them gives the uninterrupted run."""
    kw = dict(dataset=small_digits, batch_size=32, progress=False, verbose=False)
    saved = {}

    def on_step(info):
        if info["step"] == 11:  # the epoch-1 checkpoint is on disk
            saved.update({p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()})

    with pytest.raises(GPUOutOfMemoryError) as exc:
        train(TinyNet(oom_at=14), epochs=3, out=tmp_path, on_step=on_step, **kw)
    msg = str(exc.value)
    assert exc.value.layer == "6 (OOMLinear)" and exc.value.input_shape == (32, 128)
    for needle in (
        "out of GPU memory in 6 (OOMLinear) forward (input shape (32, 128), requested "
        "3,221,225,472 bytes (3.00 GiB))",
        "training stopped at epoch 2, step 14 (batch 4 of 10)",
        f"the last good checkpoint is {tmp_path / 'last.safetensors'}",
    ):
        assert needle in msg, msg
    for name in ("last.safetensors", "best.safetensors", "metrics.jsonl"):
        assert (tmp_path / name).read_bytes() == saved[name], name
    states = sorted(p.name for p in tmp_path.glob("*.state-*.safetensors"))
    assert states == sorted(n for n in saved if ".state-" in n)
    assert not list(tmp_path.glob(".*.tmp"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "out_of_memory" and summary["message"] == msg

    train(TinyNet(), resume=tmp_path, epochs=2, **kw)
    train(TinyNet(), epochs=2, out=tmp_path / "ref", **kw)
    wa, wb = weights(tmp_path / "last.safetensors"), weights(tmp_path / "ref" / "last.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_gpu_oom_before_any_checkpoint_or_in_evaluation_says_so(tmp_path, small_digits):
    with pytest.raises(GPUOutOfMemoryError, match="no checkpoint was written yet"):
        train(
            TinyNet(oom_at=2),
            small_digits,
            epochs=1,
            batch_size=32,
            out=tmp_path,
            progress=False,
            verbose=False,
        )
    assert not (tmp_path / "last.safetensors").exists()
    with pytest.raises(
        GPUOutOfMemoryError, match="training stopped while evaluating epoch 1 .after step 10."
    ):
        train(
            TinyNet(oom_at="eval"),
            small_digits,
            epochs=1,
            batch_size=32,
            out=tmp_path,
            progress=False,
            verbose=False,
        )


# -- evaluate / predict / errors ------------------------------------------------------------------
def test_evaluate_and_predict(tmp_path, small_digits):
    summary = train("lenet5", small_digits, epochs=2, out=tmp_path, progress=False, verbose=False)
    r = evaluate(tmp_path, dataset=small_digits[1])
    assert r["checkpoint"].endswith("best.safetensors")
    assert r["accuracy"] == pytest.approx(summary["best_test_accuracy"])
    conf = np.array(r["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 120
    assert np.trace(conf) == round(r["accuracy"] * 120)

    images = small_digits[1].images[:3]
    top = predict(tmp_path, images)
    assert len(top) == 3
    for row in top:
        assert len(row) == 5
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    # From a PNG file: the same prediction as from the array it was written from.
    from PIL import Image

    png = tmp_path / "digit.png"
    Image.fromarray(np.round(images[0, 0] * 255).astype(np.uint8)).save(png)
    assert predict(tmp_path, [png], k=3)[0][0][0] == top[0][0][0]
    # No images, no predictions (a batch of 0, as the model's forward takes it).
    assert predict(tmp_path, images[:0]) == [] and predict(tmp_path, []) == []


def test_bad_arguments(tmp_path, small_digits):
    with pytest.raises(ValueError, match="model: expected one of"):
        train("lenet6", small_digits, out=tmp_path)
    with pytest.raises(ValueError, match="epochs: expected a positive int, got 0"):
        train("lenet5", small_digits, epochs=0, out=tmp_path)
    with pytest.raises(ValueError, match="optimizer: expected one of sgd, adam, adamw"):
        train("lenet5", small_digits, optimizer="rmsprop", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(resume=tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="is not a foldconv checkpoint"):
        from safetensors.numpy import save_file

        save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "x.safetensors"))
        evaluate(tmp_path / "x.safetensors")


def test_cuda_without_cupy_is_a_clear_error(tmp_path, small_digits):
    from foldconv.backend import _cupy

    if _cupy() is not None:
        pytest.skip("CuPy is installed")
    with pytest.raises(ValueError, match="device: 'cuda' needs CuPy"):
        train("lenet5", small_digits, device="cuda", out=tmp_path)
    install = r"pip install 'foldconv\[cuda12\]' \(CUDA 12\) or 'foldconv\[cuda13\]'"
    with pytest.raises(ValueError, match="device: 'cuda:1' needs CuPy.*" + install):
        train("lenet5", small_digits, device="cuda:1", out=tmp_path)
    train("lenet5", small_digits, epochs=1, out=tmp_path, progress=False, verbose=False)
    for call in (
        lambda: evaluate(tmp_path, dataset=small_digits[1], device="cuda"),
        lambda: predict(tmp_path, small_digits[1].images[:2], device="cuda"),
    ):
        with pytest.raises(ValueError, match="device: 'cuda' needs CuPy.*" + install):
            call()
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda', got 'gpu'"):
        predict(tmp_path, small_digits[1].images[:2], device="gpu")


def test_checkpoint_metadata_format(tmp_path, small_digits):
    from safetensors import safe_open

    train("lenet5", small_digits, epochs=1, out=tmp_path, progress=False, verbose=False)
    with safe_open(str(tmp_path / "best.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == CHECKPOINT_FORMAT
        assert sorted(f.keys()) == sorted(lenet5().state_dict())
    info = json.loads(meta["foldconv"])
    assert info["input_hw"] == [28, 28] and info["image_hw"] == [8, 8]
    assert len(info["mean"]) == 1 and info["classes"] == [str(i) for i in range(10)]


def test_module_from_the_zoo_reloads_without_model_argument(tmp_path, small_digits):
    """A model built by a foldconv.models builder (here LeNet-5 for 32x32 inputs) is
    recorded by name and builder arguments, so evaluate/predict rebuild it."""
    model = lenet5(10, input_size=32, rng=0)
    summary = train(model, small_digits, epochs=1, out=tmp_path, progress=False, verbose=False)
    assert summary["config"]["model"] == "lenet5"
    net, info = load_checkpoint(tmp_path)
    assert info["input_hw"] == [32, 32] and net.classifier[0].weight.shape == (120, 576)
    r = evaluate(tmp_path, dataset=small_digits[1])
    assert r["accuracy"] == pytest.approx(summary["best_test_accuracy"])


def test_device_feed_staging_logic_with_a_stand_in_cupy(monkeypatch):
    """The pinned staging of batches, with stand-ins for CuPy (device arrays are NumPy
    arrays with ``set``) and cupyx.empty_pinned (no GPU here; tests/gpu runs the real one):
    one buffer per slot, grown when a batch is larger, reused only after the event recorded
    behind its last copy was waited on; each batch arrives intact."""
    import sys
    import types

    import foldconv.backend
    from foldconv.trainer.pipeline import _DeviceFeeder

    class DeviceArray(np.ndarray):
        def set(self, host):
            assert host.flags.c_contiguous and host.shape == self.shape
            self[...] = host

    events = []

    class Event:
        def __init__(self):
            self.recorded = self.waited = False
            events.append(self)

        def record(self):
            self.recorded = True

        def synchronize(self):
            assert self.recorded
            self.waited = True

    pinned = []

    def empty_pinned(shape, dtype):
        pinned.append(np.empty(shape, dtype))
        return pinned[-1]

    fake_cp = types.SimpleNamespace(
        empty=lambda shape, dtype: np.empty(shape, dtype).view(DeviceArray),
        asarray=lambda a: np.array(a).view(DeviceArray),
        cuda=types.SimpleNamespace(Event=Event),
    )
    monkeypatch.setattr(foldconv.backend, "cuda_module", lambda device="cuda": fake_cp)
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=empty_pinned))
    feed = _DeviceFeeder("cuda")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 1, 4, 4)).astype(np.float32) for n in (8, 8, 3, 16)]
    for i, x in enumerate(batches):
        y = np.arange(len(x), dtype=np.int64)
        xd, yd = feed(x[:, :, ::-1], "x"), feed(y, "y")  # a non-contiguous view too
        assert isinstance(xd, DeviceArray) and isinstance(yd, DeviceArray)
        np.testing.assert_array_equal(xd, x[:, :, ::-1])
        np.testing.assert_array_equal(yd, y)
        if i:  # the previous copies out of both buffers were waited for
            assert all(e.waited for e in events[: 2 * i])
    # x: 512 bytes, reused for 8 then 3 images, grown for 16; y: 64 bytes, then 128.
    assert [p.nbytes for p in pinned] == [512, 64, 1024, 128]
    assert feed(np.zeros((0, 1, 4, 4), np.float32), "x").shape == (0, 1, 4, 4)


def test_the_gpu_branch_of_step_and_evaluation_on_numpy_is_the_cpu_run(
    tmp_path, small_digits, monkeypatch
):
    """The trainer's GPU code path (one transfer in, the step queued, loss and correct
    stacked into one copy back; the evaluation's loss summed on the device) run on NumPy
    arrays, the device copies being identities: in float64 the CPU run's losses, accuracy
    and weights, exactly."""
    import foldconv.trainer.evaluation as evaluation
    from foldconv.trainer import _Run

    class Identity:
        def __init__(self, device):
            pass

        def __call__(self, a, slot):
            return a

    data = tuple(
        ArrayDataset(d.images.astype(np.float64), d.labels, classes=d.classes) for d in small_digits
    )

    def run(gpu_branch, out):
        losses = {}
        r = _Run(
            model=lenet5(10, rng=np.random.default_rng(0), dtype=np.float64),
            dataset=data,
            data_dir=None,
            overrides=dict(epochs=2, batch_size=32, seed=0),
            device="cpu",
            out=out,
            resume=None,
            progress=False,
            download=False,
            verbose=False,
            on_step=lambda info: losses.__setitem__(info["step"], info["loss"]),
        )
        if gpu_branch:
            r.device, r.feed = "cuda", Identity("cuda")
            monkeypatch.setattr(evaluation, "_DeviceFeeder", Identity)
        return r.run(), losses

    ref, ref_losses = run(False, tmp_path / "cpu")
    got, got_losses = run(True, tmp_path / "gpu-branch")
    assert got_losses == ref_losses and len(ref_losses) == 20
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
        assert got[key] == ref[key], key
    wa = weights(tmp_path / "cpu" / "last.safetensors")
    wb = weights(tmp_path / "gpu-branch" / "last.safetensors")
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
