"""Parity of the layers' signatures with torch.nn, so that the argument order cannot drift.

For every layer class that torch.nn and foldconv.nn both have, by name:

- ``__init__``: torch's parameters come first, in torch's order, with torch's names, kinds
  and defaults (a positional call means the same in both); foldconv-only extras (``rng``)
  follow, keyword-only.
- ``forward``: the same for the parameters after the input (``output_size`` of the
  transposed convolutions, the loss target).

And every layer issue 11 lists exists in foldconv.nn.
"""

from __future__ import annotations

import inspect

import pytest

from foldconv import nn as fnn

torch = pytest.importorskip("torch")

P = inspect.Parameter
# Module is the base class, not a layer; its __init__ takes torch's internal arguments.
NOT_LAYERS = {"Module"}


def _torch_layers() -> list[str]:
    names = []
    for name in torch.nn.modules.__all__:
        cls = getattr(torch.nn, name, None)
        if inspect.isclass(cls) and issubclass(cls, torch.nn.Module) and name not in NOT_LAYERS:
            names.append(name)
    return names


COMMON = sorted(n for n in _torch_layers() if inspect.isclass(getattr(fnn, n, None)))


def _params(func, skip: int) -> list[P]:
    return list(inspect.signature(func).parameters.values())[skip:]


def _torch_init_params(cls) -> list[P]:
    # A torch layer without an __init__ of its own (Sigmoid, Tanh, ...) inherits Module's
    # (*args, **kwargs), which rejects any argument: it takes none.
    if cls.__init__ is torch.nn.Module.__init__:
        return []
    return _params(cls.__init__, 1)


def _describe(p: P) -> str:
    default = "" if p.default is P.empty else f"={p.default!r}"
    return f"{p.name}{default} ({p.kind.description})"


def _mismatches(theirs: list[P], ours: list[P]) -> list[str]:
    """What keeps ``ours`` from being ``theirs`` followed by keyword-only extras.

    torch's positional parameters must open ``ours`` in the same order; its keyword-only
    ones (their order carries no meaning) must be keyword-only in ``ours`` too.
    """
    problems = []
    positional = [t for t in theirs if t.kind not in (P.KEYWORD_ONLY, P.VAR_KEYWORD)]
    for i, t in enumerate(positional):
        if i >= len(ours):
            problems.append(f"missing {_describe(t)}")
            continue
        o = ours[i]
        if t.kind == P.VAR_POSITIONAL:
            # *args: the kind matters, not the name
            if o.kind != t.kind:
                problems.append(f"position {i}: {_describe(o)}, torch has {_describe(t)}")
            continue
        if (o.name, o.kind) != (t.name, t.kind) or not _same_default(o.default, t.default):
            problems.append(f"position {i}: {_describe(o)}, torch has {_describe(t)}")
    rest = ours[len(positional) :]
    by_name = {o.name: o for o in rest}
    for t in theirs:
        if t.kind == P.KEYWORD_ONLY:
            o = by_name.get(t.name)
            if o is None or o.kind != P.KEYWORD_ONLY or not _same_default(o.default, t.default):
                got = "nothing" if o is None else _describe(o)
                problems.append(f"keyword-only {_describe(t)} in torch, here {got}")
        elif t.kind == P.VAR_KEYWORD and not any(o.kind == P.VAR_KEYWORD for o in rest):
            problems.append(f"missing {_describe(t)}")
    for o in rest:
        if o.kind not in (P.KEYWORD_ONLY, P.VAR_KEYWORD):
            problems.append(f"extra {_describe(o)} must be keyword-only")
    return problems


def _same_default(a, b) -> bool:
    if a is P.empty or b is P.empty:
        return a is b
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", COMMON)
def test_init_signature_matches_torch(name):
    theirs = _torch_init_params(getattr(torch.nn, name))
    ours = _params(getattr(fnn, name).__init__, 1)
    problems = _mismatches(theirs, ours)
    assert not problems, f"{name}.__init__: " + "; ".join(problems)


@pytest.mark.parametrize("name", COMMON)
def test_forward_signature_matches_torch_after_the_input(name):
    theirs = _params(getattr(torch.nn, name).forward, 2)
    ours = _params(getattr(fnn, name).forward, 2)
    problems = _mismatches(theirs, ours)
    assert not problems, f"{name}.forward: " + "; ".join(problems)


def test_the_comparison_covers_the_layers():
    assert len(COMMON) >= 40
    for name in ("Conv2d", "ConvTranspose2d", "MaxPool2d", "BatchNorm2d", "Upsample", "Identity"):
        assert name in COMMON


def test_the_checker_catches_a_swapped_order_and_a_positional_extra():
    def torch_like(self, kernel_size, stride=None, return_indices=False, ceil_mode=False):
        pass

    def swapped(self, kernel_size, stride=None, ceil_mode=False, return_indices=False):
        pass

    def positional_extra(
        self, kernel_size, stride=None, return_indices=False, ceil_mode=False, rng=None
    ):  # noqa: E501
        pass

    def keyword_extra(
        self, kernel_size, stride=None, return_indices=False, ceil_mode=False, *, rng=None
    ):  # noqa: E501
        pass

    def keyword_torch(self, num_features, eps=1e-05, *, bias=True):
        pass

    def keyword_ours(self, num_features, eps=1e-05, *, rng=None, bias=True):
        pass

    theirs = _params(torch_like, 1)
    assert _mismatches(theirs, _params(swapped, 1))
    assert not _mismatches(_params(keyword_torch, 1), _params(keyword_ours, 1))
    assert _mismatches(_params(keyword_torch, 1), _params(keyword_ours, 1)[:3])
    assert _mismatches(theirs, _params(positional_extra, 1))
    assert not _mismatches(theirs, _params(keyword_extra, 1))
    # a default of 0 is not a default of False or 0.0
    assert not _same_default(0, False) and not _same_default(0, 0.0)


ISSUE_11_LAYERS = [
    *(f"Conv{d}d" for d in (1, 2, 3)),
    *(f"ConvTranspose{d}d" for d in (1, 2, 3)),
    *(f"MaxPool{d}d" for d in (1, 2, 3)),
    *(f"AvgPool{d}d" for d in (1, 2, 3)),
    *(f"AdaptiveAvgPool{d}d" for d in (1, 2, 3)),
    *(f"AdaptiveMaxPool{d}d" for d in (1, 2, 3)),
    *(f"BatchNorm{d}d" for d in (1, 2, 3)),
    "GroupNorm",
    "LocalResponseNorm",
    "Dropout",
    *(f"Dropout{d}d" for d in (1, 2, 3)),
    *(
        f"{kind}Pad{d}d"
        for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
        for d in (1, 2, 3)
    ),
    "Upsample",
    "PixelShuffle",
    "Identity",
    "Linear",
    "CrossEntropyLoss",
    "NLLLoss",
]


@pytest.mark.parametrize("name", ISSUE_11_LAYERS)
def test_every_layer_issue_11_lists_exists(name):
    assert inspect.isclass(getattr(fnn, name, None)), f"foldconv.nn has no {name}"
    assert name in fnn.__all__
    assert hasattr(torch.nn, name)
