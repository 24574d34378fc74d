"""``import foldconv`` exposes its subpackages lazily, as ``import torch`` exposes ``torch.nn``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import foldconv

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("foldconv.nn", "foldconv.optim", "foldconv.data", "foldconv.models", "foldconv.trainer")


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_import_foldconv_does_not_import_the_subpackages():
    out = _run(
        "import sys, foldconv\n"
        "print(sorted(m for m in sys.modules if m.startswith('foldconv.')))\n"
        "print('torch' in sys.modules)"
    )
    loaded, torch_loaded = out.splitlines()
    for name in HEAVY:
        assert f"'{name}'" not in loaded, loaded
    assert torch_loaded == "False"


def test_subpackages_are_reachable_after_import_foldconv():
    out = _run(
        "import sys, foldconv\n"
        "layer = foldconv.nn.Conv2d(3, 4, 3)\n"
        "model = foldconv.models.alexnet()\n"
        "print(type(layer).__name__, type(model).__module__)\n"
        "print(foldconv.functional.conv.__name__, foldconv.optim.SGD.__name__)\n"
        "print(foldconv.data.__name__, 'foldconv.nn' in sys.modules)"
    )
    assert out.splitlines() == [
        "Conv2d foldconv.models._base",
        "conv SGD",
        "foldconv.data True",
    ]


@pytest.mark.parametrize("name", ["data", "functional", "models", "nn", "optim"])
def test_attribute_is_the_subpackage(name):
    import importlib  # noqa: PLC0415

    assert getattr(foldconv, name) is importlib.import_module(f"foldconv.{name}")
    assert name in dir(foldconv)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'convolution'"):
        foldconv.convolution  # noqa: B018
