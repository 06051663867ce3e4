#!/usr/bin/env bash
# The README's test command: the full CPU suite (GPU-only tests skip themselves without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET="${TRITON_INTERPRET:-$(.venv/bin/python -c 'import torch; print(0 if torch.cuda.is_available() else 1)')}"
# --durations: the slowest tests in every log, to keep the suite within its ~15-minute budget on 2 cores.
exec .venv/bin/python -m pytest -q --durations=10 "$@"
