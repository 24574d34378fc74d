"""Learning-rate schedules against torch.optim.lr_scheduler over many epochs."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from foldconv.nn.module import Parameter
from foldconv.optim import (
    SGD,
    Adam,
    CosineAnnealingLR,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)

torch = pytest.importorskip("torch")

EPOCHS = 50
LRS = (0.1, 0.02)  # two parameter groups with different learning rates


def ours_optimizer(lrs=LRS, cls=SGD, **kw):
    groups = [{"params": [Parameter(np.zeros(2))], "lr": lr} for lr in lrs]
    return cls(groups, **kw)


def torch_optimizer(lrs=LRS, cls=None, **kw):
    cls = cls or torch.optim.SGD
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return cls(groups, **kw)


def lr_sequence(opt, sched, epochs, metrics=None, is_torch=False):
    """Each epoch: optimizer step (no gradients: nothing moves), then scheduler step."""
    seq = [list(sched.get_last_lr())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(epochs):
            opt.step()
            if metrics is None:
                sched.step()
            else:
                sched.step(metrics[e])
            lrs = [float(g["lr"]) for g in opt.param_groups]
            assert [float(v) for v in sched.get_last_lr()] == lrs
            seq.append(lrs)
    return np.array(seq, dtype=np.float64)


SCHEDULES = [
    ("StepLR", {"step_size": 7, "gamma": 0.5}),
    ("StepLR", {"step_size": 1, "gamma": 0.9}),
    ("MultiStepLR", {"milestones": [5, 15, 15, 30], "gamma": 0.3}),
    ("MultiStepLR", {"milestones": [40, 10], "gamma": 0.5}),
    ("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.001}),
    ("CosineAnnealingLR", {"T_max": 50}),
    ("CosineAnnealingLR", {"T_max": 7}),
    ("CosineAnnealingLR", {"T_max": 1, "eta_min": 0.005}),
]
OURS = {"StepLR": StepLR, "MultiStepLR": MultiStepLR, "CosineAnnealingLR": CosineAnnealingLR}


@pytest.mark.parametrize(
    "name,kw", SCHEDULES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in SCHEDULES]
)
def test_schedule_matches_torch(name, kw):
    opt = ours_optimizer()
    ours = lr_sequence(opt, OURS[name](opt, **kw), EPOCHS)
    topt = torch_optimizer()
    ref = lr_sequence(topt, getattr(torch.optim.lr_scheduler, name)(topt, **kw), EPOCHS)
    assert ours.shape == ref.shape == (EPOCHS + 1, len(LRS))
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ours[0], LRS)
    # The schedule must have changed the lr, or the comparison says nothing.
    assert len(np.unique(ours[:, 0])) >= 2


def test_cosine_first_half_period_is_the_closed_form():
    t_max, eta_min = 20, 0.001
    opt = ours_optimizer()
    seq = lr_sequence(opt, CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min), t_max)
    e = np.arange(t_max + 1)[:, None]
    closed = eta_min + (np.array(LRS) - eta_min) * (1 + np.cos(np.pi * e / t_max)) / 2
    np.testing.assert_allclose(seq, closed, rtol=1e-12, atol=1e-15)


def test_scheduler_drives_optimizer_like_torch():
    # Adam + cosine schedule, 20 steps on a quadratic: the parameters agree with torch.
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(6)
    a = rng.standard_normal((6, 6))
    a = a @ a.T + np.eye(6)
    d = rng.standard_normal(6)
    p = Parameter(w0.copy())
    opt = Adam([p], lr=0.05)
    sched = CosineAnnealingLR(opt, T_max=8, eta_min=0.001)
    t = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.Adam([t], lr=0.05)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=8, eta_min=0.001)
    for _ in range(20):
        opt.zero_grad()
        p.accumulate(a @ p.data - d)
        opt.step()
        sched.step()
        t.grad = torch.from_numpy(a @ t.detach().numpy() - d)
        topt.step()
        tsched.step()
    ref = t.detach().numpy()
    assert np.max(np.abs(p.data - ref)) <= 1e-10 * np.max(np.abs(ref))
    assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def scripted_metrics(n: int = EPOCHS) -> list[float]:
    """Improves, plateaus, improves by less than the threshold, oscillates, improves."""
    out = []
    for e in range(n):
        if e < 8:
            out.append(1.0 - 0.05 * e)
        elif e < 20:
            out.append(0.65 + 0.01 * (e % 3))  # plateau with noise
        elif e < 28:
            out.append(0.65 * (1 - 1e-6 * (e - 19)))  # below the default rel threshold
        elif e < 35:
            out.append(0.6 - 0.02 * (e - 28))
        else:
            out.append(0.5 + 0.03 * math.sin(e))
    return out


PLATEAU = [
    {"patience": 2},
    {"patience": 1, "cooldown": 2, "factor": 0.5, "min_lr": 0.004},
    {"patience": 0, "cooldown": 1, "factor": 0.5, "min_lr": [0.01, 0.0001]},
    {"patience": 3, "threshold": 0.02, "threshold_mode": "abs"},
    {"mode": "max", "patience": 2, "factor": 0.3},
    {"mode": "max", "patience": 1, "threshold": 0.01, "threshold_mode": "abs", "cooldown": 3},
    {"patience": 0, "factor": 0.5, "eps": 1e-3},
    {"patience": 1, "factor": 0.0, "min_lr": 0.001},
]


@pytest.mark.parametrize("kw", PLATEAU, ids=[str(i) for i in range(len(PLATEAU))])
def test_reduce_on_plateau_matches_torch(kw):
    metrics = scripted_metrics()
    if kw.get("mode") == "max":
        metrics = [-m for m in metrics]
    opt = ours_optimizer()
    # Numbers and 0-d arrays are both accepted as the metric.
    mixed = [np.float64(m) if i % 2 else np.array(m) for i, m in enumerate(metrics)]
    ours = lr_sequence(opt, ReduceLROnPlateau(opt, **kw), EPOCHS, mixed)
    topt = torch_optimizer()
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    ref = lr_sequence(topt, tsched, EPOCHS, metrics)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    # The script must trigger reductions (several, unless factor 0 jumps to min_lr at once).
    assert len(np.unique(ours[:, 0])) >= (2 if kw.get("factor") == 0.0 else 3)


def test_reduce_on_plateau_reaches_min_lr_and_respects_cooldown():
    opt = ours_optimizer()
    sched = ReduceLROnPlateau(opt, patience=1, cooldown=2, factor=0.5, min_lr=0.004)
    seq = lr_sequence(opt, sched, 30, [1.0] * 30)  # never improves after the first epoch
    first = seq[:, 0]
    assert first.min() == 0.004
    assert seq[:, 1].min() == 0.004  # the second group starts at 0.02 and is clamped too
    drops = np.flatnonzero(np.diff(first) < 0) + 1
    # Patience 1 -> first drop at epoch 3; afterwards 2 cooldown + 2 bad epochs apart.
    assert drops[0] == 3
    assert set(np.diff(drops)) == {4}


def reduce_kwargs():
    return {"patience": 1, "cooldown": 2, "factor": 0.5, "min_lr": 0.001}


RESUMABLE = [
    (lambda o: StepLR(o, step_size=6, gamma=0.5), None),
    (lambda o: MultiStepLR(o, milestones=[10, 25, 25], gamma=0.2), None),
    (lambda o: CosineAnnealingLR(o, T_max=15, eta_min=0.002), None),
    (lambda o: ReduceLROnPlateau(o, **reduce_kwargs()), scripted_metrics()),
]


@pytest.mark.parametrize(
    "build,metrics", RESUMABLE, ids=["StepLR", "MultiStepLR", "Cosine", "Plateau"]
)
def test_state_dict_resume_equals_uninterrupted(build, metrics):
    opt = ours_optimizer()
    full = lr_sequence(opt, build(opt), EPOCHS, metrics)

    opt = ours_optimizer()
    sched = build(opt)
    lr_sequence(opt, sched, 20, metrics)
    opt_state = opt.state_dict()
    sched_state = json.loads(json.dumps(sched.state_dict()))  # JSON-able, and survives it

    opt2 = ours_optimizer(lrs=(0.7, 0.7))
    sched2 = build(opt2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert sched2.get_last_lr() == list(full[20])
    rest = lr_sequence(opt2, sched2, EPOCHS - 20, None if metrics is None else metrics[20:])
    np.testing.assert_array_equal(rest, full[20:])


def test_get_last_lr_is_a_copy():
    opt = ours_optimizer()
    sched = StepLR(opt, step_size=2)
    sched.get_last_lr()[0] = 5.0
    assert sched.get_last_lr() == list(LRS)
    assert opt.param_groups[0]["initial_lr"] == LRS[0]


def test_load_state_dict_missing_keys_raise():
    opt = ours_optimizer()
    with pytest.raises(ValueError, match="^state_dict"):
        StepLR(opt, step_size=2).load_state_dict({"last_epoch": 3})
    with pytest.raises(ValueError, match="^state_dict"):
        ReduceLROnPlateau(opt).load_state_dict({"best": 1.0})


BAD = [
    (StepLR, {"step_size": 0}, "step_size"),
    (StepLR, {"step_size": 2.5}, "step_size"),
    (StepLR, {"step_size": 3, "gamma": 0.0}, "gamma"),
    (StepLR, {"step_size": 3, "gamma": -0.1}, "gamma"),
    (MultiStepLR, {"milestones": [3, -1]}, "milestones"),
    (MultiStepLR, {"milestones": [1.5]}, "milestones"),
    (MultiStepLR, {"milestones": 5}, "milestones"),
    (MultiStepLR, {"milestones": [2], "gamma": -1.0}, "gamma"),
    (CosineAnnealingLR, {"T_max": 0}, "T_max"),
    (CosineAnnealingLR, {"T_max": 5, "eta_min": -1e-3}, "eta_min"),
    (ReduceLROnPlateau, {"mode": "avg"}, "mode"),
    (ReduceLROnPlateau, {"factor": 1.0}, "factor"),
    (ReduceLROnPlateau, {"factor": -0.1}, "factor"),
    (ReduceLROnPlateau, {"patience": -1}, "patience"),
    (ReduceLROnPlateau, {"threshold": -1e-4}, "threshold"),
    (ReduceLROnPlateau, {"threshold_mode": "pct"}, "threshold_mode"),
    (ReduceLROnPlateau, {"cooldown": -2}, "cooldown"),
    (ReduceLROnPlateau, {"min_lr": -1e-3}, "min_lr"),
    (ReduceLROnPlateau, {"min_lr": [0.0, 0.0, 0.0]}, "min_lr"),
    (ReduceLROnPlateau, {"eps": -1.0}, "eps"),
]


@pytest.mark.parametrize("cls,kw,arg", BAD, ids=[f"{b[0].__name__}-{b[2]}" for b in BAD])
def test_bad_arguments_raise(cls, kw, arg):
    with pytest.raises(ValueError, match=f"^{arg}:"):
        cls(ours_optimizer(), **kw)


@pytest.mark.parametrize("cls,kw", [(StepLR, {"step_size": 2}), (ReduceLROnPlateau, {})])
def test_optimizer_must_be_ours(cls, kw):
    with pytest.raises(TypeError, match="^optimizer:"):
        cls(torch_optimizer(), **kw)


def test_plateau_metric_must_be_a_number():
    sched = ReduceLROnPlateau(ours_optimizer())
    with pytest.raises(TypeError, match="^metric:"):
        sched.step("low")
