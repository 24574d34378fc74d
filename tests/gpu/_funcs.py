"""What the GPU tests of the element-wise, normalisation, padding, resampling, dropout and
linear functions share: CuPy results against the CPU path, and run-to-run equality."""

import numpy as np

from tests.gpu.conftest import to_cpu

RTOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}


def on_gpu(cp, *arrays):
    """CuPy copies of NumPy arrays (None stays None)."""
    return tuple(None if a is None else cp.asarray(a) for a in arrays)


def assert_matches(cp, got, ref, rtol=None):
    """``got`` is a CuPy array with ``ref``'s shape and dtype, equal to the CPU path's
    ``ref`` to rtol relative to the largest finite magnitude (NaN and inf where ``ref`` has
    them); ``None`` where ``ref`` is None."""
    if ref is None:
        assert got is None
        return
    assert isinstance(got, cp.ndarray), type(got)
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.dtype)
    got = to_cpu(got)
    rtol = RTOL[ref.dtype.type] if rtol is None else rtol
    finite = np.isfinite(ref)
    scale = float(np.max(np.abs(ref[finite].astype(np.float64)))) if finite.any() else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def assert_bitwise_repeatable(cp, f):
    """Two calls of ``f()`` (returning an array or a tuple of arrays/None) agree bit for bit."""

    def host(r):
        r = r if isinstance(r, tuple) else (r,)
        return [None if a is None else to_cpu(a) for a in r]

    first, second = host(f()), host(f())
    cp.cuda.Stream.null.synchronize()
    for a, b in zip(first, second, strict=True):
        if a is None:
            assert b is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()
