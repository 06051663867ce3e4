#!/usr/bin/env bash
# The lint gate CI runs before the tests: pyflakes and pycodestyle rules at 120 columns (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/ruff check "$@" .
