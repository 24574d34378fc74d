"""Run the CPU convolution suite (shared/docs/bench-suite.md): foldconv vs PyTorch.

    python bench/bench_conv.py [--layers vgg_c3,depthwise] [--json] [--budget 2]

Prints a Markdown table of medians (ms), ratios ours/PyTorch and GFLOP/s.
"""

from __future__ import annotations

import argparse
import sys

from foldconv.benchmark import CPU_SUITE, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="", help="comma-separated suite names (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per layer")
    a = p.parse_args(argv)
    names = [n for n in a.layers.split(",") if n]
    layers = [l for l in CPU_SUITE if not names or l.name in names]
    print(
        run(
            layers,
            min_reps=a.min_reps,
            budget_s=a.budget,
            as_json=a.json,
            progress=lambda s: print(s, file=sys.stderr),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
