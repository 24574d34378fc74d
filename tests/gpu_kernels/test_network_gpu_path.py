"""A whole network on the GPU path: every layer's kernel, the loss kernel and the fused
optimizer update together, for a few training steps, against the CPU path (simulated
kernels in CI; on a machine with a GPU, the same kernels on the GPU)."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from foldconv import nn, optim  # noqa: E402
from foldconv.cuda.launch import Kernel  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402
from foldconv.models import lenet5  # noqa: E402


def _small_alexnet_like(dtype):
    """AlexNet's kinds of layer at toy size: a strided stem, grouped conv, LRN,
    overlapping max-pooling, dropout off (eval-free comparison needs the same masks)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2, dtype=dtype, rng=1),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, dtype=dtype, rng=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, dtype=dtype, rng=3),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10, dtype=dtype, rng=4),
    )


def _train(model, x, y, steps, gpu_path, opt="sgd"):
    params = list(model.parameters())
    if opt == "sgd":
        o = optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        o = optim.Adam(params, lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        if gpu_path:
            with gpu_path_on_cpu():
                losses.append(_step(model, o, loss_fn, x, y))
        else:
            losses.append(_step(model, o, loss_fn, x, y))
    return np.array(losses), [p.data.copy() for p in params]


def _step(model, o, loss_fn, x, y):
    o.zero_grad()
    logits = model(x)
    loss = loss_fn(logits, y)
    model.backward(loss_fn.backward())
    o.step()
    return float(loss)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "build, shape, opt",
    [
        (lambda dt: lenet5(10, input_size=12, dtype=dt, rng=0), (3, 1, 12, 12), "sgd"),
        (_small_alexnet_like, (2, 3, 15, 15), "adam"),
    ],
)
def test_training_steps_on_the_gpu_path_follow_the_cpu_path(build, shape, opt, dtype, monkeypatch):
    launched = set()
    call = Kernel.__call__

    def counting(self, n, *args):
        launched.add(self.py_func.__module__.rsplit(".", 1)[-1])
        return call(self, n, *args)

    monkeypatch.setattr(Kernel, "__call__", counting)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, 10, shape[0])
    cpu_losses, cpu_params = _train(build(dtype), x, y, 3, gpu_path=False, opt=opt)
    gpu_losses, gpu_params = _train(build(dtype), x, y, 3, gpu_path=True, opt=opt)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=tol)
    for a, b in zip(gpu_params, cpu_params, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))
    assert cpu_losses[-1] != cpu_losses[0]  # the steps really changed the weights
    # The GPU path's own kernels ran (not the CPU code under another name):
    expected = {"kernels_conv", "pooling", "loss", "optim"}
    if opt == "adam":
        expected.add("lrn")
    assert expected <= launched, launched
