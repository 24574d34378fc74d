"""The GPU check's scripts (bench/gpu_check.sh and bench/gpu_*.py) on the CPU.

They run on a GPU only in a session that is lent one; here, their ``--smoke`` mode runs the
same code on NumPy arrays and torch's CPU (tiny sizes, host-clock timing), so that a later
GPU session's few minutes are not spent on errors a CPU could have found. No timing is
asserted.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SUITE_DOC = ROOT / ".." / "shared" / "docs" / "bench-suite.md"


@pytest.fixture
def bench(monkeypatch):
    """The bench scripts importable as modules (they import each other by name)."""
    monkeypatch.syspath_prepend(str(BENCH))


def _gpu_here() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return proc.returncode == 0 and "GPU" in proc.stdout


def _env(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHON=sys.executable)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OUT", None)
    return env


# -- gpu_check.sh ------------------------------------------------------------------------
@pytest.mark.skipif(_gpu_here(), reason="this machine has an NVIDIA GPU")
def test_gpu_check_says_there_is_no_gpu_and_fails(tmp_path):
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no NVIDIA GPU" in proc.stderr
    assert "nothing was checked" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # it stopped before making anything


def test_gpu_check_rejects_unknown_arguments(tmp_path):
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--fast"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_stage_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.md",
        "pytest.log",
        "stages.log",
    ]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "smoke" and report["ok"] is True
    rows = report["rows"]
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    assert set(by_stage) == {"tests", "conv", "step", "train"}
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    # Every layer of the suite, forward and fwd+bwd, then the two geometric means.
    assert len(by_stage["conv"]) == 9 * 2 + 2
    assert by_stage["conv"][-1]["item"] == "geomean fwd+bwd"
    for r in by_stage["conv"][:-2]:
        assert max(r["data"]["errors"].values()) < 1e-4 and r["data"]["repeatable"]
    assert [r["data"]["network"] for r in by_stage["step"]] == ["alexnet_paper", "alexnet"]
    for r in by_stage["step"]:
        assert r["data"]["agreement"]["logits_rel_err"] < 1e-4
        assert r["data"]["ours_result"]["ms"] > 0 and r["data"]["torch_result"]["ms"] > 0
    assert len(by_stage["train"]) == 2
    assert "skipped" in by_stage["tests"][0]["ours"]  # tests/gpu skip without a GPU
    assert {"GPU", "CuPy", "torch", "numba", "foldconv"} <= set(report["machine"])
    # The table is printed last, and is the file's.
    md = (out / "gpu_check.md").read_text()
    assert "| stage | item | foldconv | reference | ratio | status | note |" in md
    assert proc.stdout.rstrip().splitlines()[-2] == md.rstrip().splitlines()[-1]
    # The work directory (caches, runs) is gone; the results stay.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("foldconv-gpu-check")]


# -- the suite -----------------------------------------------------------------------------
def _doc_gpu_suite() -> list[tuple]:
    """The GPU suite's rows of shared/docs/bench-suite.md, as Layer fields."""
    text = SUITE_DOC.read_text()
    section = text.split("## GPU suite", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or cells[0] in ("name",) or cells[0].startswith("---"):
            if rows:
                break
            continue
        name, n, chans, size, k, s, p, d, g = cells
        cin, cout = chans.split("→")
        h, w = size.split("×")
        rows.append(
            (name, int(n), int(cin), int(cout), (int(h), int(w)), int(k), int(s), int(p), int(d))
            + (int(g),)
        )
    return rows


@pytest.mark.skipif(not SUITE_DOC.exists(), reason="../shared/docs/bench-suite.md is absent")
def test_suite_is_the_shared_gpu_suite(bench):
    import gpu_suite

    ours = [
        (
            layer.name,
            layer.batch,
            layer.in_channels,
            layer.out_channels,
            layer.size,
            layer.kernel,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
        for layer in gpu_suite.GPU_SUITE
    ]
    assert ours == _doc_gpu_suite()
    assert set(gpu_suite.H100_CUDNN_MS) == {layer.name for layer in gpu_suite.GPU_SUITE}


def test_smoke_layers_are_small_valid_versions_of_the_suite(bench):
    import gpu_suite

    for layer in gpu_suite.GPU_SUITE:
        s = gpu_suite.smoke_layer(layer)
        assert s.batch == 2 and max(s.size) <= 15 and max(s.in_channels, s.out_channels) <= 8
        assert s.in_channels % s.groups == 0 and s.out_channels % s.groups == 0
        assert (s.groups > 1) == (layer.groups > 1)
        assert (s.groups == s.in_channels) == (layer.groups == layer.in_channels)
        assert (s.kernel, s.stride, s.padding, s.dilation) == (
            layer.kernel,
            layer.stride,
            layer.padding,
            layer.dilation,
        )
        assert min(s.out_size()) >= 1


def test_a_failing_layer_is_reported_and_the_suite_goes_on(bench, capsys):
    pytest.importorskip("torch")
    import gpu_common
    import gpu_suite
    from foldconv.benchmark import Layer

    dev = gpu_common.Device(smoke=True)
    stage = gpu_common.Stage("conv", None, "smoke")
    bad = Layer("kernel_too_big", 1, 2, 2, (2, 2), 3)  # a 3x3 kernel on a 2x2 input
    good = gpu_suite.smoke_layer(gpu_suite.GPU_SUITE[0])
    gpu_suite.run(dev, [bad, good], stage, warmup=1, repeats=1, budget_s=60)
    items = [(r["item"], r["status"]) for r in stage.rows]
    assert items == [
        ("kernel_too_big", "FAILED"),
        ("lenet_c1 fwd", "ok"),
        ("lenet_c1 fwd+bwd", "ok"),
        ("geomean fwd", "ok"),
        ("geomean fwd+bwd", "ok"),
    ]
    assert stage.rows[0]["note"].startswith("ValueError")
    err = capsys.readouterr().err
    assert "===== conv kernel_too_big FAILED =====" in err and "Traceback" in err
    assert not stage.ok()


def test_layers_past_the_budget_are_listed_as_skipped(bench):
    pytest.importorskip("torch")
    import gpu_common
    import gpu_suite

    dev = gpu_common.Device(smoke=True)
    stage = gpu_common.Stage("conv", None, "smoke")
    layers = [gpu_suite.smoke_layer(layer) for layer in gpu_suite.GPU_SUITE[:2]]
    gpu_suite.run(dev, layers, stage, warmup=1, repeats=1, budget_s=0.0)
    assert [(r["item"], r["status"]) for r in stage.rows] == [
        ("lenet_c1", "skipped (time budget)"),
        ("alexnet_c1", "skipped (time budget)"),
    ]


# -- the training step's agreement check -------------------------------------------------
def test_agreement_check_passes_for_twins_and_catches_a_changed_weight(bench):
    torch = pytest.importorskip("torch")
    import gpu_common
    import gpu_step
    from foldconv.models import lenet5
    from tests.models.test_models import torch_lenet5

    dev = gpu_common.Device(smoke=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    ours = lenet5(rng=0)
    theirs = gpu_step.torch_twin(ours, torch_lenet5, dev)
    good = gpu_step.agreement(dev, ours, theirs, x, y)
    assert good["logits_rel_err"] < 1e-6 and good["loss_rel_diff"] < 1e-5
    assert len(good["losses"]) == 3 and good["losses"][2][0] < good["losses"][0][0]
    assert ours.training and theirs.training  # train mode restored

    ours = lenet5(rng=0)
    theirs = gpu_step.torch_twin(ours, torch_lenet5, dev)
    with torch.no_grad():
        theirs.features[0].weight[0, 0, 0, 0] += 0.5
    bad = gpu_step.agreement(dev, ours, theirs, x, y)
    assert bad["logits_rel_err"] > gpu_common.MISMATCH_TOL


def test_torch_twin_copies_and_refuses_other_layouts(bench):
    pytest.importorskip("torch")
    import gpu_common
    import gpu_step
    from foldconv.models import lenet5
    from tests.models.test_models import torch_lenet5

    dev = gpu_common.Device(smoke=True)
    ours = lenet5(rng=0)
    theirs = gpu_step.torch_twin(ours, torch_lenet5, dev)
    w = theirs.features[0].weight
    np.testing.assert_array_equal(w.detach().numpy(), ours.state_dict()["features.0.weight"])
    ours.state_dict()["features.0.weight"][...] = 0  # not shared with torch's copy
    assert float(w.detach().abs().sum()) > 0
    with pytest.raises(ValueError, match="vs torch"):
        gpu_step.torch_twin(ours, lambda: torch_lenet5(num_classes=7), dev)


# -- gpu_common ----------------------------------------------------------------------------
def test_rel_err_and_timing_helpers(bench):
    import gpu_common

    a = np.arange(1.0, 5.0)
    assert gpu_common.rel_err(a, a) == 0.0
    assert gpu_common.rel_err(a * (1 + 1e-3), a) == pytest.approx(1e-3)
    assert gpu_common.rel_err(np.array([np.nan, 1.0]), np.ones(2)) == np.inf
    with pytest.raises(ValueError, match="shapes differ"):
        gpu_common.rel_err(a, a[:2])
    assert gpu_common.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert gpu_common.fmt_ms(None) == "—" and gpu_common.fmt_gib(2**30) == "1.00 GiB"

    dev = gpu_common.Device(smoke=True)
    calls = []
    times = gpu_common.interleaved_ms(
        dev,
        {"a": ("ours", lambda: calls.append("a")), "b": ("torch", lambda: calls.append("b"))},
        warmup=2,
        repeats=3,
        budget_s=60,
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up, then interleaved
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())
    with pytest.raises(ValueError, match="framework: expected 'ours' or 'torch'"):
        dev.time_ms(lambda: None, "numpy")
    assert dev.peak_bytes_ours(lambda: np.ones(2**20)) >= 8 * 2**20


def test_stage_rewrites_its_json_after_every_row(bench, tmp_path, capsys):
    import gpu_common

    path = tmp_path / "conv.json"
    stage = gpu_common.Stage("conv", str(path), "smoke", repeats=2)
    assert json.loads(path.read_text())["complete"] is False
    stage.add("layer fwd", ours="1.000 ms", ratio=1.5, t=1)
    doc = json.loads(path.read_text())
    assert doc["complete"] is False and doc["rows"][0]["data"] == {"t": 1}
    assert "conv: layer fwd | 1.000 ms | 1.50x | ok" in capsys.readouterr().out
    stage.add("other", status="MISMATCH")
    stage.finish(extra=3)
    doc = json.loads(path.read_text())
    assert doc["complete"] is True and doc["info"] == {"repeats": 2, "extra": 3}
    assert not stage.ok() and not list(tmp_path.glob("*.tmp"))


# -- gpu_report ------------------------------------------------------------------------------
def test_parse_pytest_summary(bench):
    import gpu_report

    log = "\n".join(
        [
            "..F.s",
            "FAILED tests/gpu/test_conv.py::test_x[1] - AssertionError: bad",
            "ERROR tests/gpu_kernels/test_pool.py::test_y - RuntimeError",
            "2 failed, 10 passed, 1 skipped, 1 error in 12.34s",
        ]
    )
    p = gpu_report.parse_pytest(log)
    assert p["counts"] == {"failed": 2, "passed": 10, "skipped": 1, "error": 1}
    assert p["seconds"] == 12.34
    assert p["failed"] == [
        "tests/gpu/test_conv.py::test_x[1] - AssertionError: bad",
        "tests/gpu_kernels/test_pool.py::test_y - RuntimeError",
    ]
    assert gpu_report.parse_pytest("===== 3 passed in 0.5s =====")["counts"] == {"passed": 3}
    assert gpu_report.parse_pytest("")["counts"] == {}


def test_report_marks_missing_killed_and_failing_stages(bench, tmp_path, capsys):
    import gpu_common
    import gpu_report

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    machine = gpu_common.Stage("machine", str(work / "machine.json"), "full")
    machine.add("GPU", ours="NVIDIA Test | 1 GiB")
    machine.finish()
    capsys.readouterr()  # what the stages printed as they went
    (work / "machine.rc").write_text("0 1 20\n")
    (work / "tests.cmd").write_text("pytest tests/gpu tests/gpu_kernels\n")
    (work / "tests.rc").write_text("1 30 90\n")
    (out / "pytest.log").write_text(
        "FAILED tests/gpu/test_a.py::test_b - AssertionError: x\n1 failed, 4 passed in 3.00s\n"
    )
    conv = gpu_common.Stage("conv", str(work / "conv.json"), "full")
    conv.add("lenet_c1 fwd", ours="0.1 ms", reference="0.05 ms cuDNN", ratio=2.0)
    capsys.readouterr()
    (work / "conv.rc").write_text("124 55 55\n")  # killed at its cap: incomplete
    (work / "step.rc").write_text("1 3 60\n")  # crashed before writing anything
    rc = gpu_report.main(["table", "--dir", str(work), "--out", str(out), "--seconds", "99"])
    assert rc == 1
    report = json.loads((out / "gpu_check.json").read_text())
    got = [(r["stage"], r["item"], r["status"]) for r in report["rows"]]
    assert got == [
        ("tests", "pytest tests/gpu tests/gpu_kernels", "FAILED"),
        ("tests", "tests/gpu/test_a.py::test_b", "FAILED"),
        ("conv", "lenet_c1 fwd", "ok"),
        ("conv", "(stage)", "FAILED"),
        ("step", "(stage)", "FAILED"),
        ("train", "(stage)", "FAILED"),
    ]
    notes = [r["note"] for r in report["rows"]]
    assert "killed at its time cap (55 s)" in notes[3]
    assert "exit 1 after 3 s" in notes[4] and "did not run" in notes[5]
    assert report["rows"][0]["ours"] == "1 failed, 4 passed in 3 s"
    assert report["machine"] == {"GPU": "NVIDIA Test | 1 GiB"}
    md = (out / "gpu_check.md").read_text()
    assert md == capsys.readouterr().out
    assert "5 FAILED, 99 s" in md.splitlines()[0]
    assert "- GPU: NVIDIA Test \\| 1 GiB" in md  # cells are escaped
    assert "| conv | lenet_c1 fwd | 0.1 ms | 0.05 ms cuDNN | 2.00x | ok |  |" in md


def test_machine_info_says_why_an_item_is_missing(bench):
    import gpu_report

    info = gpu_report.machine_info()
    assert {"GPU", "CuPy", "torch", "torchvision", "numba", "foldconv"} <= set(info)
    assert all(isinstance(v, str) and v for v in info.values())
    if not _gpu_here():
        assert info["GPU"].startswith("unavailable (")
