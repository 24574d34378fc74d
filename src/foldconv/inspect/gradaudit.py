"""``foldconv.gradcheck``: every hand-written backward of a model against float64 central
finite differences.

What is checked
---------------
The model itself and, with ``submodules=True``, every module it calls (containers and
leaves), each on its own: the model's input gradient and all its parameters' gradients
at once, each leaf's input gradient and each of its parameters' gradients, and each
inner container's input gradient (its backward routes δ to its children; their
parameters are checked in the leaves). For a module f with input x and parameters θ,
the scalar L = <r, f(x)> for a fixed random r (standard normal, the output's shape) has
the gradients that ``f.backward(r)`` must return (dL/dx) and accumulate (dL/dθ). Each
is compared with central differences (L(· + h) - L(· - h)) / 2h, h = ``eps``, in
float64:

- along ``directions`` random directions v of the whole array (standard normal times
  the array's RMS, so that a step moves weights of any scale by the same fraction): the
  error |FD - <g, v>| / max(|FD|, |<g, v>|, ||g||) sees every entry at once, so a
  gradient off by a factor, transposed, or wrong in a single channel fails;
- at ``coordinates`` single entries: the largest |g|, the first and the last (where
  padding and boundary bugs live) and random ones, the error |FD_i - g_i| / max|g|.

The reported error of an array is the worst of the two; it passes at <= ``rtol``. In
float64 a correct backward agrees with the differences to 1e-8 or better on every layer
of the model zoo checked on its own (truncation h² f(3) / 6 ~ 1e-12, rounding
1e-16·|L| / h), so the default ``rtol = 1e-6`` leaves a margin and fails any mistake
larger than that (the tests catch a weight gradient off by 0.01 %). The one measured
exception is a badly conditioned whole model: ``alexnet_paper`` with the paper's init
feels its input so little (||dL/dx|| ~ 1e-3·|L|) that its input gradient is checked to
only 5e-7 to 1e-6, rounding limiting small steps and ReLU kinks large ones.

Kinks and randomness
--------------------
ReLU at 0 and max-pool ties are points where L has no derivative; a difference that
straddles one is wrong by up to the jump. A leaf's check runs at the input it received
in the model's forward plus Gaussian noise of 0.1x that input's standard deviation, so
that no input sits exactly on a kink (the zeros a ReLU hands a max pool are exact ties);
kinks then lie at random distances, and a step of h crosses one with probability of
order h. The other limit is rounding: the differences carry an error of about
1e-16·|L| / h, which matters where the gradient is small beside L (AlexNet with the
paper's N(0, 0.01²) weights barely feels its input: single-pixel differences there were
off by 5e-5 of max|g| at h = 1e-6). So a measurement that fails is repeated with 10h,
100h and 1000h (rounding error / 10, / 100, / 1000, while the truncation error
h² f(3) / 6 stays small) and h / 10 (a kink straddled by h may not be by h / 10), and
the best is kept: a wrong gradient is as wrong at every h, so this costs no strictness.
A failing direction is moreover replaced by a fresh one, up to ``directions`` draws (a
wrong gradient fails every direction, a kink only the directions that cross it). The
model's own check runs at the ``x`` given. Random layers (Dropout in training) become fixed
functions: every NumPy generator the modules hold, foldconv's global one and NumPy's
legacy one are rewound to the same state before each forward, so each forward draws the
same mask. Batch norm is checked in the mode the model is in (batch statistics in
training).

The model is not changed: the check runs on a private float64 copy (parameters already
float64 are shared and every perturbation is undone exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.inspect._trace import RandomState, is_array, private_copy, traced_forward
from foldconv.nn.module import Module, Parameter

_JITTER = 0.1


@dataclass
class ArrayCheck:
    """One gradient's check: ``name`` is 'input', a parameter's name, or 'params' (all of
    a container's parameters at once)."""

    name: str
    shape: tuple[int, ...]
    error: float
    passed: bool
    detail: str = ""


@dataclass
class LayerCheck:
    """The checks of one module; ``skipped`` says why a module was not checked."""

    name: str
    type: str
    depth: int
    checks: list[ArrayCheck] = field(default_factory=list)
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class GradcheckResult:
    """What :func:`gradcheck` returns; ``str()`` gives the table, ``passed`` the verdict.

    Attributes
    ----------
    layers : list of LayerCheck
        The model first ('' name), then its modules in ``named_modules`` order.
    rtol, eps : float
    """

    model: str
    layers: list[LayerCheck]
    rtol: float
    eps: float

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    @property
    def failures(self) -> list[str]:
        """Names (dotted, the model's class name for the model) of the failing modules."""
        return [(lc.name or self.model) for lc in self.layers if not lc.passed]

    def __str__(self) -> str:
        return format_gradcheck(self)


def _flat(a: Any) -> Any:
    return a.reshape(-1)


class _Checker:
    def __init__(self, rtol: float, eps: float, directions: int, coordinates: int, rng) -> None:
        self.rtol, self.eps = rtol, eps
        self.directions, self.coordinates = directions, coordinates
        self.rng = rng
        # A failing measurement is repeated with larger steps (rounding noise / h
        # shrinks) and a smaller one (a kink straddled by h may not be by h / 10).
        self.steps = (eps, 10 * eps, 100 * eps, 1000 * eps, eps / 10)

    def check(
        self,
        module: Module,
        x: Any,
        groups: list[tuple[str, list[Parameter]]],
        state: RandomState,
    ) -> list[ArrayCheck]:
        xp = get_array_module(x)
        state.rewind()
        y = module(x)
        if not is_array(y) or y.dtype.kind != "f":
            raise _Skip(f"forward returned {type(y).__name__}, not a float array")
        r = xp.asarray(self.rng.standard_normal(tuple(y.shape)))
        every = [p for _, ps in groups for p in ps]
        for p in every:
            p.grad = None
        dx = module.backward(r)
        held = Parameter(x)  # the input, swapped like a parameter's data

        def loss() -> float:
            state.rewind()
            return float(xp.sum(r * module(held.data)))

        out = []
        if dx is None or not is_array(dx) or tuple(dx.shape) != tuple(x.shape):
            got = "None" if dx is None else str(tuple(getattr(dx, "shape", ())))
            out.append(
                ArrayCheck(
                    "input", tuple(x.shape), math.inf, False, f"backward returned shape {got}"
                )
            )
        else:
            out.append(self._compare("input", [held], [xp.asarray(dx, dtype=np.float64)], loss))
        for label, params in groups:
            grads = [
                xp.zeros_like(p.data) if p.grad is None else xp.asarray(p.grad, dtype=np.float64)
                for p in params
            ]
            check = self._compare(label, params, grads, loss)
            if len(params) > 1:
                check.shape = (sum(p.size for p in params),)
            if any(p.grad is None for p in params):
                check.detail = "backward left a gradient unset"
            out.append(check)
        return out

    # -- one gradient (possibly spread over several arrays) against differences -------------
    def _compare(self, name: str, slots: list[Parameter], grads: list[Any], loss) -> ArrayCheck:
        """Each slot's ``.data`` is replaced by perturbed copies and put back (the very
        same array, so nothing the user holds is written), or, for single entries,
        changed in place and restored exactly; ``loss()`` reads the slots."""
        xp = get_array_module(slots[0].data)
        shape = tuple(slots[0].shape)
        sizes = [int(p.size) for p in slots]
        if sum(sizes) == 0:
            return ArrayCheck(name, shape, 0.0, True)
        absmax = [float(xp.max(xp.abs(g))) if g.size else 0.0 for g in grads]
        norm = math.sqrt(sum(float(xp.vdot(g, g)) for g in grads))
        gmax = max(absmax)

        def along(v: list[Any], h: float) -> float:
            originals = [p.data for p in slots]
            # One buffer per array for both points (AlexNet's fc6 is 300 MB in float64):
            # (±h·d) + a rounds exactly as a ± h·d.
            bufs = [xp.empty_like(a) for a in originals]
            try:
                for p, a, d, b in zip(slots, originals, v, bufs, strict=True):
                    xp.multiply(d, h, out=b)
                    b += a
                    p.data = b
                plus = loss()
                for a, d, b in zip(originals, v, bufs, strict=True):
                    xp.multiply(d, -h, out=b)
                    b += a
                minus = loss()
            finally:
                for p, a in zip(slots, originals, strict=True):
                    p.data = a
            return (plus - minus) / (2 * h)

        def direction_error(v: list[Any], h: float) -> float:
            numeric = along(v, h)
            analytic = sum(float(xp.vdot(g, d)) for g, d in zip(grads, v, strict=True))
            scale = max(abs(numeric), abs(analytic), norm)
            return abs(numeric - analytic) / scale if scale > 0 else abs(numeric - analytic)

        scales = []
        for p in slots:
            rms = math.sqrt(float(xp.vdot(p.data, p.data)) / p.size) if p.size else 0.0
            scales.append(rms if rms > 0 else 1.0)
        worst_dir = math.inf
        for _ in range(self.directions):
            # Drawn in float32 (half the time for 100M-weight layers), used in float64
            # so that the step h·v is exact to float64 and <g, v> sees the same v. Each
            # array's part is scaled by its RMS, so that h moves every array by the same
            # relative amount (AlexNet's N(0, 0.01²) weights moved by 1e-6 in absolute
            # terms shift a hundred ReLUs across their kink).
            v = [
                xp.asarray(self.rng.standard_normal(tuple(p.shape), dtype=np.float32)).astype(
                    np.float64
                )
                * rms
                for p, rms in zip(slots, scales, strict=True)
            ]
            err = math.inf
            for h in self.steps:
                err = min(err, direction_error(v, h))
                if err <= self.rtol:
                    break
            worst_dir = min(worst_dir, err)
            if err <= self.rtol:
                break

        def at_entry(k: int, i: int, h: float) -> float:
            a = _flat(slots[k].data)
            old = a[i].copy()
            try:
                a[i] = old + h
                plus = loss()
                a[i] = old - h
                minus = loss()
            finally:
                a[i] = old
            return (plus - minus) / (2 * h)

        k_big = int(np.argmax(absmax))
        picks = [(k_big, int(xp.argmax(xp.abs(_flat(grads[k_big])))))]
        picks += [(0, 0), (len(slots) - 1, sizes[-1] - 1)]
        while len(picks) < max(self.coordinates, 3):
            k = int(self.rng.integers(len(slots)))
            picks.append((k, int(self.rng.integers(sizes[k]))))
        worst_coord = 0.0
        where = ""
        for k, i in dict.fromkeys(picks):
            g = float(_flat(grads[k])[i])
            errs = []
            for h in self.steps:
                numeric = at_entry(k, i, h)
                scale = max(gmax, abs(numeric))
                errs.append(abs(numeric - g) / scale if scale > 0 else abs(numeric - g))
                if errs[-1] <= self.rtol:
                    break
            err = min(errs)
            if err > worst_coord:
                worst_coord = err
                index = np.unravel_index(i, tuple(slots[k].shape))
                where = f"worst entry {tuple(int(j) for j in index)}"
        error = max(worst_dir, worst_coord)
        detail = where if worst_coord >= worst_dir else "worst along a random direction"
        return ArrayCheck(name, shape, error, error <= self.rtol, detail)


class _Skip(Exception):
    pass


def gradcheck(
    module: Module,
    x: Any,
    *,
    rtol: float = 1e-6,
    eps: float = 1e-6,
    directions: int = 3,
    coordinates: int = 4,
    submodules: bool = True,
    seed: int = 0,
) -> GradcheckResult:
    """Check ``module``'s backward (and each submodule's) against finite differences.

    Parameters
    ----------
    module : Module
        Any module with ``forward(x)`` and ``backward(grad_output)`` (returning dL/dx and
        accumulating parameter gradients), e.g. a model of ``foldconv.models`` or a
        user's own layer. It is not changed.
    x : ndarray, shape (N, *sample shape)
        The input to check the model at (converted to float64); a batch of 2 or more
        for batch norm in training. Avoid inputs sitting on
        a kink of the model itself (a ReLU model at x = 0); random normal inputs do.
    rtol : float
        Largest relative error that passes (see the module docstring).
    eps : float
        Step of the central differences.
    directions : int
        Random directions drawn per gradient (a failing one is replaced, up to this).
    coordinates : int
        Entries checked one by one per gradient.
    submodules : bool
        Check every module the forward calls as well, each on its own.
    seed : int
        Seeds the directions, coordinates, the output weights r and the noise.

    Returns
    -------
    GradcheckResult
        ``print()`` it for the table; ``.passed`` is the verdict and ``.failures`` names
        the failing modules.
    """
    if not isinstance(module, Module):
        raise TypeError(f"module: expected a foldconv Module, got {type(module).__name__}")
    if not is_array(x):
        try:
            x = np.asarray(x)
        except Exception:
            raise TypeError(f"x: expected an array, got {type(x).__name__}") from None
    if x.dtype.kind not in "fiu":
        raise TypeError(f"x: expected a real array, got dtype {x.dtype}")
    for name, value, low in (("rtol", rtol, 0.0), ("eps", eps, 0.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > low:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    for name, value in (("directions", directions), ("coordinates", coordinates)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    xp = get_array_module(x)
    x = xp.asarray(x, dtype=np.float64)
    work = private_copy(module, np.float64)
    state = RandomState(work)
    rng = np.random.default_rng(seed)
    checker = _Checker(float(rtol), float(eps), int(directions), int(coordinates), rng)
    names = dict(work.named_modules())
    try:
        trace = traced_forward(work, x, before=state.rewind)
        first_call = {}
        for call in trace.calls:
            first_call.setdefault(call.name, call)
        layers: list[LayerCheck] = []
        todo = list(names.items()) if submodules else [("", work)]
        for name, mod in todo:
            depth = 0 if name == "" else name.count(".") + 1
            lc = LayerCheck(name, type(mod).__name__, depth)
            layers.append(lc)
            call = first_call.get(name)
            if call is None:
                lc.skipped = "not called by the forward"
                continue
            if name == "":
                inp = x
            elif len(call.args) != 1 or not is_array(call.args[0]):
                lc.skipped = f"forward takes {len(call.args)} positional arguments, not one array"
                continue
            else:
                rec = xp.asarray(call.args[0], dtype=np.float64)
                if rec.dtype.kind != "f":
                    lc.skipped = "input is not a float array"
                    continue
                spread = float(xp.std(rec)) if rec.size else 0.0
                noise = xp.asarray(rng.standard_normal(tuple(rec.shape)))
                inp = rec + _JITTER * (spread if spread > 0 else 1.0) * noise
            leaf = not any(True for _ in mod.named_children())
            if leaf:
                groups = [(pn, [p]) for pn, p in mod._parameters.items() if p is not None]
            elif name == "":
                ps = list(mod.parameters())
                groups = [("params", ps)] if ps else []
            else:
                # A container's backward routes δ to its children: its input gradient
                # shows a routing mistake; the parameters' gradients are checked in the
                # leaves and, all at once, in the model's own check.
                groups = [(pn, [p]) for pn, p in mod._parameters.items() if p is not None]
            try:
                lc.checks = checker.check(mod, inp, groups, state)
            except _Skip as e:
                lc.skipped = str(e)
            except Exception as e:  # a user's forward or backward that crashes fails
                message = f"raised {type(e).__name__}: {e}"
                lc.checks = [ArrayCheck("backward", (), math.inf, False, message)]
    finally:
        state.rewind()  # the global generators back where the user left them
    return GradcheckResult(type(module).__name__, layers, float(rtol), float(eps))


def format_gradcheck(result: GradcheckResult) -> str:
    """The table: module, max relative error of dL/dx and of each parameter gradient."""
    head = ["Layer (type)", "dL/dx", "parameter gradients", "result"]
    rows = []
    for lc in result.layers:
        label = lc.name.rsplit(".", 1)[-1] if lc.name else result.model
        label = "  " * lc.depth + (f"{label} ({lc.type})" if lc.name else label)
        if lc.skipped:
            rows.append([label, "--", f"skipped: {lc.skipped}", "--"])
            continue
        inputs = [c for c in lc.checks if c.name == "input"]
        dx = f"{inputs[0].error:.1e}" if inputs else "--"
        params = ", ".join(f"{c.name} {c.error:.1e}" for c in lc.checks if c.name != "input")
        verdict = "ok" if lc.passed else "FAIL"
        if not lc.passed:
            bad = [c for c in lc.checks if not c.passed]
            verdict += " (" + "; ".join(f"{c.name}: {c.detail}" for c in bad if c.detail) + ")"
            verdict = verdict.replace(" ()", "")
        rows.append([label, dx, params or "--", verdict])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "=" * max(len(line(head)), max(len(line(r)) for r in rows))
    out = [rule, line(head), rule] + [line(r) for r in rows] + [rule]
    n_fail = len(result.failures)
    checked = sum(1 for lc in result.layers if not lc.skipped)
    out.append(
        f"max relative error vs float64 central differences (eps {result.eps:g}), "
        f"pass at <= {result.rtol:g}: "
        + (
            f"all {checked} modules checked pass"
            if n_fail == 0
            else f"{n_fail} FAILED: {', '.join(result.failures)}"
        )
    )
    return "\n".join(out)
