"""The machine stage and the final table of bench/gpu_check.sh.

    python bench/gpu_report.py machine --json PATH [--smoke]
    python bench/gpu_report.py table --dir WORK --out DIR [--mode full] [--seconds S]

``machine`` records the GPU (nvidia-smi's name, memory, compute capability, driver and
CUDA version) and the versions of CuPy (and its CUDA runtime), torch (CUDA, cuDNN),
torchvision, numba, numba-cuda, NumPy, Python and foldconv (with the git commit). Each
item that cannot be read says why instead.

``table`` reads what the stages left in WORK (``<stage>.json`` rows, ``<stage>.rc`` = exit
status, seconds and time cap; the tests' log in DIR/pytest.log) and writes one table of
all results as DIR/gpu_check.md and DIR/gpu_check.json, and prints it. A stage that left
no rows, stopped early or timed out is a FAILED row. Exit status 0 if nothing FAILED or
MISMATCHed, else 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from typing import Any

from gpu_common import Stage, failure

STAGES = ("machine", "tests", "conv", "step", "train")
TITLES = {
    "machine": "machine",
    "tests": "GPU tests (tests/gpu, tests/gpu_kernels)",
    "conv": "convolution suite vs cuDNN",
    "step": "AlexNet training step",
    "train": "foldconv train --device cuda",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=8, check=True).stdout


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """Name -> description of each part of the machine and software (never raises)."""
    info: dict[str, str] = {}

    def item(name: str, fn: Any) -> None:
        try:
            info[name] = fn()
        except Exception as err:  # noqa: BLE001 - each item says why it is missing
            info[name] = f"unavailable ({type(err).__name__}: {str(err).strip()[:120]})"

    def gpu() -> str:
        q = "name,memory.total,compute_cap,driver_version"
        rows = _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"]).strip()
        m = re.search(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]))
        gpus = [r.split(", ") for r in rows.splitlines()]
        text = "; ".join(
            f"{n}, {mem}, compute capability {cc}, driver {d}" for n, mem, cc, d in gpus
        )
        return f"{text}; CUDA (driver) {m.group(1) if m else '?'}"

    def cupy() -> str:
        import cupy as cp  # noqa: PLC0415

        rt = cp.cuda.runtime.runtimeGetVersion()
        return f"{cp.__version__} (CUDA runtime {rt // 1000}.{rt % 1000 // 10})"

    def torch() -> str:
        import torch as t  # noqa: PLC0415

        text = f"{t.__version__}, CUDA {t.version.cuda}, cuDNN {t.backends.cudnn.version()}"
        if t.cuda.is_available():
            text += f", sees {t.cuda.get_device_name(0)}"
        return text

    def numba() -> str:
        return f"numba {_version('numba')}, numba-cuda {_version('numba-cuda')}"

    def foldconv() -> str:
        import foldconv as f  # noqa: PLC0415

        try:
            commit = _run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip()
            dirty = _run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
            commit += " (uncommitted changes)" if dirty.strip() else ""
        except Exception:  # noqa: BLE001 - a copy without .git
            commit = "no git checkout"
        return f"{getattr(f, '__version__', '?')} from {os.path.dirname(f.__file__)}, {commit}"

    item("GPU", gpu)
    item("CuPy", cupy)
    item("torch", torch)
    item("torchvision", lambda: _version("torchvision"))
    item("numba", numba)
    item("NumPy / Python", lambda: f"{_version('numpy')} / {platform.python_version()}")
    item("CPU", lambda: f"{platform.machine()}, {os.cpu_count()} cores")
    item("foldconv", foldconv)
    return info


def cmd_machine(args: argparse.Namespace) -> int:
    stage = Stage("machine", args.json, "smoke" if args.smoke else "full")
    for name, text in machine_info().items():
        stage.add(name, ours=text)
    stage.finish()
    return 0


# ------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------
def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_rc(path: str) -> tuple[int, float, float] | None:
    """(exit status, seconds, time cap) written by gpu_check.sh, or None."""
    try:
        with open(path) as f:
            rc, secs, cap = f.read().split()[:3]
        return int(rc), float(secs), float(cap)
    except (OSError, ValueError):
        return None


def _why(rc: tuple[int, float, float] | None) -> str:
    if rc is None:
        return "did not run"
    code, secs, cap = rc
    if code in (124, 137):
        return f"killed at its time cap ({cap:g} s)"
    return f"exit {code} after {secs:.0f} s"


def _row(stage: str, item: str, status: str, note: str = "", **kw: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "item": item,
        "ours": kw.get("ours", ""),
        "reference": kw.get("reference", ""),
        "ratio": kw.get("ratio"),
        "status": status,
        "note": note,
        "data": kw.get("data", {}),
    }


_SUMMARY = re.compile(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in ([\d.]+)s")


def parse_pytest(log: str) -> dict[str, Any]:
    """Counts (passed, failed, ...), seconds and failed test ids from pytest's output."""
    counts: dict[str, int] = {}
    seconds = None
    for line in reversed(log.splitlines()):
        m = _SUMMARY.match(line.strip())
        if m:
            for part in m.group(1).split(", "):
                n, word = part.split(" ", 1)
                counts[word] = int(n)
            seconds = float(m.group(2))
            break
    failed = [
        line.split(" ", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    return {"counts": counts, "seconds": seconds, "failed": failed}


def tests_rows(work: str, out: str) -> list[dict[str, Any]]:
    rc = _read_rc(os.path.join(work, "tests.rc"))
    try:
        with open(os.path.join(out, "pytest.log")) as f:
            log = f.read()
    except OSError:
        log = ""
    p = parse_pytest(log)
    counts = ", ".join(f"{n} {w}" for w, n in p["counts"].items()) or "no summary line"
    if p["seconds"] is not None:
        counts += f" in {p['seconds']:.0f} s"
    ok = rc is not None and rc[0] == 0
    status = "ok" if ok else "FAILED"
    note = "full output: pytest.log"
    if rc is not None and rc[0] == 5:
        note = "no tests collected; " + note
    elif not ok:
        note = f"{_why(rc)}; " + note
    try:
        with open(os.path.join(work, "tests.cmd")) as f:
            command = f.read().strip()
    except OSError:
        command = "pytest"
    rows = [_row("tests", command, status, note, ours=counts, data=p)]
    shown = p["failed"][:15]
    for test in shown:
        ident, _, msg = test.partition(" - ")
        rows.append(_row("tests", ident, "FAILED", msg[:160]))
    if len(p["failed"]) > len(shown):
        rows.append(_row("tests", f"... {len(p['failed']) - len(shown)} more", "FAILED"))
    return rows


def stage_rows(work: str, name: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    doc = _read_json(os.path.join(work, f"{name}.json"))
    rc = _read_rc(os.path.join(work, f"{name}.rc"))
    rows = list(doc["rows"]) if doc else []
    if doc is None:
        rows.append(_row(name, "(stage)", "FAILED", f"no results: {_why(rc)}; see stages.log"))
    elif not doc.get("complete"):
        rows.append(
            _row(name, "(stage)", "FAILED", f"stopped before the end: {_why(rc)}; see stages.log")
        )
    return rows, doc


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict[str, Any]], machine: list[dict[str, Any]], head: str) -> str:
    lines = [head, ""]
    lines += [f"- {_cell(r['item'])}: {_cell(r['ours'])}" for r in machine]
    lines += [
        "",
        "| stage | item | foldconv | reference | ratio | status | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cells = (r["stage"], r["item"], r["ours"], r["reference"], ratio, r["status"], r["note"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cmd_table(args: argparse.Namespace) -> int:
    work, out = args.dir, args.out
    os.makedirs(out, exist_ok=True)
    stages: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    machine_rows, machine_doc = stage_rows(work, "machine")
    stages["machine"] = machine_doc
    for name in STAGES[1:]:
        if name == "tests":
            r = tests_rows(work, out)
            stages["tests"] = r[0]["data"]
        else:
            r, stages[name] = stage_rows(work, name)
        rows += r
    for name in STAGES:
        rc = _read_rc(os.path.join(work, f"{name}.rc"))
        if rc is not None and stages.get(name) is not None:
            stages[name]["exit"], stages[name]["wall_seconds"], stages[name]["cap"] = rc
    failed = [r for r in rows + machine_rows if r["status"].startswith(("FAILED", "MISMATCH"))]
    ok = not failed
    mode = {
        "smoke": "smoke: CPU, tiny sizes, NumPy and torch CPU; the times mean nothing",
        "quick": "quick: fewer repetitions",
        "full": "full",
    }.get(args.mode, args.mode)
    head = (
        f"## foldconv GPU check ({mode}): {'all stages ok' if ok else f'{len(failed)} FAILED'}"
        + (f", {args.seconds:.0f} s" if args.seconds is not None else "")
    )
    text = markdown(rows, [r for r in machine_rows if r["item"] != "(stage)"], head)
    report = {
        "mode": args.mode,
        "ok": ok,
        "seconds": args.seconds,
        "machine": {r["item"]: r["ours"] for r in machine_rows},
        "rows": rows,
        "stages": stages,
    }
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("machine", help="record the machine and the versions")
    m.add_argument("--json", default=None)
    m.add_argument("--smoke", action="store_true")
    m.set_defaults(handler=cmd_machine)
    t = sub.add_parser("table", help="the final table of all stages")
    t.add_argument("--dir", required=True, help="the stages' work directory")
    t.add_argument("--out", required=True, help="where gpu_check.md/.json go (pytest.log there)")
    t.add_argument("--mode", default="full")
    t.add_argument("--seconds", type=float, default=None, help="total wall time, for the title")
    t.set_defaults(handler=cmd_table)
    args = p.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as err:  # noqa: BLE001
        print(f"gpu_report: {failure(args.command, err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
