"""Distributed training with real MPI jobs (``mpiexec -n 2/3``): the trajectory of N
processes is the one of a single process with the same global batch, resume across process
counts, Ctrl-C, a failing or dying rank, and the errors of bad use.

The jobs run tests/distributed_job.py; each test skips when mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from foldconv.trainer import read_checkpoint, train
from foldconv.trainer.distributed import DistributedError

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "distributed_job.py"
TIMEOUT = 300  # seconds for one job on a loaded 2-core machine; a hang fails, never blocks

_spec = importlib.util.spec_from_file_location("distributed_job", JOB)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)


def _mpiexec() -> str | None:
    """mpiexec on PATH, or beside this Python (a virtual environment not activated)."""
    beside = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside) if beside.is_file() else None)


def _mpi_available() -> bool:
    return importlib.util.find_spec("mpi4py") is not None and _mpiexec() is not None


needs_mpi = pytest.mark.skipif(not _mpi_available(), reason="mpi4py or mpiexec not installed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    # One BLAS thread per process: N processes share the machine's cores.
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


def mpirun(n: int, runs: list[dict], tmp: Path, timeout: float = TIMEOUT):
    spec = tmp / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"runs": runs}))
    return subprocess.run(
        [_mpiexec(), "-n", str(n), sys.executable, str(JOB), str(spec)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(out: Path) -> list[float]:
    return json.loads((out / "losses.json").read_text())["losses"]


def weights(out: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(out / "last.safetensors")[0]


def assert_same_run(a: Path, b: Path, tol: float) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) >= 20
    np.testing.assert_allclose(la, lb, rtol=0, atol=tol)
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=tol, err_msg=k)


# 320 training images, global batch 24: 14 steps an epoch, the last one of 8 images
# (split 4/4 over 2 processes, 3/3/2 over 3), 28 steps in all.
CASES = {
    "plain64": dict(net="plain", dtype="float64"),
    "syncbn64": dict(net="bn", dtype="float64", sync_batchnorm=True),
    "plain32": dict(net="plain", dtype="float32"),
    "bn64": dict(net="bn", dtype="float64"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process runs, batch 24 (in this process)."""
    base = tmp_path_factory.mktemp("reference")
    for name, case in CASES.items():
        job.run(dict(case, out=str(base / name)), distributed=False)
    return base


@pytest.fixture(scope="module", params=[2, 3], ids=["2 processes", "3 processes"])
def distributed(request, tmp_path_factory):
    if not _mpi_available():
        pytest.skip("mpi4py or mpiexec not installed")
    n = request.param
    base = tmp_path_factory.mktemp(f"mpi{n}")
    names = list(CASES) if n == 2 else ["plain64", "syncbn64"]
    result = mpirun(n, [dict(CASES[k], out=str(base / k)) for k in names], base)
    assert result.returncode == 0, result.stdout + result.stderr
    return n, base


