"""Run the CPU convolution suite (shared/docs/bench-suite.md): foldconv vs PyTorch.

    python bench/bench_conv.py [--layers vgg_c3,depthwise] [--json] [--budget 2]
    python bench/bench_conv.py --in 16,256,13,13 --out-channels 384 --kernel 3 --padding 1

Prints a Markdown table of medians (ms), ratios ours/PyTorch and GFLOP/s; the same as
``foldconv bench``.
"""

from __future__ import annotations

import argparse
import sys

from foldconv.benchmark import add_arguments, layers_from_args, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        layers = layers_from_args(a)
    except ValueError as err:
        p.error(str(err))
    print(
        run(
            layers,
            min_reps=a.min_reps,
            budget_s=a.budget,
            as_json=a.json,
            algorithm=a.algorithm,
            settle_s=a.settle,
            baseline=a.baseline,
            rounds=a.rounds,
            channels_last=a.channels_last,
            clock=a.clock,
            progress=lambda s: print(s, file=sys.stderr),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
