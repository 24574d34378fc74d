"""Seeing inside a model: :func:`summary` (shapes, parameters, multiply-adds, memory,
the convolution algorithms ``auto`` picks) and :func:`gradcheck` (every hand-written
backward against float64 central finite differences)."""

from foldconv.inspect.gradaudit import ArrayCheck, GradcheckResult, LayerCheck, gradcheck
from foldconv.inspect.summarize import LayerSummary, ModelSummary, conv_layer_algorithms, summary

__all__ = [
    "ArrayCheck",
    "GradcheckResult",
    "LayerCheck",
    "LayerSummary",
    "ModelSummary",
    "conv_layer_algorithms",
    "gradcheck",
    "summary",
]
