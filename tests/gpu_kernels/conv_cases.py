"""Convolution cases shared by the simulator tests (tests/gpu_kernels/test_conv.py) and
the CuPy tests (tests/gpu/test_conv.py): each GPU result is compared with the CPU path's."""

from __future__ import annotations

import numpy as np

TOL = {np.float64: 1e-10, np.float32: 1e-5, np.float16: 1e-3}


def close(gpu, cpu, dtype):
    """Equal up to the dtype's tolerance, relative to the result's magnitude (CuPy
    results are copied to the host first)."""
    gpu = gpu.get() if hasattr(gpu, "get") else np.asarray(gpu)
    cpu = np.asarray(cpu)
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    if cpu.size == 0:
        return
    scale = max(float(np.max(np.abs(cpu.astype(np.float64)))), 1e-30)
    err = float(np.max(np.abs(gpu.astype(np.float64) - cpu.astype(np.float64)))) / scale
    assert err <= TOL[np.dtype(dtype).type], err


# (x shape, weight shape, options): 1-d, 2-d and 3-d; stride, dilation, asymmetric and
# 'same' padding, groups, depthwise (multiplier 1 and 2), padding modes, unbatched input.
CONV_CASES = {
    "1d_stride_pad": ((2, 3, 9), (4, 3, 3), dict(stride=2, padding=1)),
    "1d_same_dilated": ((2, 2, 8), (3, 2, 3), dict(padding="same", dilation=2)),
    "1d_alexnet_stem": ((1, 2, 31), (3, 2, 11), dict(stride=4, padding=2)),
    "2d_stride_dilation_gcd": (
        (1, 2, 13, 12),
        (2, 2, 3, 2),
        dict(stride=(4, 3), dilation=(2, 3), padding=((2, 1), (0, 3))),
    ),
    "2d_asym_groups": (
        (2, 4, 7, 6),
        (6, 2, 3, 2),
        dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2),
    ),
    "2d_same_stride2": ((1, 2, 7, 5), (3, 2, 3, 3), dict(padding="same", stride=2)),
    "2d_pointwise": ((2, 3, 4, 5), (4, 3, 1, 1), dict()),
    "2d_pointwise_groups_replicate": (
        (2, 4, 3, 4),
        (6, 2, 1, 1),
        dict(groups=2, padding=1, padding_mode="replicate"),
    ),
    "2d_1x1_stride2": ((1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2)),
    "2d_reflect": ((2, 2, 5, 6), (3, 2, 3, 3), dict(padding=(1, 2), padding_mode="reflect")),
    "2d_circular": ((1, 2, 5, 4), (2, 1, 3, 2), dict(padding=1, groups=2, padding_mode="circular")),
    "3d_groups": ((2, 2, 4, 5, 3), (4, 1, 2, 3, 2), dict(stride=(1, 2, 1), padding=1, groups=2)),
    "depthwise_2d": ((2, 3, 6, 5), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3)),
    "depthwise_2d_mult2": ((1, 2, 5, 6), (4, 1, 3, 2), dict(padding=(1, 0), dilation=2, groups=2)),
    "depthwise_1d": ((2, 3, 10), (3, 1, 4), dict(stride=3, padding="same", groups=3)),
    "depthwise_3d": ((1, 2, 4, 3, 5), (2, 1, 2, 2, 3), dict(padding=(1, 0, 1), groups=2)),
    "depthwise_replicate": (
        (1, 2, 5, 5),
        (2, 1, 3, 3),
        dict(padding=1, groups=2, padding_mode="replicate"),
    ),  # noqa: E501
    "unbatched": ((3, 6, 5), (2, 3, 2, 2), dict(stride=2)),
}


TRANSPOSE_CASES = {
    "1d": ((2, 3, 5), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    "2d_groups_dilated": (
        (2, 4, 3, 4),
        (4, 1, 2, 3),
        dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=2),
    ),
    "2d_output_padding_under_dilation": (
        (1, 2, 4, 3),
        (2, 3, 3, 2),
        dict(stride=1, dilation=2, output_padding=1),
    ),
    "3d": ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(stride=(2, 1, 2), padding=(0, 1, 1))),
    "depthwise": ((2, 3, 4, 4), (3, 1, 3, 3), dict(stride=2, padding=1, groups=3)),
    "pointwise_groups": ((2, 4, 3, 3), (4, 2, 1, 1), dict(groups=2)),
}


UNFOLD_CASES = [
    ((1, 2, 11, 13), (3, 2), dict(stride=(4, 3), dilation=(2, 3), padding=((2, 1), (0, 3)))),
    ((2, 1, 20), (3,), dict(stride=4, dilation=6, padding=1)),
    ((2, 3, 7), (3,), dict(padding=1, stride=2)),
    ((1, 2, 5, 6), (2, 3), dict(padding=((1, 0), (2, 1)), dilation=(2, 1), stride=(1, 2))),
    ((2, 4, 5), (2, 2), dict(padding=1)),  # unbatched 2-d
    ((1, 1, 3, 4, 3), (2, 2, 2), dict(stride=(1, 2, 1), padding=(0, 1, 1))),
    ((0, 2, 4, 4), (2, 2), dict()),
]
