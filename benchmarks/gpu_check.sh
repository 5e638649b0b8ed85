#!/usr/bin/env bash
# GPU check: the kernel tests (parity with NumPy included) and the kernel
# benchmark, logs and JSON written to OUT_DIR. Run from the repository root
# with a Python that has the test extras (pytest, pytest-asyncio, hypothesis)
# and, for the GPU parts, cupy-cuda12x (or cupy-cuda13x) and a CUDA torch:
#
#     PYTHON=.venv/bin/python benchmarks/gpu_check.sh /tmp/gpu-check
#
# Sized for one H200 in about 5 minutes; each step has its own time limit so
# a hang in one still leaves the other's results. Exits non-zero if a step
# failed.
set -uo pipefail

out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
python=${PYTHON:-python}
mkdir -p "$out"
status=0

note() { echo "gpu_check: $*" | tee -a "$out/summary.txt"; }

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$python" -c 'import sys, numpy; print("python", sys.version.split()[0], "numpy", numpy.__version__)'
    "$python" -c 'import cupy; print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())' 2>&1
    "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1
} > "$out/environment.txt"

# pytest-asyncio too: pyproject's pytest settings name its options, and
# warnings are errors there.
if ! "$python" -c 'import pytest, pytest_asyncio, hypothesis' 2>/dev/null; then
    note "pytest, pytest-asyncio or hypothesis is missing: pip install -e '.[test]'"
fi
if ! "$python" -c 'import cupy' 2>/dev/null; then
    note "cupy is not importable: the parity tests will skip and the benchmark runs on the CPU"
    note "install cupy-cuda12x (or cupy-cuda13x) matching the driver to test the kernels"
fi

# --noconftest: the kernel tests need none of the services the shared
# conftest can start, and a GPU machine's minutes are too scarce to risk them.
timeout 180 "$python" -m pytest tests/kernels -q -rs --noconftest -p no:cacheprovider \
    --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1
rc=$?
note "tests/kernels exit $rc ($(tail -n 1 "$out/tests.log"))"
[ "$rc" -eq 0 ] || status=1

timeout 270 "$python" -m benchmarks.kernels --out "$out/kernels.json" \
    > "$out/benchmark.log" 2>&1
rc=$?
note "benchmark exit $rc (table in benchmark.log, results in kernels.json)"
[ "$rc" -eq 0 ] || status=1

exit "$status"
