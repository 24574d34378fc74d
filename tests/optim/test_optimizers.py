"""Optimizers against torch.optim: same weights, same gradients, same parameters after.

The loss is a linear regression on a fresh seeded mini-batch per step plus a quadratic
in a third parameter; its gradients are written out here in NumPy and evaluated on each
side's own current weights, so both sides see the same gradient function.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foldconv.nn.module import Parameter
from foldconv.optim import SGD, Adam, AdamW, Optimizer, flatten_state, unflatten_state

torch = pytest.importorskip("torch")

STEPS = 20
TOL = 1e-10


def initial_weights(seed: int = 0, dtype=np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((3, 5)).astype(dtype),  # W
        rng.standard_normal(3).astype(dtype),  # b
        rng.standard_normal(4).astype(dtype),  # c
    ]


_A = np.array(
    [[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.1], [0.2, 0.0, 0.1, 0.5]]
)
_D = np.array([1.0, -2.0, 0.5, 3.0])


def gradients(weights: list[np.ndarray], step: int) -> list[np.ndarray]:
    """Gradients of 0.5/N ||X W^T + b - Y||^2 + 0.5 c^T A c - d^T c at ``weights``."""
    w, b, c = (np.asarray(a, dtype=np.float64) for a in weights)
    rng = np.random.default_rng(1000 + step)
    x = rng.standard_normal((8, 5))
    y = rng.standard_normal((8, 3))
    r = x @ w.T + b - y  # (N, 3)
    n = x.shape[0]
    return [r.T @ x / n, r.sum(axis=0) / n, _A @ c - _D]


def has_grad(step: int, index: int, sparse: bool) -> bool:
    # With ``sparse``, c gets no gradient on every third step (it must then be skipped).
    return not (sparse and index == 2 and step % 3 == 0)


def run_ours(opt: Optimizer, params: list[Parameter], steps: int, start: int = 0, sparse=False):
    for step in range(start, start + steps):
        opt.zero_grad()
        grads = gradients([p.data for p in params], step)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if has_grad(step, i, sparse):
                p.accumulate(g.astype(p.data.dtype))
        opt.step()
    return [p.data.copy() for p in params]


def run_torch(opt, tparams, steps: int, sparse=False):
    for step in range(steps):
        opt.zero_grad()
        grads = gradients([t.detach().numpy() for t in tparams], step)
        for i, (t, g) in enumerate(zip(tparams, grads, strict=True)):
            t.grad = torch.from_numpy(g.copy()) if has_grad(step, i, sparse) else None
        opt.step()
    return [t.detach().numpy().copy() for t in tparams]


def make_params(seed: int = 0, dtype=np.float64) -> list[Parameter]:
    return [Parameter(a) for a in initial_weights(seed, dtype)]


def make_tparams(seed: int = 0) -> list:
    return [torch.nn.Parameter(torch.from_numpy(a)) for a in initial_weights(seed)]


def assert_close(ours: list[np.ndarray], ref: list[np.ndarray], tol: float = TOL) -> None:
    for a, r in zip(ours, ref, strict=True):
        assert a.shape == r.shape
        scale = max(float(np.max(np.abs(r))), 1e-300)
        err = float(np.max(np.abs(a - r))) / scale
        assert err <= tol, f"relative error {err:.3g} > {tol:.1g}"


CLASSES = {"SGD": (SGD, "SGD"), "Adam": (Adam, "Adam"), "AdamW": (AdamW, "AdamW")}

CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True}),
    ("SGD", {"lr": 0.01, "maximize": True}),
    (
        "SGD",
        {"lr": 0.02, "momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-3, "maximize": True},
    ),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "betas": (0.9, 0.6), "amsgrad": True}),
    (
        "Adam",
        {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05, "amsgrad": True},
    ),
    ("Adam", {"lr": 0.01, "maximize": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "betas": (0.9, 0.7), "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.0}),
]


def config_id(cfg) -> str:
    name, kw = cfg
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "skip-none-grads"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_matches_torch(cfg, sparse):
    name, kw = cfg
    ours_cls, torch_name = CLASSES[name]
    params = make_params()
    ours = run_ours(ours_cls(params, **kw), params, STEPS, sparse=sparse)
    tparams = make_tparams()
    ref = run_torch(getattr(torch.optim, torch_name)(tparams, **kw), tparams, STEPS, sparse)
    assert_close(ours, ref)
    # The run must have moved the weights, or the comparison says nothing.
    assert np.max(np.abs(ours[0] - initial_weights()[0])) > 1e-3


def test_amsgrad_max_differs_from_second_moment():
    # Guards the amsgrad comparisons above (with a small beta2, where the running max
    # bites; with 0.999 the second moment only grows over 20 steps).
    params = make_params()
    opt = Adam(params, lr=0.01, betas=(0.9, 0.6), amsgrad=True)
    run_ours(opt, params, STEPS)
    state = opt.state[params[0]]
    assert state["step"] == STEPS
    assert np.any(state["max_exp_avg_sq"] > state["exp_avg_sq"])


def test_none_grad_is_skipped_without_state():
    params = make_params()
    opt = Adam(params, lr=0.1)
    before = [p.data.copy() for p in params]
    params[0].accumulate(np.ones_like(params[0].data))
    opt.step()
    assert not np.array_equal(params[0].data, before[0])
    np.testing.assert_array_equal(params[1].data, before[1])
    np.testing.assert_array_equal(params[2].data, before[2])
    assert params[1] not in opt.state and params[2] not in opt.state
    assert list(opt.state_dict()["state"]) == [0]


def test_zero_grad_sets_none():
    params = make_params()
    opt = SGD(params, lr=0.1)
    for p in params:
        p.accumulate(np.ones_like(p.data))
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    before = [p.data.copy() for p in params]
    opt.step()
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p.data, b)


def test_step_updates_in_place_and_returns_closure_loss():
    params = make_params()
    arrays = [p.data for p in params]
    opt = SGD(params, lr=0.1, momentum=0.9)
    calls = []

    def closure():
        calls.append(1)
        for p, g in zip(params, gradients([p.data for p in params], 0), strict=True):
            p.accumulate(g)
        return 1.25

    assert opt.step(closure) == 1.25
    assert calls == [1]
    for p, a in zip(params, arrays, strict=True):
        assert p.data is a
    assert not np.array_equal(arrays[0], initial_weights()[0])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_groups_and_lr_changes_match_torch(name):
    ours_cls, torch_name = CLASSES[name]
    if name == "SGD":
        defaults = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}
        extra = [{"lr": 0.1, "momentum": 0.5}, {"nesterov": True}]
    else:
        defaults = {"lr": 0.01, "weight_decay": 0.02}
        extra = [{"lr": 0.05, "betas": (0.8, 0.95)}, {"amsgrad": True}]

    def groups(ps):
        return [{"params": [ps[0]], **extra[0]}, {"params": [ps[1], ps[2]], **extra[1]}]

    def drive(opt, ps, is_torch):
        # Halve the first group's lr halfway through, from outside the optimizer.
        out = None
        for phase in range(2):
            if phase == 1:
                opt.param_groups[0]["lr"] *= 0.5
            if is_torch:
                for step in range(10 * phase, 10 * phase + 10):
                    opt.zero_grad()
                    gs = gradients([t.detach().numpy() for t in ps], step)
                    for t, g in zip(ps, gs, strict=True):
                        t.grad = torch.from_numpy(g.copy())
                    opt.step()
                out = [t.detach().numpy().copy() for t in ps]
            else:
                out = run_ours(opt, ps, 10, start=10 * phase)
        return out

    params = make_params()
    opt = ours_cls(groups(params), **defaults)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0]["lr"] == extra[0]["lr"]
    assert opt.param_groups[1]["lr"] == defaults["lr"]
    ours = drive(opt, params, False)
    tparams = make_tparams()
    ref = drive(getattr(torch.optim, torch_name)(groups(tparams), **defaults), tparams, True)
    assert_close(ours, ref)

    # A single-group run with the default lr must differ: the groups mattered.
    single = make_params()
    plain = run_ours(ours_cls(single, **defaults), single, STEPS)
    assert np.max(np.abs(plain[0] - ours[0])) > 1e-6


SAVE_CONFIGS = [
    (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.2}),
    (Adam, {"lr": 0.01, "betas": (0.9, 0.6), "amsgrad": True, "weight_decay": 0.01}),
    (AdamW, {"lr": 0.01, "betas": (0.8, 0.99)}),
]


@pytest.mark.parametrize("via_file", [False, True], ids=["dict", "safetensors+json"])
@pytest.mark.parametrize("cls,kw", SAVE_CONFIGS, ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_resume_equals_uninterrupted(cls, kw, via_file, tmp_path):
    sparse = True  # some parameters have no state at some point: still resumes exactly
    full_params = make_params()
    full = run_ours(cls(full_params, **kw), full_params, STEPS, sparse=sparse)

    params = make_params()
    opt = cls(params, **kw)
    run_ours(opt, params, 10, sparse=sparse)
    saved = opt.state_dict()
    if via_file:
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        arrays, meta = flatten_state(saved)
        safetensors_numpy.save_file(arrays, str(tmp_path / "opt.safetensors"))
        (tmp_path / "opt.json").write_text(json.dumps(meta))
        saved = unflatten_state(
            safetensors_numpy.load_file(str(tmp_path / "opt.safetensors")),
            json.loads((tmp_path / "opt.json").read_text()),
        )

    # A fresh model holding the same weights, and an optimizer built with other settings.
    params2 = [Parameter(p.data.copy()) for p in params]
    other = {"lr": 123.0}
    if cls is SGD:
        other.update(momentum=0.1)
    opt2 = cls(params2, **other)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    if "betas" in kw:
        assert opt2.param_groups[0]["betas"] == kw["betas"]
    resumed = run_ours(opt2, params2, 10, start=10, sparse=sparse)
    for a, b in zip(resumed, full, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_is_a_snapshot():
    params = make_params()
    opt = Adam(params, lr=0.01)
    run_ours(opt, params, 3)
    saved = opt.state_dict()
    m = saved["state"][0]["exp_avg"].copy()
    assert saved["state"][0]["step"] == 3
    assert saved["param_groups"][0]["params"] == [0, 1, 2]
    run_ours(opt, params, 2, start=3)
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], m)
    # Loading copies too: later steps leave the loaded dict alone.
    opt.load_state_dict(saved)
    run_ours(opt, params, 1)
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], m)


def test_flatten_unflatten_round_trip():
    params = make_params()
    opt = Adam([{"params": params[:1], "lr": 0.1}, {"params": params[1:]}], amsgrad=True)
    run_ours(opt, params, 4, sparse=True)
    sd = opt.state_dict()
    arrays, meta = flatten_state(sd, prefix="optimizer.")
    assert all(k.startswith("optimizer.state.") for k in arrays)
    assert all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays.values())
    assert "optimizer.state.0.exp_avg" in arrays and "optimizer.state.2.max_exp_avg_sq" in arrays
    meta = json.loads(json.dumps(meta))  # must be JSON-able
    # Extra entries (model weights sharing the file) are ignored.
    back = unflatten_state({**arrays, "features.0.weight": np.zeros(3)}, meta, prefix="optimizer.")
    assert set(back["state"]) == set(sd["state"])
    for idx, entries in sd["state"].items():
        assert set(back["state"][idx]) == set(entries)
        for name, value in entries.items():
            if isinstance(value, np.ndarray):
                assert back["state"][idx][name].dtype == value.dtype
                np.testing.assert_array_equal(back["state"][idx][name], value)
            else:
                assert back["state"][idx][name] == value
    assert len(back["param_groups"]) == 2
    for g_back, g in zip(back["param_groups"], sd["param_groups"], strict=True):
        assert g_back["params"] == g["params"]
        assert g_back["lr"] == g["lr"]
        assert tuple(g_back["betas"]) == g["betas"]

    with pytest.raises(ValueError, match="^arrays"):
        unflatten_state({}, meta, prefix="optimizer.")
    with pytest.raises(ValueError, match="^meta"):
        unflatten_state(arrays, {"state": {}})


def test_load_state_dict_mismatches_raise():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    run_ours(opt, params, 2)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="^state_dict"):
        SGD(make_params()[:2], lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError, match="^state_dict"):
        ps = make_params()
        SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="^state_dict"):
        other = [Parameter(np.zeros((5, 3))), *make_params()[1:]]
        SGD(other, lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError, match="^state_dict"):
        SGD(make_params(), lr=0.1).load_state_dict({"state": {}})


def test_float32_and_float16_keep_dtype():
    ref_params = make_params()
    ref = run_ours(Adam(ref_params, lr=0.01), ref_params, 5)
    for dtype, tol in ((np.float32, 1e-5), (np.float16, 5e-3)):
        params = make_params(dtype=dtype)
        opt = Adam(params, lr=0.01)
        out = run_ours(opt, params, 5)
        assert all(o.dtype == dtype for o in out)
        assert opt.state[params[0]]["exp_avg"].dtype == np.float32
        assert_close([o.astype(np.float64) for o in out], ref, tol=tol)


BAD = [
    (SGD, {"lr": -0.1}, ValueError, "lr"),
    (SGD, {"lr": float("nan")}, ValueError, "lr"),
    (SGD, {"momentum": -0.5}, ValueError, "momentum"),
    (SGD, {"weight_decay": -1.0}, ValueError, "weight_decay"),
    (SGD, {"dampening": "0.1"}, ValueError, "dampening"),
    (SGD, {"nesterov": True}, ValueError, "nesterov"),
    (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "nesterov"),
    (SGD, {"nesterov": "yes", "momentum": 0.9}, TypeError, "nesterov"),
    (SGD, {"maximize": 1}, TypeError, "maximize"),
    (Adam, {"lr": -1e-3}, ValueError, "lr"),
    (Adam, {"betas": (1.0, 0.999)}, ValueError, "betas"),
    (Adam, {"betas": (0.9, -0.1)}, ValueError, "betas"),
    (Adam, {"betas": (0.9,)}, ValueError, "betas"),
    (Adam, {"eps": -1e-8}, ValueError, "eps"),
    (Adam, {"weight_decay": -0.1}, ValueError, "weight_decay"),
    (Adam, {"amsgrad": None}, TypeError, "amsgrad"),
    (AdamW, {"betas": (0.9, 1.0)}, ValueError, "betas"),
    (AdamW, {"lr": -1e-3}, ValueError, "lr"),
    (AdamW, {"weight_decay": -1e-2}, ValueError, "weight_decay"),
]


@pytest.mark.parametrize("cls,kw,exc,arg", BAD, ids=[f"{b[0].__name__}-{b[3]}" for b in BAD])
def test_bad_hyperparameters_raise(cls, kw, exc, arg):
    with pytest.raises(exc, match=f"^{arg}:"):
        cls(make_params(), **kw)
    # The same check applies to a group's own value.
    with pytest.raises(exc, match=f"^{arg}:"):
        cls([{"params": make_params(), **kw}])


def test_bad_params_raise():
    with pytest.raises(ValueError, match="^params"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"^params\[0\]"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="^params"):
        SGD(Parameter(np.zeros(3)), lr=0.1)
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="^params"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="^params"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


@settings(max_examples=25)
@given(
    lr=st.floats(0.0, 0.2),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    dampening=st.floats(0.0, 1.0),
    weight_decay=st.floats(0.0, 0.1),
    nesterov=st.booleans(),
    maximize=st.booleans(),
)
def test_sgd_random_hyperparameters_match_torch(
    lr, momentum, dampening, weight_decay, nesterov, maximize
):
    if nesterov:
        dampening = 0.0
        momentum = momentum or 0.9
    kw = dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )
    params = make_params()
    ours = run_ours(SGD(params, **kw), params, STEPS)
    tparams = make_tparams()
    assert_close(ours, run_torch(torch.optim.SGD(tparams, **kw), tparams, STEPS))


@settings(max_examples=25)
@given(
    cls=st.sampled_from(["Adam", "AdamW"]),
    lr=st.floats(1e-4, 0.1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    weight_decay=st.floats(0.0, 0.2),
    amsgrad=st.booleans(),
)
def test_adam_random_hyperparameters_match_torch(cls, lr, beta1, beta2, eps, weight_decay, amsgrad):
    kw = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
    ours_cls, torch_name = CLASSES[cls]
    params = make_params()
    ours = run_ours(ours_cls(params, **kw), params, STEPS, sparse=True)
    tparams = make_tparams()
    ref = run_torch(getattr(torch.optim, torch_name)(tparams, **kw), tparams, STEPS, sparse=True)
    assert_close(ours, ref)


def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    try:
        cp.zeros(1)
    except Exception:  # pragma: no cover - CuPy without a usable GPU
        pytest.skip("CuPy cannot allocate on a GPU here")
    for cls, kw in SAVE_CONFIGS:
        cpu_params = make_params()
        ref = run_ours(cls(cpu_params, **kw), cpu_params, 10, sparse=True)
        gpu_params = [Parameter(cp.asarray(a)) for a in initial_weights()]
        opt = cls(gpu_params, **kw)
        for step in range(10):
            opt.zero_grad()
            grads = gradients([p.data.get() for p in gpu_params], step)
            for i, (p, g) in enumerate(zip(gpu_params, grads, strict=True)):
                if has_grad(step, i, True):
                    p.accumulate(cp.asarray(g))
            opt.step()
        assert all(type(p.data).__module__.startswith("cupy") for p in gpu_params)
        assert_close([p.data.get() for p in gpu_params], ref, tol=1e-12)


SGD_BLOCK_CONFIGS = [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05, "nesterov": False},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
    {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3, "maximize": True},
]


@pytest.mark.parametrize("kw", SGD_BLOCK_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_block_update_of_large_parameters_matches_torch_and_the_whole_array_update(
    kw, dtype, monkeypatch
):
    """Parameters over sgd._BLOCK elements are updated block by block (AlexNet's fc6):
    the same arithmetic per element, so bit for bit the whole-array update; and torch's
    result to rounding (torch's own kernels may contract or reorder)."""
    from foldconv.optim import sgd as sgd_module

    rng = np.random.default_rng(3)
    n = sgd_module._BLOCK * 2 + 12345  # two full blocks and a partial one
    w0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]

    def run(block):
        monkeypatch.setattr(sgd_module, "_BLOCK", block)
        p = Parameter(w0.copy())
        opt = SGD([p], **kw)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        return p.data

    blocked = run(sgd_module._BLOCK)
    whole = run(n + 1)  # one pass over the whole array
    np.testing.assert_array_equal(blocked, whole)
    # The compiled update (optim/sgd_compiled.py, when Numba is there) and the NumPy
    # blocks: the same operations per element, so the same bits.
    import foldconv

    was = foldconv.set_compiled(False)
    try:
        np.testing.assert_array_equal(run(sgd_module._BLOCK), blocked)
        np.testing.assert_array_equal(run(n + 1), blocked)
    finally:
        foldconv.set_compiled(was)
    # Runs of blocks go to foldconv's threads: the same bits at any thread count.
    from foldconv.functional import threads

    before, adaptive = threads.get_num_threads(), threads.set_adaptive(False)
    try:
        for count in (1, 2, 3):
            threads.set_num_threads(count)
            np.testing.assert_array_equal(run(sgd_module._BLOCK), blocked)
    finally:
        threads.set_num_threads(before)
        threads.set_adaptive(adaptive)
    tp = torch.tensor(w0.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], **kw)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    assert_close([blocked], [tp.detach().numpy()], tol=1e-6 if dtype == np.float32 else 1e-14)
    assert np.max(np.abs(blocked - w0)) > 1e-3  # the steps moved the weights


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf on purpose
@pytest.mark.parametrize("kw", SGD_BLOCK_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_compiled_update_is_the_numpy_update_bit_for_bit(kw, dtype):
    """Small parameters (one pass each), special values included, over steps; and
    hyperparameters given as NumPy float64 scalars (which make NumPy compute in float64)
    keep to the NumPy path's result."""
    pytest.importorskip("numba")
    import foldconv
    from foldconv.optim import sgd_compiled

    rng = np.random.default_rng(8)
    shapes = [(6, 1, 5, 5), (16,), (3, 7)]
    w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    w0[1][:4] = [np.inf, -0.0, np.nan, 1e-30]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    grads[1][2][0, :3] = [np.nan, -np.inf, -0.0]

    def run(compiled_on, cast=float):
        was = foldconv.set_compiled(compiled_on)
        try:
            params = [Parameter(w.copy()) for w in w0]
            opt = SGD(params, **{k: cast(v) if type(v) is float else v for k, v in kw.items()})
            for gs in grads:
                for p, g in zip(params, gs, strict=True):
                    p.grad = g.copy()
                assert sgd_compiled.applies(
                    (params[0].data, params[0].grad), opt.param_groups[0]
                ) == (compiled_on and cast is float)
                opt.step()
            buffers = [opt.state[p]["momentum_buffer"] for p in params if opt.state.get(p)]
            assert len(buffers) == (len(params) if kw.get("momentum") else 0)
            return [p.data for p in params] + buffers
        finally:
            foldconv.set_compiled(was)

    fast, plain = run(True), run(False)
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))
    for a, b in zip(run(True, np.float64), run(False, np.float64), strict=True):
        np.testing.assert_array_equal(a, b)
