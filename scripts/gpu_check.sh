#!/usr/bin/env bash
# The one command a session with a lent GPU runs (device tool: command "bash scripts/gpu_check.sh",
# timeout_s 600). From the repository root, without `pip install -e .`, it runs
#   1. python3 -m bench.gpu_check --out $OUT/gpu_check     within GPU_CHECK_BUDGET s (default 420)
#   2. python3 -m pytest -m gpu tests/perf                 within PERF_BUDGET s (default 75), benchmarks
#      enabled and their JSON saved (the perf gate's first baseline for this GPU model)
#   3. python3 -m pytest -m gpu tests -q -x (the rest)     within PYTEST_BUDGET s (default 70)
# and tees every log under $OUT (./results/gpu_check_out when $OUT is unset). Afterwards copy
# $OUT/gpu_check/ to reports/gpu/<gpu-name>/ and commit it (see docs/perf-gate.md).
#
# Locally on a CPU: DRY_RUN=1 PYTHON=.venv/bin/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$PWD/results/gpu_check_out}"
GPU_CHECK_BUDGET="${GPU_CHECK_BUDGET:-420}"
PERF_BUDGET="${PERF_BUDGET:-75}"
PYTEST_BUDGET="${PYTEST_BUDGET:-70}"
DRY=()
if [ "${DRY_RUN:-0}" = 1 ]; then DRY=(--dry-run); fi
mkdir -p "$OUT_DIR"
started=$(date +%s)

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || echo "no git"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || true
  "$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "gpu", torch.cuda.is_available())'
} 2>&1 | tee "$OUT_DIR/env.txt"

# The outer timeout is only a safety net: gpu_check keeps to its own budget part by part.
timeout -k 10 $((GPU_CHECK_BUDGET + 45)) "$PY" -m bench.gpu_check "${DRY[@]}" --budget "$GPU_CHECK_BUDGET" \
  --out "$OUT_DIR/gpu_check" 2>&1 | tee "$OUT_DIR/gpu_check.log"
check_rc=${PIPESTATUS[0]}

# The perf suite first and on its own, so its benchmark JSON is written even if a later test hangs.
timeout -k 10 "$PERF_BUDGET" "$PY" -m pytest tests/perf -m gpu -q -x -p no:cacheprovider --benchmark-enable \
  --benchmark-json "$OUT_DIR/pytest-gpu-benchmark.json" --benchmark-columns=median,iqr,rounds 2>&1 \
  | tee "$OUT_DIR/pytest-perf-gpu.log"
perf_rc=${PIPESTATUS[0]}

timeout -k 10 "$PYTEST_BUDGET" "$PY" -m pytest -m gpu tests -q -x -p no:cacheprovider --ignore=tests/perf 2>&1 \
  | tee "$OUT_DIR/pytest-gpu.log"
pytest_rc=${PIPESTATUS[0]}

echo "gpu_check.sh: exit codes: bench.gpu_check $check_rc, GPU perf suite $perf_rc, other GPU tests $pytest_rc" \
  "(124 = timed out); $(( $(date +%s) - started )) s in all; files under $OUT_DIR" | tee -a "$OUT_DIR/gpu_check.log"
[ "$check_rc" = 0 ] && [ "$perf_rc" = 0 ] && [ "$pytest_rc" = 0 ]
