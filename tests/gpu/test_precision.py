"""Strict float32 GEMMs on the GPU by default; TF32 only on request."""

import numpy as np

import foldconv
from tests.gpu.conftest import to_cpu


def test_float32_matmul_is_strict_by_default(cp):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert foldconv.get_tf32() is False
    got = to_cpu(cp.asarray(a) @ cp.asarray(b))
    # float32 accumulation over 512 terms: ~1e-6 relative; TF32 inputs would give ~1e-3.
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5
