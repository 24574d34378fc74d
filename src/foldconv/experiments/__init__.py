"""The AlexNet paper's claims, re-measured at small scale.

``foldconv experiment NAME`` (or :func:`run_experiment`) trains two arms of a small
AlexNet-like network (:func:`small_alexnet`) that differ only in the property under test,
for several seeds, and writes a JSON of the numbers and a PNG plot:

- ``relu-vs-tanh``: epochs to reach 25% training error, ReLU against tanh (Figure 1);
- ``lrn``: test error with and without local response normalisation (Section 3.3);
- ``overlapping-pool``: 3x3 stride 2 against 2x2 stride 2 max pooling (Section 3.4);
- ``dropout``: over-fitting with and without dropout (Section 4.2).

See docs/experiments.md for what was measured.
"""

from foldconv.experiments.network import small_alexnet
from foldconv.experiments.run import (
    DATASETS,
    EXPERIMENTS,
    Experiment,
    build_arm,
    default_settings,
    format_result,
    plot_experiment,
    run_experiment,
    spread,
)

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "Experiment",
    "build_arm",
    "default_settings",
    "format_result",
    "plot_experiment",
    "run_experiment",
    "small_alexnet",
    "spread",
]
