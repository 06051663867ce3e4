"""The environment for a child process a test starts, without pytest-xdist's worker variables (and
without any variable the test names, such as TRITON_INTERPRET for a child that must decide it itself).

Under `pytest -n`, xdist sets PYTEST_XDIST_WORKER in each worker's environment, and a pytest started
from a test inherits it: pytest-benchmark then believes it runs under xdist and silently disables
itself, so a child run that should save benchmark JSON saves none."""

from __future__ import annotations

import os

XDIST_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


def child_env(without: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """os.environ minus xdist's worker variables and `without`, plus `overrides`."""
    dropped = set(XDIST_VARIABLES) | set(without)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(overrides)
    return env
