#!/usr/bin/env bash
# Creates .venv (if missing) and installs ctclip-bench with its test extra.
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -c "import torch, triton, transformers; print(f'ctclip-bench env: torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}')"
