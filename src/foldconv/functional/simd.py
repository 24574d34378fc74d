"""Vector registers for the compiled kernels: a few Numba intrinsics over LLVM vectors.

A Numba loop keeps an accumulator in a register only when it is a scalar: a running sum
over many positions at once lives in an array, and each product then costs a load and a
store (LeNet-5's conv2 in functional/direct_compiled.py ran at ~34 GFLOP/s on one core
that way, oneDNN's kernel at ~95). These intrinsics give the kernels a value that *is* a
vector register: ``vload`` reads :func:`lanes` consecutive elements of a contiguous array,
``vmuladd(acc, w, x)`` returns ``acc + w * x`` lane by lane (a product, then a sum, each
rounded: no fused multiply-add, so every lane gets exactly the bits of the scalar
expression), ``vstore`` writes it back. A kernel written with them holds its running sums
in registers across a whole loop of taps.

The width is the host's: 16 float32 (8 float64) lanes where the CPU has AVX-512, else 8
(4), so that the accumulators of a block fit its vector registers.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import numpy as np


@functools.cache
def intrinsics() -> SimpleNamespace:
    """The vector type and intrinsics (imports Numba: called when the compiled kernels are
    first built, never at ``import foldconv``)."""
    from llvmlite import binding as llvm
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic, models, register_model

    try:
        wide = bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - a host whose features cannot be read
        wide = False
    counts = {types.float32: 16 if wide else 8, types.float64: 8 if wide else 4}

    class VectorType(types.Type):
        """A vector register of ``count`` elements of ``dtype`` (a Numba type)."""

        def __init__(self, dtype: Any, count: int) -> None:
            self.dtype, self.count = dtype, count
            super().__init__(name=f"vector({dtype}x{count})")

    @register_model(VectorType)
    class _VectorModel(models.PrimitiveModel):
        def __init__(self, dmm: Any, fe_type: Any) -> None:
            element = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
            super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))

    def vector_of(arr: Any) -> Any:
        if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
            return None
        if arr.dtype not in counts:
            return None
        return VectorType(arr.dtype, counts[arr.dtype])

    def pointer(context: Any, builder: Any, aryty: Any, ary: Any, start: Any, vty: Any) -> Any:
        data = context.make_array(aryty)(context, builder, ary).data
        ptr = builder.gep(data, [start])
        return builder.bitcast(ptr, context.get_value_type(vty).as_pointer())

    @intrinsic
    def vzero(typingctx: Any, arr: Any) -> Any:
        """A vector of zeros, of the element type of the 1-d array ``arr``."""
        vty = vector_of(arr)
        if vty is None:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return ir.Constant(context.get_value_type(vty), [0.0] * vty.count)

        return vty(arr), codegen

    @intrinsic
    def vlanes(typingctx: Any, arr: Any) -> Any:
        """The lanes of a vector of ``arr``'s element type (a compile-time constant)."""
        vty = vector_of(arr)
        if vty is None:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return context.get_constant(types.intp, vty.count)

        return types.intp(arr), codegen

    @intrinsic
    def vload(typingctx: Any, arr: Any, start: Any) -> Any:
        """arr[start : start + lanes] as a vector (``arr`` 1-d, contiguous; no bounds
        check: the caller's rows are padded to whole vectors)."""
        vty = vector_of(arr)
        if vty is None or not isinstance(start, types.Integer):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            ptr = pointer(context, builder, signature.args[0], args[0], args[1], vty)
            return builder.load(ptr, align=vty.dtype.bitwidth // 8)

        return vty(arr, start), codegen

    @intrinsic
    def vstore(typingctx: Any, arr: Any, start: Any, value: Any) -> Any:
        """arr[start : start + lanes] = value."""
        vty = vector_of(arr)
        if vty is None or not isinstance(start, types.Integer) or value != vty:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            ptr = pointer(context, builder, signature.args[0], args[0], args[1], vty)
            builder.store(args[2], ptr, align=vty.dtype.bitwidth // 8)
            return context.get_dummy_value()

        return types.void(arr, start, value), codegen

    @intrinsic
    def vmuladd(typingctx: Any, acc: Any, w: Any, x: Any) -> Any:
        """acc + w · x lane by lane, the product rounded before the sum (no FMA);
        ``w`` a scalar of the vectors' element type."""
        if not isinstance(acc, VectorType) or x != acc or w != acc.dtype:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            vec, scalar, xs = args
            llty = vec.type
            i32 = ir.IntType(32)
            one = builder.insert_element(ir.Constant(llty, ir.Undefined), scalar, i32(0))
            mask = ir.Constant(ir.VectorType(i32, llty.count), [0] * llty.count)
            spread = builder.shuffle_vector(one, ir.Constant(llty, ir.Undefined), mask)
            return builder.fadd(vec, builder.fmul(spread, xs))

        return acc(acc, w, x), codegen

    return SimpleNamespace(
        vzero=vzero,
        vlanes=vlanes,
        vload=vload,
        vstore=vstore,
        vmuladd=vmuladd,
        lanes={np.dtype(str(k)): v for k, v in counts.items()},
    )


def lanes(dtype: Any) -> int:
    """Elements per vector register for ``dtype`` (float32 or float64) on this host."""
    return intrinsics().lanes[np.dtype(dtype)]
