"""Element-wise activations and softmax: stateless forward/backward pairs.

Each ``*_backward`` sits next to its forward and states the derivative it applies.
Inputs may be float16 (computed in float32, returned as float16), float32 or float64;
integer, bool and complex arrays are a ``TypeError``.

The exact GELU needs the error function, which NumPy lacks: :func:`erf` and
:func:`erfc` are implemented here from a power series and a continued fraction,
erf accurate to about 4e-15 relative in float64, erfc to about 1e-15 relative for
x >= 2 and to about 2e-15 absolute below (measured in the tests against :func:`math.erf`
and :func:`math.erfc`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foldconv import backend
from foldconv.backend import get_array_module
from foldconv.functional import activation_compiled

__all__ = [
    "erf",
    "erfc",
    "gelu",
    "gelu_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "log_softmax_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "tanh",
    "tanh_backward",
]

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


# -- input checks shared by the functional modules ------------------------------------------
def _as_float_array(x: Any, name: str = "x") -> Any:
    """``x`` as an array of float16/32/64, else TypeError naming ``name``."""
    if not (hasattr(x, "dtype") and hasattr(x, "shape")):
        x = np.asarray(x)
    dt = np.dtype(x.dtype)
    if dt.kind != "f" or dt.itemsize > 8:
        raise TypeError(f"{name}: expected a float16, float32 or float64 array, got dtype {dt}")
    return x


def _compute_dtype(dtype: Any) -> np.dtype:
    """The dtype arithmetic runs in: float16 is promoted to float32."""
    dt = np.dtype(dtype)
    return np.dtype(np.float32) if dt == np.float16 else dt


def _to_compute(x: Any) -> Any:
    ct = _compute_dtype(x.dtype)
    return x if x.dtype == ct else x.astype(ct)


def _check_same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a}: expected the shape of {name_b} {tuple(b.shape)}, got {tuple(a.shape)}"
        )


def _check_dim(dim: Any, ndim: int, name: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(dim).__name__}")
    dim = int(dim)
    if ndim == 0:
        if dim in (0, -1):
            return 0
    elif -ndim <= dim < ndim:
        return dim % ndim
    lo, hi = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    raise ValueError(f"{name}: expected an int in [{lo}, {hi}] for a {ndim}-d input, got {dim}")


# -- the error function -------------------------------------------------------------------
# Below _ERF_SPLIT the power series is used, above it the continued fraction for erfc.
# At the split, double precision needs 28 series terms and a fraction of depth 55, single
# precision 16 and 20 (measured against math.erf/math.erfc); both run with a margin.
_ERF_SPLIT = 2.0
_ERF_TERMS = {8: (32, 60), 4: (20, 30)}  # itemsize -> (series terms, fraction depth)
_ERFC_CAP = 30.0


def _exp_minus_square(x: Any) -> Any:
    """exp(-x^2) without the rounding error of x*x being magnified by up to x^2.

    x = h + l with h a multiple of 1/16, so h*h is exact and
    exp(-x^2) = exp(-h^2) * exp(-(x - h)(x + h)).
    """
    xp = get_array_module(x)
    h = xp.floor(x * 16) / 16
    return xp.exp(-h * h) * xp.exp(-(x - h) * (x + h))


def _erf_series(a: Any) -> Any:
    """erf(a) = 2/sqrt(pi) * exp(-a^2) * a * sum_n (2a^2)^n / (2n+1)!!  (all terms >= 0).

    The sum is evaluated by Horner's rule, s <- 1 + s * 2a^2 / (2n+1), in place.
    """
    two_a2 = 2 * a * a
    s = a * 0 + 1
    for n in range(_ERF_TERMS[a.dtype.itemsize][0], 0, -1):
        s *= two_a2
        s *= 1 / (2 * n + 1)
        s += 1
    s *= a
    s *= _exp_minus_square(a)
    s *= 2 / _SQRT_PI
    return s


def _erfc_cf(a: Any) -> Any:
    """erfc(a) = exp(-a^2)/sqrt(pi) / (a + (1/2)/(a + (2/2)/(a + (3/2)/(a + ...)))), a > 0.

    Evaluated bottom-up from a fixed depth, in place.
    """
    xp = get_array_module(a)
    f = a.copy()
    for k in range(_ERF_TERMS[a.dtype.itemsize][1], 0, -1):
        xp.divide(k / 2, f, out=f)
        f += a
    f *= _SQRT_PI
    return xp.divide(_exp_minus_square(a), f, out=f)


def _erf_parts(x: Any) -> tuple[Any, Any, Any]:
    """(|x|, mask |x| < split, value): erf(|x|) where the mask holds, erfc(|x|) elsewhere.

    Each branch runs only on its own elements. NaN goes to the fraction branch and stays
    NaN; |x| is capped where erfc has long underflowed, so inf gives 0, not inf - inf.
    """
    xp = get_array_module(x)
    a = xp.abs(x.reshape(-1)).reshape(x.shape)  # reshape: keeps 0-d input an array
    small = a < _ERF_SPLIT
    value = xp.empty_like(a)
    value[small] = _erf_series(a[small])
    large = ~small
    value[large] = _erfc_cf(xp.minimum(a[large], _ERFC_CAP))
    return a, small, value


def erf(x: Any) -> Any:
    """The error function, erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt.

    Parameters
    ----------
    x : ndarray, any shape, float16/32/64

    Returns
    -------
    ndarray, same shape and dtype as ``x``
        Relative error below about 4e-15 in float64.
    """
    x = _as_float_array(x)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if backend.gpu_path(xp):
        return _gpu().erf(xp, xc).astype(x.dtype, copy=False)
    _, small, value = _erf_parts(xc)
    pos = xp.where(small, value, 1 - value)
    return (xp.sign(xc) * pos).astype(x.dtype, copy=False)


def erfc(x: Any) -> Any:
    """The complementary error function, erfc(x) = 1 - erf(x), accurate for large x.

    Parameters
    ----------
    x : ndarray, any shape, float16/32/64

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if backend.gpu_path(xp):
        return _gpu().erfc(xp, xc).astype(x.dtype, copy=False)
    _, small, value = _erf_parts(xc)
    erfc_abs = xp.where(small, 1 - value, value)
    return xp.where(xc < 0, 2 - erfc_abs, erfc_abs).astype(x.dtype, copy=False)


