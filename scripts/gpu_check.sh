#!/usr/bin/env bash
# The one command a session with a lent GPU runs (device tool: command
#   CTCLIP_GIT_SHA=<sha of the commit sent> bash scripts/gpu_check.sh
# with timeout_s 600). From the repository root, without `pip install -e .`, it runs
#   1. python3 -m bench.gpu_check                          within GPU_CHECK_BUDGET s (default 400)
#   2. python3 -m pytest -m gpu tests/perf                 within PERF_BUDGET s (default 65), benchmarks
#      enabled and their JSON saved (the perf gate's first baseline for this GPU model), then tabulated
#      at the end of summary.md (bench.pytest_table)
#   3. python3 -m pytest -m gpu tests -x (the rest)        within PYTEST_BUDGET s (default 50), in 4
#      pytest-xdist workers where xdist is installed
# and never runs past TOTAL_BUDGET s (default 540), packing included.
#
# The device tool returns at most 8 files from $OUT, none deeper than $OUT/a/b/file, while the run
# writes dozens (results, per-cell logs, report folders). So everything is written under WORK_DIR and,
# after every stage, packed into $OUT/gpu_check.tar.gz beside copies of the summary and the logs: a run
# cut off at its limit still returns what the finished stages measured. To commit a run:
#   mkdir -p reports/gpu/<gpu-name> && tar -xzf gpu_check.tar.gz -C reports/gpu/<gpu-name>
# (see docs/perf-gate.md).
#
# Locally on a CPU: DRY_RUN=1 PYTHON=.venv/bin/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$PWD/results/gpu_check_out}"
WORK_DIR="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
TOTAL_BUDGET="${TOTAL_BUDGET:-540}"
GPU_CHECK_BUDGET="${GPU_CHECK_BUDGET:-400}"
PERF_BUDGET="${PERF_BUDGET:-65}"
PYTEST_BUDGET="${PYTEST_BUDGET:-50}"
PACK_RESERVE=15  # seconds kept back at the end of every stage for packing
DRY=()
if [ "${DRY_RUN:-0}" = 1 ]; then DRY=(--dry-run); fi
mkdir -p "$OUT_DIR" "$WORK_DIR"
started=$(date +%s)

# Seconds a stage may take: its own budget, or what is left of the total, whichever is less.
stage_limit() {
  local left=$(( started + TOTAL_BUDGET - PACK_RESERVE - $(date +%s) ))
  echo $(( $1 < left ? $1 : (left > 1 ? left : 1) ))
}

pack() {
  tar -czf "$OUT_DIR/gpu_check.tar.gz.part" -C "$WORK_DIR" . && mv "$OUT_DIR/gpu_check.tar.gz.part" "$OUT_DIR/gpu_check.tar.gz"
  for f in env.txt gpu_check.log pytest-perf-gpu.log pytest-gpu.log pytest-gpu-benchmark.json; do
    if [ -f "$WORK_DIR/$f" ]; then cp "$WORK_DIR/$f" "$OUT_DIR/$f"; fi
  done
  if [ -f "$WORK_DIR/gpu_check/summary.md" ]; then cp "$WORK_DIR/gpu_check/summary.md" "$OUT_DIR/summary.md"; fi
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  echo "commit ${CTCLIP_GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || true
  "$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "gpu", torch.cuda.is_available())'
} 2>&1 | tee "$WORK_DIR/env.txt"

# bench.gpu_check keeps to its own budget part by part; the outer timeout is only a safety net.
check_s=$(stage_limit $(( GPU_CHECK_BUDGET + 15 )))
timeout -k 5 "$check_s" "$PY" -m bench.gpu_check "${DRY[@]}" --budget $(( check_s - 15 > 1 ? check_s - 15 : 1 )) \
  --out "$WORK_DIR/gpu_check" 2>&1 | tee "$WORK_DIR/gpu_check.log"
check_rc=${PIPESTATUS[0]}
pack

# The perf suite first and on its own, so its benchmark JSON is written even if a later test hangs. At
# its limit pytest gets SIGINT, not SIGTERM: it then stops as on Ctrl-C and still runs its session-finish
# hooks, where pytest-benchmark writes the JSON of the benchmarks that finished.
timeout -s INT -k 10 "$(stage_limit "$PERF_BUDGET")" "$PY" -m pytest tests/perf -m gpu -q -x -p no:cacheprovider \
  --benchmark-enable --benchmark-json "$WORK_DIR/pytest-gpu-benchmark.json" --benchmark-columns=median,iqr,rounds \
  2>&1 | tee "$WORK_DIR/pytest-perf-gpu.log"
perf_rc=${PIPESTATUS[0]}
# The suite's kernel comparisons (each Triton kernel against the PyTorch path it replaces) into the report.
if [ -f "$WORK_DIR/pytest-gpu-benchmark.json" ]; then
  mkdir -p "$WORK_DIR/gpu_check"
  { echo; "$PY" -m bench.pytest_table "$WORK_DIR/pytest-gpu-benchmark.json"; } >> "$WORK_DIR/gpu_check/summary.md"
fi
pack

# Test folders whose packages the GPU image lacks (nibabel, webdataset) skip themselves (their conftest).
# These tests time nothing, and most of their time is compiling ~80 Triton kernels from a cold cache,
# CPU work: four pytest-xdist workers (whole files each) share it where xdist is installed. Not in a dry
# run, where every test skips and starting the workers would take longer than the tests (33 s vs 14 s).
XDIST=()
if [ "${DRY_RUN:-0}" != 1 ] && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 4 --dist loadfile); fi
timeout -s INT -k 10 "$(stage_limit "$PYTEST_BUDGET")" "$PY" -m pytest -m gpu tests -q -x -rs -p no:cacheprovider \
  "${XDIST[@]}" --ignore=tests/perf 2>&1 | tee "$WORK_DIR/pytest-gpu.log"
pytest_rc=${PIPESTATUS[0]}

echo "gpu_check.sh: exit codes: bench.gpu_check $check_rc, GPU perf suite $perf_rc, other GPU tests $pytest_rc" \
  "(124 = timed out); $(( $(date +%s) - started )) s in all; files under $WORK_DIR, packed into" \
  "$OUT_DIR/gpu_check.tar.gz" | tee -a "$WORK_DIR/gpu_check.log"
pack
[ "$check_rc" = 0 ] && [ "$perf_rc" = 0 ] && [ "$pytest_rc" = 0 ]
