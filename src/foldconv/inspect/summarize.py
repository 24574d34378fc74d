"""``foldconv.summary``: a model's layers with shapes, parameters, multiply-adds, memory
and the convolution algorithms ``auto`` picks, as torchinfo and Keras's ``summary`` give.

How the numbers are found
-------------------------
Shapes and memory are *measured*, not modelled: a private copy of the model (sharing the
parameter arrays, so it costs no memory) runs two forwards on zero batches of 2 and 3
samples, in the model's current mode (training or eval), with every module's calls
recorded. Every quantity that depends on the batch is affine in it (a + b·N) for layers
that treat samples independently, so two batches give it exactly at any N: each output
axis, the bytes of each output, and the bytes of the arrays each module keeps for its
backward (its caches, found in its attributes after the forward). Batches of 2 and 3,
not 1, because batch norm in training refuses one value per channel. AlexNet at a batch
of 128 is thus summarised from 5 samples' worth of forward: ``foldconv summary --model
alexnet_paper --batch 128`` peaked at 734 MB resident, of which building the model alone
takes 730 MB (3.3 s of CPU on a busy 2-core machine). The model itself is untouched:
its running statistics, caches, gradients and random generators are not those of the
copy.

Multiply-adds are counted from the layers' arithmetic (at the batch asked for):
multiply-accumulates of inputs with the layer's weights, the cost of the GEMMs of eq. F —
a convolution C_out·(C_in/groups)·prod(K) per output position (per input position for a
transposed convolution), Linear in·out per row, batch norm one multiply-add per element
(the affine x̂·γ + β). Layers without parameters (activations, pooling, LRN, dropout)
count 0: their comparisons, additions and exponentials are not multiply-adds with
weights. A user's layer with parameters and no rule here shows ``?``, and the total says
it is a lower bound. Bias additions are not counted (as in the usual MAC counts).

The algorithms are :func:`foldconv.functional.dispatch.auto_algorithm`'s answer for each
pass of each convolution at the batch asked for: the same decision a call with
``algorithm='auto'`` makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from foldconv.backend import get_array_module
from foldconv.functional._args import compute_dtype, conv_geometry, conv_transpose_geometry
from foldconv.functional.dispatch import PASSES, auto_algorithm
from foldconv.inspect._trace import (
    RandomState,
    held_arrays,
    is_array,
    memory_root,
    private_copy,
    traced_forward,
)
from foldconv.nn.conv import _ConvNd
from foldconv.nn.linear import Linear
from foldconv.nn.module import Module
from foldconv.nn.normalization import _BatchNorm

_PROBES = (2, 3)


@dataclass
class LayerSummary:
    """One module's row of a :class:`ModelSummary` (numbers at the summary's batch size).

    Attributes
    ----------
    name : str
        Dotted name as in ``named_modules`` ('' for the model itself).
    type : str
        Class name.
    depth : int
        0 for the model, 1 for its children, ...
    calls : int
        Forward calls in one forward of the model (0: not run).
    input_shape, output_shape : tuple of int or None
        Of the first call (None where not an array).
    params : int
        Elements of the parameters the module owns itself (not its children's).
    buffers : int
        Elements of its own non-trainable buffers (running statistics).
    mult_adds : int or None
        Multiply-adds of all its calls; None where there is no rule for a layer with
        parameters (containers count their children, not themselves: 0 here).
    output_bytes : int
        Bytes of the first call's output.
    saved_bytes : int
        Bytes of the arrays the module keeps after the forward for its backward
        (measured; an array shared with another module is counted in both rows, once in
        the total).
    algorithms : dict or None
        For convolutions: pass of the layer ('forward', 'input_grad', 'weight_grad') ->
        the algorithm ``auto`` picks (None: the autotuner has not timed it yet).
    """

    name: str
    type: str
    depth: int
    calls: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    params: int
    buffers: int
    mult_adds: int | None
    output_bytes: int
    saved_bytes: int
    algorithms: dict[str, str | None] | None = None
    is_leaf: bool = True


@dataclass
class ModelSummary:
    """What :func:`summary` returns; ``str()`` gives the table.

    Attributes
    ----------
    model : str
        The model's class name.
    input_shape : tuple of int
        (batch, *sample shape).
    dtype : str
    layers : list of LayerSummary
        Every module, in ``named_modules`` order (parents before children).
    total_params, trainable_params, non_trainable_params : int
        Parameters (each counted once, as ``sum(p.numel())`` in PyTorch) and buffer
        elements (running statistics, Keras's "non-trainable").
    total_mult_adds : int
        Sum over the layers (a lower bound when ``unknown_mult_adds`` is not empty).
    unknown_mult_adds : list of str
        Layers with parameters but no multiply-add rule.
    input_bytes, param_bytes, buffer_bytes : int
    activation_bytes : int
        Bytes of every distinct array the modules output in one forward.
    saved_bytes : int
        Bytes of every distinct array the modules keep for the backward.
    """

    model: str
    input_shape: tuple[int, ...]
    dtype: str
    layers: list[LayerSummary]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_mult_adds: int
    unknown_mult_adds: list[str]
    input_bytes: int
    param_bytes: int
    buffer_bytes: int
    activation_bytes: int
    saved_bytes: int
    mode: str
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return format_summary(self)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as plain Python values (for JSON)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------
# multiply-adds and algorithms
# ----------------------------------------------------------------------------------------
def _conv_geometry(layer: _ConvNd, in_shape: tuple[int, ...]):
    """The layer's ConvGeometry for an input shape ((C, *S) counts as a batch of one)."""
    nd = layer._ndim
    if len(in_shape) != nd + 2:
        in_shape = (1,) + tuple(in_shape)
    w = tuple(layer.weight.shape)
    if layer._transposed:
        return conv_transpose_geometry(
            in_shape,
            w,
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.groups,
            layer.dilation,
        )
    return conv_geometry(
        in_shape, w, layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode
    )


def conv_layer_algorithms(
    layer: _ConvNd, input_shape: Sequence[int], dtype: Any = None
) -> dict[str, str | None]:
    """The algorithm ``auto`` picks for each pass of a convolution layer.

    Parameters
    ----------
    layer : Conv1d/2d/3d or ConvTranspose1d/2d/3d
    input_shape : sequence of int
        (N, C_in, *S), the layer's input.
    dtype : numpy dtype, optional
        Of the input (default: the weight's).

    Returns
    -------
    dict
        'forward', 'input_grad', 'weight_grad' -> algorithm name (None where the
        autotuner is on and has not timed that pass yet). For a transposed convolution
        the forward is the ``input_grad`` pass of the convolution it transposes and its
        input gradient that convolution's ``forward`` pass.
    """
    g = _conv_geometry(layer, tuple(input_shape))
    cdt = compute_dtype(np.dtype(layer.weight.dtype if dtype is None else dtype))
    xp = get_array_module(layer.weight.data)
    if layer._transposed:
        order = {"forward": "input_grad", "input_grad": "forward", "weight_grad": "weight_grad"}
    else:
        order = {p: p for p in PASSES}
    return {p: auto_algorithm(order[p], g, cdt, xp) for p in PASSES}


def _mult_adds(module: Module, in_shape, out_shape) -> int | None:
    """Multiply-adds of one call (see the module docstring); None without a rule."""
    if isinstance(module, _ConvNd):
        g = _conv_geometry(module, in_shape)
        per_position = (g.in_channels // g.groups) * g.kernel_size
        # g describes the convolution (for a transposed one, the one it transposes), so
        # its output positions times its out_channels times the taps per position are
        # the products either way.
        return g.batch * g.out_channels * math.prod(g.out_shape) * per_position
    if isinstance(module, Linear):
        return math.prod(out_shape[:-1]) * module.in_features * module.out_features
    if isinstance(module, _BatchNorm):
        return math.prod(out_shape) if module.affine else 0
    if not any(p is not None for p in module._parameters.values()):
        return 0
    return None


# ----------------------------------------------------------------------------------------
# the probe
# ----------------------------------------------------------------------------------------
def _affine(v2: int, v3: int, n: int) -> int:
    """The value at batch n of a quantity that is v2 at batch 2 and v3 at batch 3."""
    return v2 + (v3 - v2) * (n - 2)


def _shape_at(s2, s3, n: int):
    if s2 is None or s3 is None:
        return None
    if len(s2) != len(s3):
        raise ValueError(
            "model: an output's rank changed with the batch size "
            f"({tuple(s2)} at batch 2, {tuple(s3)} at batch 3); the summary needs a "
            "model whose layers treat samples independently"
        )
    return tuple(_affine(a, b, n) for a, b in zip(s2, s3, strict=True))


def _probe(model: Module, sample_shape: tuple[int, ...], dtype: Any, xp: Any):
    """Two traced forwards at batches 2 and 3; per module and call, the shapes and bytes."""
    results = []
    for b in _PROBES:
        clone = private_copy(model)
        state = RandomState(clone)
        x = xp.zeros((b,) + sample_shape, dtype=dtype)
        trace = traced_forward(clone, x, before=state.rewind)
        state.rewind()  # the global generators back where the user left them
        names = {id(m): n for n, m in clone.named_modules()}
        per_module: dict[str, list[dict[str, Any]]] = {}
        seen_out: dict[int, int] = {}
        for call in trace.calls:
            out = call.output
            arg = call.args[0] if call.args else None
            entry = {
                "in": tuple(arg.shape) if is_array(arg) else None,
                "out": tuple(out.shape) if is_array(out) else None,
                "out_bytes": int(out.nbytes) if is_array(out) else 0,
            }
            if is_array(out):
                root = memory_root(out)
                seen_out[id(root)] = int(root.nbytes)
            per_module.setdefault(names[id(call.module)], []).append(entry)
        saved: dict[str, int] = {}
        seen_saved: dict[int, int] = {}
        for name, module in clone.named_modules():
            own: dict[int, int] = {}
            for a in held_arrays(module):
                root = memory_root(a)
                own[id(root)] = int(root.nbytes)
            saved[name] = sum(own.values())
            seen_saved.update(own)
        results.append(
            {
                "calls": per_module,
                "saved": saved,
                "activation_bytes": sum(seen_out.values()),
                "saved_bytes": sum(seen_saved.values()),
                "keep": (trace, clone, x),  # alive until compared: ids stay unique
            }
        )
    return results


def summary(
    model: Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    *,
    dtype: Any = None,
) -> ModelSummary:
    """Summarise ``model`` for inputs of shape (batch_size, *input_shape).

    Parameters
    ----------
    model : Module
        Any module whose forward takes one array (every model of ``foldconv.models``).
    input_shape : sequence of int
        One sample's shape, e.g. (3, 227, 227).
    batch_size : int
        N: shapes, multiply-adds, memory and algorithms are given at this batch.
    dtype : numpy dtype, optional
        Of the input (default: the model's parameters' dtype, else float32).

    Returns
    -------
    ModelSummary
        ``print()`` it for the table; its fields hold the numbers.

    Notes
    -----
    See :mod:`foldconv.inspect.summarize` for how each number is obtained: two forwards
    of a private copy on zero batches of 2 and 3 samples, each quantity extrapolated
    exactly to ``batch_size`` (it is affine in the batch).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a foldconv Module, got {type(model).__name__}")
    if isinstance(input_shape, (int, np.integer, str, bytes)) or not isinstance(
        input_shape, Sequence
    ):
        raise TypeError(
            f"input_shape: expected a sequence of ints (one sample's shape, e.g. (3, 227, 227)), "
            f"got {input_shape!r}"
        )
    shape = tuple(input_shape)
    if not shape or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape
    ):
        raise ValueError(f"input_shape: expected positive ints, got {tuple(input_shape)!r}")
    shape = tuple(int(s) for s in shape)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size: expected a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    n = int(batch_size)
    params = list(model.parameters())
    if dtype is None:
        floats = [p.data.dtype for p in params if p.data.dtype.kind == "f"]
        dtype = floats[0] if floats else np.float32
    dtype = np.dtype(dtype)
    xp = get_array_module(params[0].data) if params else np

    p2, p3 = _probe(model, shape, dtype, xp)
    layers: list[LayerSummary] = []
    unknown: list[str] = []
    total_mult_adds = 0
    for name, module in model.named_modules():
        calls2 = p2["calls"].get(name, [])
        calls3 = p3["calls"].get(name, [])
        if len(calls2) != len(calls3):
            raise ValueError(
                f"model: module {name or type(model).__name__!r} ran {len(calls2)} times at "
                f"batch 2 and {len(calls3)} at batch 3; the summary needs the same calls"
            )
        own_params = sum(p.size for p in module._parameters.values() if p is not None)
        own_buffers = sum(int(b.size) for b in module._buffers.values() if b is not None)
        is_leaf = not any(True for _ in module.named_children())
        mult_adds: int | None = 0
        algorithms = None
        in_shape = out_shape = None
        out_bytes = 0
        for i, (c2, c3) in enumerate(zip(calls2, calls3, strict=True)):
            cin = _shape_at(c2["in"], c3["in"], n)
            cout = _shape_at(c2["out"], c3["out"], n)
            if i == 0:
                in_shape, out_shape = cin, cout
                out_bytes = _affine(c2["out_bytes"], c3["out_bytes"], n)
                if isinstance(module, _ConvNd) and cin is not None:
                    algorithms = conv_layer_algorithms(module, cin, dtype)
            if not is_leaf and not isinstance(module, (_ConvNd, Linear, _BatchNorm)):
                # A container's multiply-adds are its children's; its own parameters
                # (rare) have no rule.
                m = 0 if own_params == 0 else None
            else:
                m = _mult_adds(module, cin, cout) if cin is not None else None
            if m is None:
                mult_adds = None
            elif mult_adds is not None:
                mult_adds += m
        if mult_adds is None:
            unknown.append(name or type(model).__name__)
        else:
            total_mult_adds += mult_adds
        saved = _affine(p2["saved"].get(name, 0), p3["saved"].get(name, 0), n)
        layers.append(
            LayerSummary(
                name=name,
                type=type(module).__name__,
                depth=0 if name == "" else name.count(".") + 1,
                calls=len(calls2),
                input_shape=in_shape,
                output_shape=out_shape,
                params=own_params,
                buffers=own_buffers,
                mult_adds=mult_adds,
                output_bytes=out_bytes,
                saved_bytes=saved,
                algorithms=algorithms,
                is_leaf=is_leaf,
            )
        )
    unique_params = {id(p): p for p in params}.values()
    buffers = [b for _, b in model.named_buffers()]
    notes = [
        "shapes and memory measured on zero batches of 2 and 3 (a private copy, "
        f"{'training' if model.training else 'eval'} mode) and extrapolated to N = {n}",
        "mult-adds: products with weights (conv, Linear, batch norm); 0 for layers "
        "without parameters; biases not counted",
    ]
    return ModelSummary(
        model=type(model).__name__,
        input_shape=(n,) + shape,
        dtype=str(dtype),
        layers=layers,
        total_params=sum(p.size for p in unique_params),
        trainable_params=sum(p.size for p in unique_params),
        non_trainable_params=sum(int(b.size) for b in buffers),
        total_mult_adds=total_mult_adds,
        unknown_mult_adds=unknown,
        input_bytes=n * math.prod(shape) * dtype.itemsize,
        param_bytes=sum(int(p.data.nbytes) for p in unique_params),
        buffer_bytes=sum(int(b.nbytes) for b in buffers),
        activation_bytes=_affine(p2["activation_bytes"], p3["activation_bytes"], n),
        saved_bytes=_affine(p2["saved_bytes"], p3["saved_bytes"], n),
        mode="training" if model.training else "eval",
        notes=notes,
    )


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------
_SHORT = {
    "im2col": "im2col",
    "winograd": "wino",
    "depthwise": "dw",
    "full_conv": "full",
    "direct_compiled": "dc",
    "im2col_compiled": "ic",
}


def _mb(nbytes: int) -> str:
    """Bytes in decimal units (as torchinfo): 512 B, 3.07 kB, 148.68 MB, 1.23 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:,.2f} {unit}"
    return f"{nbytes} B"


def _count(v: int | None, container: bool = False) -> str:
    if v is None:
        return "?"
    if v == 0 and container:
        return "--"
    return f"{v:,}"


def format_summary(s: ModelSummary) -> str:
    """The table of a :class:`ModelSummary`: one row per module, indented by depth."""
    head = [
        "Layer (type)",
        "Output shape",
        "Param #",
        "Mult-adds",
        "Output",
        "Kept for bwd",
        "auto: fwd / dX / dW",
    ]
    rows = []
    for layer in s.layers:
        label = layer.name.rsplit(".", 1)[-1] if layer.name else s.model
        label = "  " * layer.depth + (f"{label} ({layer.type})" if layer.name else label)
        if layer.calls > 1:
            label += f" x{layer.calls}"
        container = not layer.is_leaf
        if layer.calls == 0:
            shape = "(not run)"
        elif layer.output_shape is None:
            shape = "--"
        else:
            shape = str(list(layer.output_shape))
        algos = ""
        if layer.algorithms:
            algos = " / ".join(
                _SHORT.get(a, a) if a else "untimed" for a in (layer.algorithms[p] for p in PASSES)
            )
        rows.append(
            [
                label,
                shape,
                _count(layer.params, container),
                "--" if container and layer.mult_adds == 0 else _count(layer.mult_adds),
                "--" if layer.calls == 0 or layer.output_shape is None else _mb(layer.output_bytes),
                "--" if layer.saved_bytes == 0 else _mb(layer.saved_bytes),
                algos,
            ]
        )
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    align = ["<", "<", ">", ">", ">", ">", "<"]

    def line(cells: list[str]) -> str:
        cells = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)]
        return "  ".join(cells).rstrip()

    rule = "=" * max(len(line(r)) for r in rows + [head])
    out = [rule, line(head), rule]
    out += [line(r) for r in rows]
    out.append(rule)
    lower = " (lower bound: no rule for " + ", ".join(s.unknown_mult_adds) + ")"
    out += [
        f"Input: {list(s.input_shape)} {s.dtype}, {s.mode} mode",
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable (buffers): {s.non_trainable_params:,}",
        f"Total mult-adds: {s.total_mult_adds:,}" + (lower if s.unknown_mult_adds else ""),
        rule,
        f"Input size: {_mb(s.input_bytes)}",
        f"Forward outputs (every distinct array): {_mb(s.activation_bytes)}",
        f"Kept for the backward (distinct arrays): {_mb(s.saved_bytes)}",
        f"Params size: {_mb(s.param_bytes)}  (gradients as much again)",
        f"Buffers size: {_mb(s.buffer_bytes)}",
        rule,
    ]
    out += [f"Note: {n}" for n in s.notes]
    return "\n".join(out)
