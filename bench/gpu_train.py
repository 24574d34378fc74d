"""`foldconv train --device cuda` (LeNet-5, digits) against the same run on the CPU.

Runs the CLI twice, ``foldconv train --model lenet5 --dataset digits --seed 0`` with
``--device cuda`` and ``--device cpu``, at the same time, each in its own process (as a
user would; the wall times in the table are of concurrent runs), reads
both ``summary.json`` files, and evaluates the GPU run's best checkpoint on the CPU and on
the GPU (``foldconv.trainer.evaluate``): checkpoints must move between devices unchanged,
so both must give the GPU run's best test accuracy. Issue 10's target: the GPU run reaches
the CPU run's accuracy (here: within 1 percentage point, about 4 of digits' 360 test images).

    python bench/gpu_train.py [--quick] [--epochs 10] [--json PATH]
    python bench/gpu_train.py --smoke      # both runs on the CPU, 1 epoch: checks the code
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from gpu_common import Stage, add_common_arguments, failure

# "Reaches the CPU run's accuracy": within this many points (a fraction) of it.
ACCURACY_TOLERANCE = 0.01


def train_command(device: str, epochs: int, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "foldconv",
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "digits",
        "--seed",
        "0",
        "--epochs",
        str(epochs),
        "--device",
        device,
        "--no-progress",
        "--out",
        out,
    ]


def train_runs(
    devices: dict[str, str], epochs: int, work: str, timeout_s: float
) -> dict[str, dict[str, Any] | Exception]:
    """``foldconv train`` once per ``{name: device}``, all at once, each in its own process
    (the CPU run uses the cores, the GPU run mostly the GPU: together they take the time of
    the longer). Returns per name the run's summary.json, its wall time and command, or the
    exception saying why it failed (a non-zero exit, with the last line of its output, or
    the time budget)."""
    procs = {}
    t0 = time.perf_counter()
    for name, device in devices.items():
        cmd = train_command(device, epochs, os.path.join(work, name))
        print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
        procs[name] = (
            cmd,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        )
    results: dict[str, dict[str, Any] | Exception] = {}
    for name, (cmd, proc) in procs.items():
        left = max(timeout_s - (time.perf_counter() - t0), 0.1)
        try:
            output, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            sys.stderr.write(f"----- {name} ({devices[name]}), killed -----\n{output}")
            results[name] = RuntimeError(f"stopped at the stage's time budget ({timeout_s:.0f} s)")
            continue
        wall = time.perf_counter() - t0
        sys.stderr.write(f"----- {name} ({devices[name]}) -----\n{output}")
        if proc.returncode != 0:
            tail = output.strip().splitlines()[-1:] or ["(no output)"]
            results[name] = RuntimeError(f"exit {proc.returncode}: {tail[0][:180]}")
            continue
        with open(os.path.join(work, name, "summary.json")) as f:
            summary = json.load(f)
        results[name] = {"summary": summary, "process_seconds": wall, "command": " ".join(cmd[2:])}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, budget=35.0)
    p.add_argument("--epochs", type=int, default=None, help="default 10 (quick 3, smoke 1)")
    p.add_argument("--work", default=None, help="directory for the runs (default: a temp dir)")
    a = p.parse_args(argv)
    epochs = a.epochs or (1 if a.smoke else 3 if a.quick else 10)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    # The smoke run trains on the CPU twice: the same code, no GPU.
    device = "cpu" if a.smoke else "cuda"
    stage = Stage("train", a.json, mode, epochs=epochs, device=device)
    work = a.work or tempfile.mkdtemp(prefix="foldconv-gpu-train-")
    runs: dict[str, dict[str, Any]] = {}
    devices = {"gpu": device, "cpu": "cpu"}
    # A quarter of the budget stays for the two evaluations after the runs.
    for name, r in train_runs(devices, epochs, work, timeout_s=0.75 * a.budget).items():
        if isinstance(r, Exception):
            label = f"foldconv train --device {devices[name]}"
            stage.add(label, status="FAILED", note=failure(label, r))
        else:
            runs[name] = r
    g, c = runs.get("gpu"), runs.get("cpu")
    if g or c:

        def describe(r: dict[str, Any] | None) -> str:
            if r is None:
                return "FAILED"
            s = r["summary"]
            return f"{100 * s['test_accuracy']:.2f}% in {s['wall_seconds']:.1f} s"

        status, note = "FAILED", "a run failed"
        if g and c:
            diff = g["summary"]["test_accuracy"] - c["summary"]["test_accuracy"]
            reached = diff >= -ACCURACY_TOLERANCE
            status = "ok" if reached else "FAILED"
            note = (
                f"{'reaches' if reached else 'below'} the CPU run's accuracy "
                f"({100 * diff:+.2f} points; tolerance {100 * ACCURACY_TOLERANCE:g})"
            )
        stage.add(
            f"lenet5 digits {epochs} ep --device {device}",
            ours=describe(g),
            reference=f"cpu: {describe(c)}",
            status=status,
            note=note,
            gpu=g,
            cpu=c,
        )
    if g is not None:
        # The GPU run's best checkpoint, evaluated on each device.
        from foldconv.trainer import evaluate  # noqa: PLC0415

        best = g["summary"]["best_test_accuracy"]
        accs: dict[str, float] = {}
        n_test = 0
        notes = []
        for dev in dict.fromkeys(("cpu", device)):
            try:
                r = evaluate(os.path.join(work, "gpu"), device=dev)
                accs[dev], n_test = r["accuracy"], r["n"]
            except Exception as err:  # noqa: BLE001
                notes.append(f"{dev}: {failure(f'evaluate --device {dev}', err)}")
        # The same weights on another device round differently: allow one test image to
        # change its predicted class.
        same = len(accs) == len(dict.fromkeys(("cpu", device))) and all(
            abs(v - best) * n_test <= 1 + 1e-6 for v in accs.values()
        )
        shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in accs.items())
        stage.add(
            f"the --device {device} run's checkpoint evaluated",
            ours=shown,
            reference=f"run's best {100 * best:.2f}%",
            status="ok" if same else "FAILED",
            note="; ".join(notes) or ("same accuracy" if same else "accuracies differ by >1 image"),
            accuracies=accs,
            best_test_accuracy=best,
        )
    stage.finish(work=work)
    return 0 if stage.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