def _gpu() -> Any:
    """foldconv.cuda.activation, imported on the GPU path only (it imports numba.cuda)."""
    from foldconv.cuda import activation  # noqa: PLC0415

    return activation


def _normal_cdf(x: Any) -> Any:
    """Phi(x) = erfc(-x / sqrt(2)) / 2 (no cancellation for negative x)."""
    return 0.5 * erfc(-x / _SQRT_2)


# -- ReLU family -----------------------------------------------------------------------------
def relu(x: Any) -> Any:
    """y = max(x, 0).

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    if activation_compiled.applies(x):
        return activation_compiled.relu(x)  # one pass; -0.0 stays -0.0, as in PyTorch
    xp = get_array_module(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype))


def relu_backward(grad_output: Any, y: Any) -> Any:
    """dx = dy where y > 0, else 0, with ``y`` the forward's output (or its input: same
    sign test).

    As PyTorch's ``threshold_backward``: the derivative at 0 is taken as 0, an inf or NaN
    ``dy`` where ``y <= 0`` gives 0, and a NaN ``y`` passes ``dy``.
    """
    _check_same_shape(grad_output, y, "grad_output", "y")
    if activation_compiled.applies(grad_output, y):
        return activation_compiled.relu_backward(grad_output, y)
    xp = get_array_module(grad_output, y)
    if xp is np:
        # The product is the fast NumPy form (np.where is 10x slower here); it differs
        # from the rule above only where dy or y holds inf or NaN, which a finite sum of
        # both rules out (an overflowing sum only sends finite data the slow way).
        with np.errstate(invalid="ignore", over="ignore"):
            dx = grad_output * (y > 0)
            total = np.add.reduce(grad_output, axis=None) + np.add.reduce(y, axis=None)
        if np.isfinite(total):
            return dx
    return xp.where(y <= 0, xp.zeros((), dtype=grad_output.dtype), grad_output)


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
    """y = x if x > 0 else negative_slope * x.

    Parameters
    ----------
    x : ndarray, any shape
    negative_slope : float

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    xp = get_array_module(x)
    slope = x.dtype.type(negative_slope)  # a host scalar: no transfer to a GPU per call
    return xp.where(x > 0, x, x * slope)


def leaky_relu_backward(grad_output: Any, x: Any, negative_slope: float = 0.01) -> Any:
    """dx = dy if x > 0 else negative_slope * dy  (``x`` is the forward's input)."""
    _check_same_shape(grad_output, x, "grad_output", "x")
    xp = get_array_module(grad_output)
    slope = grad_output.dtype.type(negative_slope)
    return xp.where(x > 0, grad_output, grad_output * slope)


# -- saturating ----------------------------------------------------------------------------
def tanh(x: Any) -> Any:
    """y = tanh(x); shape and dtype of ``x``."""
    x = _as_float_array(x)
    xp = get_array_module(x)
    return xp.tanh(_to_compute(x)).astype(x.dtype, copy=False)


def tanh_backward(grad_output: Any, y: Any) -> Any:
    """dx = dy * (1 - y^2), with ``y = tanh(x)`` the forward's output."""
    _check_same_shape(grad_output, y, "grad_output", "y")
    return grad_output * (1 - y * y)


def sigmoid(x: Any) -> Any:
    """y = 1 / (1 + exp(-x)), evaluated without overflow for either sign of x."""
    x = _as_float_array(x)
    xp = get_array_module(x)
    xc = _to_compute(x)
    # exp(-|x|) <= 1 never overflows; sigma(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0.
    e = xp.exp(-xp.abs(xc))
    y = xp.where(xc >= 0, 1 / (1 + e), e / (1 + e))
    return y.astype(x.dtype, copy=False)


