"""The fused optimizer kernels (foldconv.cuda.optim) against the CPU path, in Numba's CUDA
simulator (or on the GPU where there is one): the same parameters, bit for bit, after
several steps of every optimizer and option combination."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from foldconv.cuda import simulated  # noqa: E402
from foldconv.cuda.testing import gpu_path_on_cpu  # noqa: E402
from foldconv.nn.module import Parameter  # noqa: E402
from foldconv.optim import SGD, Adam, AdamW, StepLR  # noqa: E402

STEPS = 4
SHAPES = [(3, 5), (7,), (2, 1, 3)]


def _grads(step, dtype):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _params(dtype):
    rng = np.random.default_rng(0)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def _run(make, dtype, gpu, steps=STEPS, skip=None, scheduler=False):
    params = _params(dtype)
    opt = make(params)
    sched = StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    for step in range(steps):
        opt.zero_grad()
        for i, (p, g) in enumerate(zip(params, _grads(step, dtype), strict=True)):
            if skip is None or not skip(step, i):
                p.accumulate(g)
        if gpu:
            with gpu_path_on_cpu():
                opt.step()
        else:
            opt.step()
        if sched is not None:
            sched.step()
    return [p.data for p in params], opt


def _check(make, dtype, **kw):
    ref, ref_opt = _run(make, dtype, gpu=False, **kw)
    got, got_opt = _run(make, dtype, gpu=True, **kw)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == b.dtype
        if simulated():  # the same NumPy scalar operations in the same order
            np.testing.assert_array_equal(a, b)
        else:
            tol = 1e-10 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))
    ref_state, got_state = ref_opt.state_dict()["state"], got_opt.state_dict()["state"]
    assert ref_state.keys() == got_state.keys()
    for idx, entries in ref_state.items():
        assert entries.keys() == got_state[idx].keys()
        for name, value in entries.items():
            if hasattr(value, "shape"):
                np.testing.assert_allclose(got_state[idx][name], value, rtol=1e-5, atol=1e-6)
            else:
                assert got_state[idx][name] == value


SGD_OPTIONS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.8, "nesterov": True},
    {"weight_decay": 0.05},
    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.05, "maximize": True},
    {"momentum": 0.7, "nesterov": True, "weight_decay": 0.02, "maximize": True},
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_matches_cpu(options, dtype):
    _check(lambda p: SGD(p, lr=0.1, **options), dtype)


ADAM_OPTIONS = [
    {},
    {"amsgrad": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "amsgrad": True, "maximize": True},
    {"betas": (0.5, 0.9), "eps": 1e-3, "maximize": True},
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_matches_cpu(cls, options, dtype):
    _check(lambda p: cls(p, lr=0.01, **options), dtype)


def test_parameters_without_gradient_are_skipped():
    # The last parameter has no gradient on every other step: no update, no state.
    def skip(step, i):
        return i == 2 and step % 2 == 0

    _check(lambda p: SGD(p, lr=0.1, momentum=0.9), np.float64, skip=skip)
    _check(lambda p: Adam(p, lr=0.01, amsgrad=True), np.float64, skip=skip)


def test_float16_parameters_step_in_float32():
    _check(lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), np.float16)
    _check(lambda p: AdamW(p, lr=0.01), np.float16)


def test_learning_rate_schedule():
    _check(lambda p: SGD(p, lr=0.1, momentum=0.9), np.float32, scheduler=True)
    _check(lambda p: Adam(p, lr=0.01), np.float32, scheduler=True)


def test_amsgrad_switched_on_after_some_steps():
    def run(gpu):
        params = _params(np.float64)
        opt = Adam(params, lr=0.01)
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["amsgrad"] = True
            opt.zero_grad()
            for p, g in zip(params, _grads(step, np.float64), strict=True):
                p.accumulate(g)
            if gpu:
                with gpu_path_on_cpu():
                    opt.step()
            else:
                opt.step()
        return [p.data for p in params]

    for a, b in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_state_dict_moves_between_paths():
    # Two steps on one path, the state saved and loaded into a fresh optimizer that takes
    # two more on the other path: the same as four steps on the CPU.
    for make in (
        lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: Adam(p, lr=0.01, amsgrad=True),
    ):
        ref, _ = _run(make, np.float64, gpu=False, steps=4)
        for first_gpu in (True, False):
            params, opt = _run(make, np.float64, gpu=first_gpu, steps=2)
            fresh = [Parameter(d.copy()) for d in params]
            opt2 = make(fresh)
            opt2.load_state_dict(opt.state_dict())
            for step in range(2, 4):
                opt2.zero_grad()
                for p, g in zip(fresh, _grads(step, np.float64), strict=True):
                    p.accumulate(g)
                if first_gpu:
                    opt2.step()
                else:
                    with gpu_path_on_cpu():
                        opt2.step()
            for a, b in zip(fresh, ref, strict=True):
                np.testing.assert_allclose(a.data, b, rtol=1e-12, atol=0)


def test_non_contiguous_parameter_is_updated_in_place():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 4))
    ref = Parameter(base.T.copy())
    view = Parameter(base.T)  # Fortran-ordered data
    g = rng.standard_normal((4, 5))
    for p in (ref, view):
        p.accumulate(g)
    SGD([ref], lr=0.1, momentum=0.9).step()
    with gpu_path_on_cpu():
        SGD([view], lr=0.1, momentum=0.9).step()
    np.testing.assert_array_equal(view.data, ref.data)
    np.testing.assert_array_equal(base.T, ref.data)  # the update reached the caller's array
