#!/usr/bin/env bash
# foldconv's GPU check (issue 10), in under 5 minutes on a machine with an NVIDIA GPU and CuPy:
#   1. machine:  the GPU, driver, CUDA, CuPy, torch, cuDNN, numba(-cuda) versions
#   2. tests:    python3 -m pytest tests/gpu tests/gpu_kernels (full output: pytest.log)
#   3. conv:     bench/gpu_suite.py, the GPU convolution suite vs cuDNN, strict fp32
#   4. step:     bench/gpu_step.py, AlexNet training steps (paper and torchvision layout) vs torch
#   5. train:    bench/gpu_train.py, `foldconv train --device cuda` (LeNet-5, digits) vs the CPU
#   6. report:   one table of everything: printed last, and gpu_check.md/.json in the output dir
# Each stage has its own time cap and runs whatever happened to those before it; a failing stage's
# traceback goes to stages.log and its rows say FAILED.
#
# Usage: bench/gpu_check.sh [--quick] [--smoke] [--out DIR]
#   --quick   fewer repetitions and epochs, shorter time caps (under 4 minutes): a first try
#   --smoke   on the CPU, tiny sizes, no GPU needed: checks the scripts (CI does this); pytest
#             runs tests/gpu only (skipped without a GPU)
#   --out     where the results go (default: $OUT if set, else a new temporary directory):
#             gpu_check.md, gpu_check.json, pytest.log, stages.log
# Exit status: 0 all ok; 1 something FAILED; 2 no NVIDIA GPU or no CuPy (nothing ran).
# Environment: PYTHON (default python3); GPU_CHECK_PYTEST_WORKERS (pytest-xdist workers, 0 =
# serial; default 4 where xdist is installed).
set -u

mode=full
out_dir="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) mode=quick ;;
        --smoke) mode=smoke ;;
        --out) out_dir="${2:?--out needs a directory}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
py="${PYTHON:-python3}"

if [ "$mode" != smoke ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi is missing or lists no GPU);" \
            "nothing was checked. bench/gpu_check.sh --smoke runs the scripts on the CPU." >&2
        exit 2
    fi
    if ! "$py" -c 'import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)' >/dev/null 2>&1; then
        echo "gpu_check: CuPy cannot use the GPU here (pip install 'foldconv[cuda13]' or" \
            "'foldconv[cuda12]', matching the CUDA version nvidia-smi shows); nothing was checked." >&2
        exit 2
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/foldconv-gpu-check.XXXXXX")"
[ -n "$out_dir" ] || out_dir="$work/out"
mkdir -p "$out_dir" "$work/cupy-cache" "$work/numba-cache" || exit 2
out_dir="$(cd "$out_dir" && pwd)"

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg FOLDCONV_ADAPTIVE_THREADS=0
# Compilation caches in a fresh temporary place (the home directory may not be writable, and
# an old cache must not hide a compile error).
export CUPY_CACHE_DIR="$work/cupy-cache" NUMBA_CACHE_DIR="$work/numba-cache"

# Time caps (s): full stays under 300 s even if every stage hits its cap. The Python stages
# stop starting new work at their --budget, well inside the cap, and write their rows as
# they go, so a stage killed at its cap still reports what it finished.
if [ "$mode" = smoke ]; then
    # The CPU smoke run times nothing: caps only against a hang (a busy CI machine is slow).
    cap_machine=120 cap_tests=300 cap_conv=600 cap_step=600 cap_train=600
    budget_conv=500 budget_step=500 budget_train=500 quick=()
elif [ "$mode" = quick ]; then
    cap_machine=20 cap_tests=90 cap_conv=35 cap_step=40 cap_train=35
    budget_conv=25 budget_step=30 budget_train=28 quick=(--quick)
else
    cap_machine=20 cap_tests=90 cap_conv=50 cap_step=60 cap_train=50
    budget_conv=40 budget_step=48 budget_train=44 quick=()
fi
smoke=()
[ "$mode" = smoke ] && smoke=(--smoke)

# run_stage NAME CAP COMMAND...: stdout to the console and NAME.out, stderr (tracebacks) to
# NAME.err; "exit-status seconds cap" to NAME.rc.
run_stage() {
    local name=$1 cap=$2 t0=$SECONDS rc
    shift 2
    echo "== $name (time cap ${cap} s) =="
    timeout -k 5 "$cap" "$@" 2>"$work/$name.err" | tee "$work/$name.out"
    rc=${PIPESTATUS[0]}
    echo "$rc $((SECONDS - t0)) $cap" >"$work/$name.rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "== $name: killed at its time cap (${cap} s)"
    elif [ "$rc" -ne 0 ]; then
        echo "== $name: exit status $rc (traceback in stages.log)"
    fi
}

run_stage machine "$cap_machine" "$py" bench/gpu_report.py machine --json "$work/machine.json" "${smoke[@]}"

# The GPU tests. On a GPU machine tests/conftest.py leaves Numba's simulator off, so
# tests/gpu_kernels run the kernels on the GPU. xdist workers share the GPU; a worker that
# crashes (a CUDA fault) is replaced instead of ending the run.
echo "== tests (time cap ${cap_tests} s) =="
t0=$SECONDS
pytest_args=(-q -rfE -p no:cacheprovider --durations=15)
if [ "$mode" = smoke ]; then
    targets=(tests/gpu)
else
    targets=(tests/gpu tests/gpu_kernels)
    workers="${GPU_CHECK_PYTEST_WORKERS:-4}"
    if [ "$workers" -gt 0 ] && "$py" -c 'import xdist' 2>/dev/null; then
        pytest_args+=(-n "$workers" --dist loadfile)
    fi
    if "$py" -c 'import pytest_timeout' 2>/dev/null; then
        pytest_args+=(--timeout 60)
    fi
fi
echo "pytest ${targets[*]}" >"$work/tests.cmd"
# SIGINT at the cap: pytest then still prints which tests failed among those that ran.
timeout -s INT -k 10 "$cap_tests" "$py" -m pytest "${pytest_args[@]}" "${targets[@]}" >"$out_dir/pytest.log" 2>&1
rc=$?
echo "$rc $((SECONDS - t0)) $cap_tests" >"$work/tests.rc"
tail -n 8 "$out_dir/pytest.log"

run_stage conv "$cap_conv" "$py" bench/gpu_suite.py --json "$work/conv.json" \
    --budget "$budget_conv" "${quick[@]}" "${smoke[@]}"
run_stage step "$cap_step" "$py" bench/gpu_step.py --json "$work/step.json" \
    --budget "$budget_step" "${quick[@]}" "${smoke[@]}"
run_stage train "$cap_train" "$py" bench/gpu_train.py --json "$work/train.json" \
    --budget "$budget_train" --work "$work/train-runs" "${quick[@]}" "${smoke[@]}"

# Every stage's output and tracebacks, in order, in one file.
for name in machine conv step train; do
    for stream in out err; do
        if [ -s "$work/$name.$stream" ]; then
            echo "===== $name: std$stream ====="
            cat "$work/$name.$stream"
        fi
    done
done >"$out_dir/stages.log"

echo
"$py" bench/gpu_report.py table --dir "$work" --out "$out_dir" --mode "$mode" --seconds "$SECONDS"
status=$?
echo "results: $out_dir (gpu_check.md, gpu_check.json, pytest.log, stages.log)"
# The stages' files are all in those; keep the work directory only if the results are in it.
case "$out_dir" in "$work"/*) ;; *) rm -rf "$work" ;; esac
[ "$status" -eq 0 ] || exit 1