@needs_mpi
def test_n_processes_follow_the_single_process_trajectory(distributed, reference):
    n, base = distributed
    # float64, no BatchNorm: the same losses and weights after 28 steps.
    assert_same_run(reference / "plain64", base / "plain64", 1e-10)
    # Synchronised BatchNorm: global batch statistics, exact gradients, same trajectory.
    assert_same_run(reference / "syncbn64", base / "syncbn64", 1e-10)
    if n == 2:
        # float32: within float32 rounding (accumulated over 28 steps).
        assert_same_run(reference / "plain32", base / "plain32", 2e-5)
        # Per-rank BatchNorm statistics (the default) is a different computation.
        assert not np.allclose(losses(reference / "bn64"), losses(base / "bn64"), atol=1e-6)
    summary = json.loads((base / "plain64" / "summary.json").read_text())
    assert summary["processes"] == n and summary["status"] == "completed"
    assert summary["steps"] == 28
    # Only rank 0 writes: one state file per checkpoint, no stray temporary files.
    assert sorted(p.name for p in (base / "plain64").glob("*.tmp")) == []


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_gradients_against_torch_and_finite_differences(tmp_path, n):
    """SyncBatchNorm's hand-written backward, with 7 images over n ranks (uneven shards):
    torch float64 autograd of BatchNorm over the whole batch, and central differences of
    the distributed loss."""
    torch = pytest.importorskip("torch")
    out = tmp_path / "syncbn.npz"
    r = subprocess.run(
        [_mpiexec(), "-n", str(n), sys.executable, str(JOB), "syncbn", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    d = np.load(out)
    x = torch.tensor(d["x"], requires_grad=True)
    bn = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight[...] = torch.tensor([0.5, 1.5, -1.0], dtype=torch.float64)
        bn.bias[...] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    y = bn(x)
    y.backward(torch.tensor(d["g"]))
    np.testing.assert_allclose(d["y"], y.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d["dx"], x.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(d["dw"], bn.weight.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(d["db"], bn.bias.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(d["running_mean"], bn.running_mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d["running_var"], bn.running_var.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(d["dx"], d["fd_x"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(d["dw"], d["fd_w"], rtol=0, atol=1e-7)


@needs_mpi
def test_resume_with_another_number_of_processes(tmp_path, reference):
    case = dict(CASES["plain64"])
    first = tmp_path / "run"
    # One epoch with 2 processes, then the second with 3 processes.
    r = mpirun(2, [dict(case, out=str(first), epochs=1)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one_process = tmp_path / "one"
    shutil.copytree(first, one_process)
    r = mpirun(3, [dict(case, out=str(first), resume=str(first), epochs=2)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ref = losses(reference / "plain64")
    np.testing.assert_allclose(losses(first), ref[14:], rtol=0, atol=1e-10)
    for k, v in weights(reference / "plain64").items():
        np.testing.assert_allclose(weights(first)[k], v, rtol=0, atol=1e-10, err_msg=k)
    # ... and 2 -> 1: the same checkpoint resumed by a single process.
    job.run(dict(case, out=str(one_process), resume=str(one_process), epochs=2), False)
    np.testing.assert_allclose(losses(one_process), ref[14:], rtol=0, atol=1e-10)


@needs_mpi
def test_ctrl_c_stops_every_rank_and_rank_0_saves_once(tmp_path):
    out = tmp_path / "run"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"runs": [dict(CASES["plain64"], out=str(out), epochs=500)]}))
    proc = subprocess.Popen(
        [_mpiexec(), "-n", "2", sys.executable, str(JOB), str(spec)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Wait for the first epoch's checkpoint: training is under way.
        deadline = time.monotonic() + TIMEOUT
        while not (out / "last.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # mpiexec forwards it to every rank
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads((out / "losses.json").read_text())
    assert result["status"] == "interrupted", output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    _, info = read_checkpoint(out / "last.safetensors")
    # The checkpoint is at the step every rank stopped at: what rank 0 saw of the run.
    assert info["step"] == len(result["losses"]) == summary["steps"]
    assert len(list(out.glob("last.state-*.safetensors"))) == 1


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failing_rank_stops_the_job_with_its_name(tmp_path, how):
    fail = {"rank": 1, "call": 3, "how": how}
    t = time.monotonic()
    r = mpirun(2, [dict(CASES["plain64"], out=str(tmp_path / "run"), fail=fail)], tmp_path, 120)
    assert time.monotonic() - t < 120
    assert r.returncode != 0
    text = r.stdout + r.stderr
    if how == "raise":
        assert "foldconv: rank 1 of 2 failed: RuntimeError: test failure at forward call 3" in text
    else:
        assert "foldconv: rank 1 of 2 (pid" in text and "ended abruptly" in text
    assert not (tmp_path / "run" / "losses.json").exists()


@needs_mpi
def test_cli_batch_size_must_divide(tmp_path):
    r = subprocess.run(
        [_mpiexec(), "-n", "2", sys.executable, "-m", "foldconv", "train", "--distributed"]
        + ["--batch-size", "25", "--epochs", "1", "--out", str(tmp_path / "run")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 2
    # Every rank meets the error; rank 0 reports it, once.
    assert r.stderr.count("batch_size: expected a multiple of the 2 processes") == 1, r.stderr


@needs_mpi
def test_ranks_started_with_different_settings_stop_with_a_clear_error(tmp_path):
    # Different --epochs used to leave rank 0 waiting for rank 1 forever.
    def rank(epochs: int, lr: str) -> list[str]:
        return [sys.executable, "-m", "foldconv", "train", "--distributed", "--epochs"] + [
            str(epochs),
            "--lr",
            lr,
            "--out",
            str(tmp_path / "run"),
        ]

    r = subprocess.run(
        [_mpiexec(), "-n", "1"] + rank(1, "0.05") + [":", "-n", "1"] + rank(2, "0.1"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 2, r.stderr
    assert (
        "different settings (epochs: rank 0 1, rank 1 2; lr: rank 0 0.05, rank 1 0.1)" in r.stderr
    )


@needs_mpi
def test_mpiexec_without_distributed_warns(tmp_path):
    r = subprocess.run(
        [_mpiexec(), "-n", "2", sys.executable, "-m", "foldconv", "train"]
        + ["--dataset", "mnist", "--data-dir", str(tmp_path / "absent")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    # The missing data stops both after the warning: nothing is trained twice.
    assert r.stderr.count("started by an MPI launcher with 2 processes but without") == 2


def test_distributed_outside_mpiexec_is_a_clear_error(tmp_path, monkeypatch):
    from foldconv.trainer import distributed as D

    for var in D._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedError, match="not started by an MPI launcher.*mpiexec -n N"):
        train(epochs=1, out=tmp_path, progress=False, verbose=False, distributed=True)


def test_missing_mpi4py_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(DistributedError, match=r'pip install "foldconv\[mpi\]"'):
        train(epochs=1, out=tmp_path, progress=False, verbose=False, distributed=True)


def test_sync_batchnorm_needs_distributed(tmp_path):
    with pytest.raises(ValueError, match="sync_batchnorm: only applies with distributed=True"):
        train(epochs=1, out=tmp_path, progress=False, verbose=False, sync_batchnorm=True)
    with pytest.raises(TypeError, match="distributed: expected a bool"):
        train(epochs=1, out=tmp_path, progress=False, verbose=False, distributed="yes")


def test_dropout_streams_differ_per_rank_and_follow_from_rank_0():
    from foldconv.trainer.distributed import decorrelate_generators

    def draws(rank: int) -> np.ndarray:
        gens = [np.random.default_rng(7), np.random.default_rng(8)]
        decorrelate_generators(gens, rank)
        return np.stack([g.random(64) for g in gens])

    rank0, rank1, rank2 = draws(0), draws(1), draws(2)
    np.testing.assert_array_equal(
        rank0, np.stack([np.random.default_rng(s).random(64) for s in (7, 8)])
    )
    np.testing.assert_array_equal(rank1, draws(1))  # the same seed gives the same stream
    assert not np.isclose(rank0, rank1).any() and not np.isclose(rank1, rank2).any()
    expected = np.random.default_rng(7)
    expected.bit_generator.state = expected.bit_generator.jumped(2).state
    np.testing.assert_array_equal(rank2[0], expected.random(64))


def test_dropout_stream_without_jump_is_a_clear_error():
    from foldconv.trainer.distributed import decorrelate_generators

    with pytest.raises(TypeError, match="SFC64"):
        decorrelate_generators([np.random.Generator(np.random.SFC64(0))], 1)
