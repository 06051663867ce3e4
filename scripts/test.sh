#!/usr/bin/env bash
# The README's test command: the full CPU suite (GPU-only tests skip themselves without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
HAS_CUDA=$(.venv/bin/python -c 'import torch; print(int(torch.cuda.is_available()))')
export TRITON_INTERPRET="${TRITON_INTERPRET:-$((1 - HAS_CUDA))}"
# Two pytest-xdist workers on a CPU machine: much of the suite is single-threaded Python (the Triton
# interpreter, subprocesses starting up), so two workers on 2 cores finish it far sooner than one
# process. Whole files go to a worker (loadfile) so module fixtures run once, in the order
# tests/conftest.py gives them (slow files first). With a GPU, one process: tests timing the card
# should not share it. PYTEST_WORKERS overrides (0: no workers, all in this process).
WORKERS="${PYTEST_WORKERS:-$([ "$HAS_CUDA" = 1 ] && echo 0 || echo 2)}"
# --durations: the slowest tests in every log, to keep the suite within its ~15-minute budget on 2 cores.
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder --durations=10 "$@"