def sigmoid_backward(grad_output: Any, y: Any) -> Any:
    """dx = dy * y * (1 - y), with ``y = sigmoid(x)`` the forward's output."""
    _check_same_shape(grad_output, y, "grad_output", "y")
    return grad_output * y * (1 - y)


# -- GELU -------------------------------------------------------------------------------------
def _check_approximate(approximate: Any) -> str:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return approximate


def gelu(x: Any, approximate: str = "none") -> Any:
    """Gaussian error linear unit.

    ``'none'``: y = x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)).
    ``'tanh'``: y = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

    Parameters
    ----------
    x : ndarray, any shape
    approximate : {'none', 'tanh'}

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    _check_approximate(approximate)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (xc + _GELU_TANH_C * xc * xc * xc))
        y = 0.5 * xc * (1 + t)
    elif backend.gpu_path(xp):  # one fused kernel (see foldconv.cuda.activation)
        y = _gpu().gelu(xp, xc)
    else:
        y = xc * _normal_cdf(xc)
    return y.astype(x.dtype, copy=False)


def gelu_backward(grad_output: Any, x: Any, approximate: str = "none") -> Any:
    """dx = dy * GELU'(x), ``x`` the forward's input.

    ``'none'``: GELU'(x) = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
    ``'tanh'``: with u = sqrt(2/pi)(x + c x^3), t = tanh u,
    GELU'(x) = (1 + t)/2 + x/2 * (1 - t^2) * sqrt(2/pi) * (1 + 3 c x^2).
    """
    _check_same_shape(grad_output, x, "grad_output", "x")
    _check_approximate(approximate)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if approximate == "tanh":
        x2 = xc * xc
        t = xp.tanh(_SQRT_2_OVER_PI * (xc + _GELU_TANH_C * x2 * xc))
        d = 0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_C * x2)
    elif backend.gpu_path(xp):  # dy * GELU'(x) in one fused kernel
        dtype = np.result_type(grad_output.dtype, xc.dtype)
        return (
            _gpu().gelu_backward(xp, grad_output, xc, dtype).astype(grad_output.dtype, copy=False)
        )
    else:
        d = _normal_cdf(xc) + xc * (_INV_SQRT_2PI * xp.exp(-0.5 * xc * xc))
    return (grad_output * d).astype(grad_output.dtype, copy=False)


# -- softmax ----------------------------------------------------------------------------------
def softmax(x: Any, dim: int) -> Any:
    """y = exp(x - max) / sum(exp(x - max)) along ``dim`` (max subtracted for stability).

    Parameters
    ----------
    x : ndarray, any shape
    dim : int
        The axis that sums to one.

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    dim = _check_dim(dim, x.ndim)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if xc.ndim == 0:
        return xp.ones_like(x)
    if xc.size == 0:  # an empty batch (or axis): nothing to normalise, as in PyTorch
        return xp.empty_like(x)
    e = xp.exp(xc - xp.max(xc, axis=dim, keepdims=True))
    return (e / xp.sum(e, axis=dim, keepdims=True)).astype(x.dtype, copy=False)


def softmax_backward(grad_output: Any, y: Any, dim: int) -> Any:
    """dx = y * (dy - sum(dy * y, dim)), ``y`` the forward's output (Jacobian diag(y) - y y^T)."""
    _check_same_shape(grad_output, y, "grad_output", "y")
    dim = _check_dim(dim, y.ndim)
    xp = get_array_module(y)
    if y.ndim == 0:
        return xp.zeros_like(grad_output)
    return y * (grad_output - xp.sum(grad_output * y, axis=dim, keepdims=True))


def log_softmax(x: Any, dim: int) -> Any:
    """y = x - max - log(sum(exp(x - max))) along ``dim``.

    Parameters
    ----------
    x : ndarray, any shape
    dim : int

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = _as_float_array(x)
    dim = _check_dim(dim, x.ndim)
    xp = get_array_module(x)
    xc = _to_compute(x)
    if xc.ndim == 0:
        return xp.zeros_like(x)
    if xc.size == 0:
        return xp.empty_like(x)
    shifted = xc - xp.max(xc, axis=dim, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(shifted), axis=dim, keepdims=True))
    return (shifted - lse).astype(x.dtype, copy=False)


def log_softmax_backward(grad_output: Any, y: Any, dim: int) -> Any:
    """dx = dy - exp(y) * sum(dy, dim), ``y`` the forward's output (log-probabilities)."""
    _check_same_shape(grad_output, y, "grad_output", "y")
    dim = _check_dim(dim, y.ndim)
    xp = get_array_module(y)
    if y.ndim == 0:
        return xp.zeros_like(grad_output)
    return grad_output - xp.exp(y) * xp.sum(grad_output, axis=dim, keepdims=True)
