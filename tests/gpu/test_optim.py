"""Optimizers on CuPy parameters (foldconv.cuda.optim's fused kernels) against the CPU path:
every option, state moved between devices, schedules, float16, a few training steps of
a small foldconv.nn model; bitwise run to run."""

import json

import numpy as np
import pytest

from foldconv import nn
from foldconv.nn.module import Parameter
from foldconv.optim import (
    SGD,
    Adam,
    AdamW,
    ReduceLROnPlateau,
    StepLR,
    flatten_state,
    unflatten_state,
)
from tests.gpu.conftest import to_cpu

SHAPES = [(3, 5), (7,), (2, 1, 3), (64, 300)]
STEPS = 5
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}

SGD_OPTIONS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.8, "nesterov": True},
    {"weight_decay": 0.05},
    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.05, "maximize": True},
    {"momentum": 0.7, "nesterov": True, "weight_decay": 0.02, "maximize": True},
]
ADAM_OPTIONS = [
    {},
    {"amsgrad": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "amsgrad": True, "maximize": True},
    {"betas": (0.5, 0.9), "eps": 1e-3, "maximize": True},
]
CASES = [(SGD, o, 0.1) for o in SGD_OPTIONS] + [
    (cls, o, 0.01) for cls in (Adam, AdamW) for o in ADAM_OPTIONS
]


def _grads(step, dtype):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _initial(dtype):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _run(make, dtype, xp, steps=STEPS, scheduler=False):
    """``steps`` steps from the same start with the same gradients; arrays of ``xp``."""
    params = [Parameter(xp.asarray(a)) for a in _initial(dtype)]
    opt = make(params)
    sched = StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    for step in range(steps):
        opt.zero_grad()
        for p, g in zip(params, _grads(step, dtype), strict=True):
            p.accumulate(xp.asarray(g))
        opt.step()
        if sched is not None:
            sched.step()
    return params, opt


def _check_close(got, ref):
    got = to_cpu(got)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = TOL[np.dtype(np.float32) if ref.dtype == np.float16 else ref.dtype]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * float(np.max(np.abs(ref))))


def _check_states(got_opt, ref_opt, tol):
    got, ref = got_opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert got.keys() == ref.keys()
    for idx, entries in ref.items():
        assert got[idx].keys() == entries.keys()
        for name, value in entries.items():
            if hasattr(value, "shape"):
                assert type(got[idx][name]).__module__.split(".")[0] == "cupy"
                np.testing.assert_allclose(to_cpu(got[idx][name]), value, rtol=tol, atol=tol)
            else:
                assert got[idx][name] == value


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls,options,lr", CASES, ids=str)
def test_optimizer_matches_cpu(cp, cls, options, lr, dtype):
    def make(p):
        return cls(p, lr=lr, **options)

    ref_params, ref_opt = _run(make, dtype, np)
    params, opt = _run(make, dtype, cp)
    for p, r in zip(params, ref_params, strict=True):
        assert type(p.data).__module__.split(".")[0] == "cupy"
        _check_close(p.data, r.data)
    _check_states(opt, ref_opt, 1e-4 if dtype == np.float32 else 1e-9)
    again, _ = _run(make, dtype, cp)
    for p, q in zip(params, again, strict=True):
        np.testing.assert_array_equal(to_cpu(p.data), to_cpu(q.data))  # run to run


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "cls,options,lr", [CASES[5], CASES[6], CASES[len(SGD_OPTIONS) + 3], CASES[-2]], ids=str
)
def test_updates_equal_the_cpu_path_bit_for_bit(cp, cls, options, lr, dtype):
    # The kernels round each product, quotient and square root once (no FMA contraction),
    # in the CPU path's order: the same bits, not just within tolerance.
    def make(p):
        return cls(p, lr=lr, **options)

    ref_params, _ = _run(make, dtype, np)
    params, _ = _run(make, dtype, cp)
    for p, r in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(to_cpu(p.data), r.data)


