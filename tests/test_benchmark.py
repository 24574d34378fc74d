"""foldconv bench: the suite definition, custom layers, the JSON output."""

import json

import pytest

from foldconv import benchmark
from foldconv.cli import main


def test_suite_is_the_shared_cpu_suite():
    names = [layer.name for layer in benchmark.CPU_SUITE]
    assert names == [
        "lenet_c1",
        "lenet_c2",
        "alexnet_c1",
        "alexnet_c2_g2",
        "alexnet_c3",
        "vgg_c3",
        "resnet_1x1",
        "resnet_s2",
        "depthwise",
        "dilated",
    ]
    c3 = benchmark.CPU_SUITE[4]
    assert c3.out_size() == (13, 13)
    # 2 · N · C_out · H·W · C_in · K·K
    assert c3.forward_flops() == 2 * 16 * 384 * 169 * 256 * 9


def test_bench_one_custom_layer_as_json(capsys):
    rc = main(
        [
            "bench",
            "--in",
            "2,4,9,9",
            "--out-channels",
            "6",
            "--kernel",
            "3",
            "--padding",
            "1",
            "--budget",
            "0.01",
            "--min-reps",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["layer"]["size"] == [9, 9] and row["layer"]["out_channels"] == 6
    assert row["ours_fwd_ms"] > 0 and row["ours_fwd_bwd_ms"] > 0
    if "torch" in report["machine"]:
        assert row["ratio_fwd"] == pytest.approx(row["ours_fwd_ms"] / row["torch_fwd_ms"])


def test_bench_rounds_report_medians_and_the_ratio_range(capsys):
    args = ["bench", "--in", "2,3,8,8", "--out-channels", "4", "--kernel", "3"]
    args += ["--budget", "0.01", "--min-reps", "2", "--rounds", "3"]
    assert main(args + ["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["rounds"] == 3
    if "ratio_fwd_bwd" in row:
        assert row["ratio_fwd_bwd_min"] <= row["ratio_fwd_bwd"] <= row["ratio_fwd_bwd_max"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "rounds: 3" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert main(["bench", "--rounds", "0"]) == 2
    assert "rounds" in capsys.readouterr().err


def test_merge_rounds_takes_medians():
    rounds = [
        [{"name": "a", "ours_fwd_ms": v, "ratio_fwd_bwd": v / 10, "picked": None}]
        for v in (3.0, 1.0, 2.0)
    ]
    (row,) = benchmark.merge_rounds(rounds)
    assert row["ours_fwd_ms"] == 2.0 and row["ratio_fwd_bwd"] == pytest.approx(0.2)
    assert row["ratio_fwd_bwd_min"] == pytest.approx(0.1)
    assert row["ratio_fwd_bwd_max"] == pytest.approx(0.3)


def test_bench_rejects_bad_layers(capsys):
    assert main(["bench", "--layers", "nope"]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["bench", "--in", "2,x,9"]) == 2
    assert "--in" in capsys.readouterr().err


def test_plain_numpy_baseline_computes_the_convolution():
    import numpy as np

    from foldconv.functional import conv, conv_backward
    from tests.gradcheck import rel_err

    rng = np.random.default_rng(0)
    layer = benchmark.Layer("t", 2, 4, 6, (9, 8), 3, stride=2, padding=1, dilation=1, groups=2)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    plain = benchmark.PlainNumPy(layer)
    opts = dict(stride=2, padding=1, groups=2)
    y = plain.forward(x, w, b)
    assert rel_err(y, conv(x, w, b, **opts, algorithm="direct")) <= 1e-12
    dy = rng.standard_normal(y.shape)
    ours = conv_backward(dy, x, w, **opts, algorithm="direct")
    for a, r in zip(plain.backward(dy, x, w), ours, strict=True):
        assert rel_err(a, r) <= 1e-12


@pytest.mark.parametrize("size", [(7,), (9, 8), (5, 6, 4)])
def test_torch_channels_last_calls_compute_the_same_convolution(size):
    torch = pytest.importorskip("torch")
    import numpy as np

    layer = benchmark.Layer("t", 2, 4, 6, size, 3, stride=2, padding=1, groups=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4) + size, dtype=np.float32)
    w = rng.standard_normal((6, 2) + (3,) * len(size), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    gy = rng.standard_normal((2, 6) + layer.out_size(), dtype=np.float32)
    fns = benchmark.torch_callables(torch, layer, x, w, b, gy)
    if len(size) == 1:  # PyTorch has no channels-last format for 1-d
        assert set(fns) == {"torch_fwd", "torch_fwd_bwd"}
        return
    assert set(fns) == {"torch_fwd", "torch_fwd_bwd", "torch_cl_fwd", "torch_cl_fwd_bwd"}
    fmt = torch.channels_last if len(size) == 2 else torch.channels_last_3d
    y, y_cl = fns["torch_fwd"](), fns["torch_cl_fwd"]()
    assert y.is_contiguous() and y_cl.is_contiguous(memory_format=fmt)
    np.testing.assert_allclose(y_cl.numpy(), y.numpy(), rtol=1e-5, atol=1e-5)
    grads = [t.grad for t in fns["torch_fwd_bwd"]()]
    grads_cl = [t.grad for t in fns["torch_cl_fwd_bwd"]()]
    assert grads_cl[0].is_contiguous(memory_format=fmt)
    for g_cl, g in zip(grads_cl, grads, strict=True):
        np.testing.assert_allclose(g_cl.numpy(), g.numpy(), rtol=1e-5, atol=1e-5)


def test_bench_layer_reports_the_faster_torch_layout():
    pytest.importorskip("torch")
    layer = benchmark.Layer("t", 2, 3, 4, (8, 8), 3, padding=1)
    row = benchmark.bench_layer(layer, min_reps=1, budget_s=0.0, settle_s=0.0)
    for p in ("fwd", "fwd_bwd"):
        nchw, cl = row[f"torch_nchw_{p}_ms"], row[f"torch_cl_{p}_ms"]
        assert row[f"torch_{p}_ms"] == min(nchw, cl)
        assert row[f"torch_{p}_layout"] == ("NCHW" if nchw <= cl else "NHWC")
        assert row[f"ratio_{p}"] == pytest.approx(row[f"ours_{p}_ms"] / min(nchw, cl))
    row = benchmark.bench_layer(layer, min_reps=1, budget_s=0.0, settle_s=0.0, channels_last=False)
    assert "torch_cl_fwd_ms" not in row and row["torch_fwd_layout"] == "NCHW"
    layer3 = benchmark.Layer("t3", 1, 2, 3, (4, 5, 4), 3, padding=1)
    row = benchmark.bench_layer(layer3, min_reps=1, budget_s=0.0, settle_s=0.0)
    assert {row["torch_fwd_layout"], row["torch_fwd_bwd_layout"]} <= {"NCDHW", "NDHWC"}
    layer1 = benchmark.Layer("t1", 2, 2, 3, (9,), 3)
    row = benchmark.bench_layer(layer1, min_reps=1, budget_s=0.0, settle_s=0.0)
    assert row["torch_fwd_layout"] == "NCL" and "torch_cl_fwd_ms" not in row


def test_table_names_the_layout_and_merge_counts_the_rounds_it_won():
    rows = []
    for layout in ("NHWC", "NCHW", "NHWC"):
        row = {"name": "a", "algorithm": "im2col", "picked": None, "ours_fwd_bwd_gflops": 1.0}
        for p in ("fwd", "fwd_bwd"):
            row.update({f"ours_{p}_ms": 2.0, f"torch_nchw_{p}_ms": 4.0, f"torch_cl_{p}_ms": 1.0})
        benchmark._against_faster_torch(row)
        row["torch_fwd_layout"] = layout
        rows.append([row])
    (merged,) = benchmark.merge_rounds(rows)
    assert merged["torch_fwd_layout"] == "NHWC (2/3)"
    assert merged["torch_fwd_bwd_layout"] == "NHWC" and merged["ratio_fwd_bwd"] == 2.0
    table = benchmark.format_table([merged])
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert "torch f+b layout" in lines[0] and "NHWC (2/3)" in lines[2]
    assert len({line.count("|") for line in lines}) == 1
    assert "NCHW only" in table and "f+b 0.50" in table


def _sgemm_sources():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "sgemm_sources.py"
    spec = importlib.util.spec_from_file_location("sgemm_sources", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_threads(n=None):
    """torch's intra-op thread count (set to ``n`` if given), None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def test_sgemm_sources_compute_the_product_in_every_layout(tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    sgemm = _sgemm_sources()
    shapes = [
        dict(name=f"t{ta}{tb}", m=5, n=7, k=9, ta=ta, tb=tb)
        for ta in (False, True)
        for tb in (False, True)
    ]
    sgemm.write_references(shapes, str(tmp_path))
    ran = []
    for source in sgemm.SOURCES:
        # The workers set thread counts for their whole process: restore them after.
        torch_threads = _torch_threads()
        blas_threads = max(lib["num_threads"] for lib in threadpoolctl.threadpool_info())
        result = sgemm.worker(source, 1, shapes, str(tmp_path), check=True)
        threadpoolctl.threadpool_limits(blas_threads, user_api="blas")
        _torch_threads(torch_threads)
        if "error" in result:  # the source is not installed here
            continue
        ran.append(result)
        for row in result["rows"]:
            assert row["err"] <= 9 * 2.0**-24, (source, row)
            assert row["s"] > 0
    assert ran and ran[0]["source"] == "numpy"
    report = sgemm.format_report(shapes, [dict(r, round=0) for r in ran])
    lines = [line for line in report.splitlines() if line.startswith("|")]
    assert len(lines) == 2 * (2 + len(shapes)) and "WRONG" not in report


def test_sgemm_shapes_are_the_im2col_gemms_of_the_suite():
    sgemm = _sgemm_sources()
    shapes = {s["name"]: s for s in sgemm.suite_shapes(["alexnet_c2_g2"], square=False)}
    # per group: 128 filters of 48 channels x 5x5 taps, 16 x 27x27 output pixels
    fwd = shapes["alexnet_c2_g2 fwd (x2 groups)"]
    assert (fwd["m"], fwd["n"], fwd["k"], fwd["ta"], fwd["tb"]) == (128, 11664, 1200, 0, 0)
    dx = shapes["alexnet_c2_g2 dx (x2 groups)"]
    assert (dx["m"], dx["n"], dx["k"], dx["ta"], dx["tb"]) == (1200, 11664, 128, 1, 0)
    dw = shapes["alexnet_c2_g2 dw (x2 groups)"]
    assert (dw["m"], dw["n"], dw["k"], dw["ta"], dw["tb"]) == (128, 1200, 11664, 0, 1)


def test_bench_times_by_cpu_clock_on_request(capsys):
    args = ["bench", "--in", "2,3,8,8", "--out-channels", "4", "--budget", "0.01"]
    assert main(args + ["--min-reps", "2", "--clock", "cpu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["clock"] == "cpu" and row["ours_fwd_ms"] >= 0
    assert main(args + ["--clock", "cpu"]) == 0
    assert "clock: CPU time" in capsys.readouterr().out
    with pytest.raises(ValueError, match="^clock: expected one of"):
        benchmark.run(benchmark.CPU_SUITE[:1], clock="sundial")