def test_float16_parameters(cp):
    for make in (
        lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda p: AdamW(p, lr=0.01, amsgrad=True),
    ):
        ref_params, _ = _run(make, np.float16, np)
        params, opt = _run(make, np.float16, cp)
        for p, r in zip(params, ref_params, strict=True):
            got = to_cpu(p.data)
            assert got.dtype == np.float16
            np.testing.assert_allclose(got, r.data, rtol=1e-3, atol=1e-3)
        state = next(iter(opt.state.values()))
        assert all(v.dtype == np.float32 for v in state.values() if hasattr(v, "dtype"))


def test_learning_rate_schedule(cp):
    for make in (lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.01)):
        ref_params, ref_opt = _run(make, np.float32, np, scheduler=True)
        params, opt = _run(make, np.float32, cp, scheduler=True)
        # Five epochs of StepLR(step_size=2, gamma=0.5): a quarter of the first lr.
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        assert ref_opt.param_groups[0]["lr"] == ref_opt.defaults["lr"] / 4
        for p, r in zip(params, ref_params, strict=True):
            _check_close(p.data, r.data)


def test_plateau_schedule_takes_a_device_loss(cp):
    opt = SGD([Parameter(cp.zeros(3))], lr=1.0)
    sched = ReduceLROnPlateau(opt, patience=0, factor=0.5)
    sched.step(cp.asarray(1.0))  # a 0-d loss on the GPU: read once, as a float
    sched.step(cp.asarray(2.0))
    assert opt.param_groups[0]["lr"] == 0.5
    assert isinstance(sched.best, float)
    json.dumps(sched.state_dict())


def test_state_moves_between_cpu_and_gpu(cp):
    # Two steps on one device, the state saved (through flatten_state, as checkpoints do)
    # and loaded on the other, two more there: the same as four steps on the CPU.
    for make in (
        lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: Adam(p, lr=0.01, amsgrad=True),
    ):
        ref, _ = _run(make, np.float64, np, steps=4)
        for first, second in ((cp, np), (np, cp)):
            params, opt = _run(make, np.float64, first, steps=2)
            arrays, meta = flatten_state(opt.state_dict())
            assert all(isinstance(a, np.ndarray) for a in arrays.values())
            moved = [Parameter(second.asarray(to_cpu(p.data))) for p in params]
            opt2 = make(moved)
            opt2.load_state_dict(unflatten_state(arrays, meta))
            for state in opt2.state.values():
                for v in state.values():
                    if hasattr(v, "shape"):
                        assert type(v) is type(moved[0].data)  # on the parameters' device
            for step in range(2, 4):
                opt2.zero_grad()
                for p, g in zip(moved, _grads(step, np.float64), strict=True):
                    p.accumulate(second.asarray(g))
                opt2.step()
            for p, r in zip(moved, ref, strict=True):
                _check_close(p.data, r.data)


def _model(dtype):
    return nn.Sequential(
        nn.Linear(6, 16, dtype=dtype, rng=1),
        nn.ReLU(),
        nn.Linear(16, 4, dtype=dtype, rng=2),
    )


def _train(model, make_opt, xp, dtype, steps=3):
    rng = np.random.default_rng(3)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.05)
    opt = make_opt(list(model.parameters()))
    losses = []
    for _ in range(steps):
        x = xp.asarray(rng.standard_normal((32, 6)).astype(dtype))
        t = xp.asarray(rng.integers(0, 4, 32))
        opt.zero_grad()
        loss = criterion(model(x), t)
        model.backward(criterion.backward())
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_model_trains_as_on_the_cpu(cp, dtype):
    for make in (
        lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda p: Adam(p, lr=0.01),
    ):
        ref_model, model = _model(dtype), _model(dtype).to("cuda")
        ref_losses = _train(ref_model, make, np, dtype)
        losses = _train(model, make, cp, dtype)
        tol = TOL[np.dtype(dtype)]
        np.testing.assert_allclose(losses, ref_losses, rtol=tol)
        for p, r in zip(model.parameters(), ref_model.parameters(), strict=True):
            _check_close(p.data, r.data)
        again = _model(dtype).to("cuda")
        _train(again, make, cp, dtype)
        for p, q in zip(model.parameters(), again.parameters(), strict=True):
            np.testing.assert_array_equal(to_cpu(p.data), to_cpu(q.data))
