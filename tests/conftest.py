"""Shared test setup.

TRITON_INTERPRET must be set before any `@triton.jit` kernel is defined, so it is set here, at
collection time, whenever no GPU is present: Triton kernels then run in the interpreter on CPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (scripts/test.sh) each worker takes its share of the cores: with torch's default
# of a thread per core in every worker, the OpenMP threads outnumber the cores and spin waiting for
# each other.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _XDIST_WORKERS))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _torch_process_settings() -> tuple[int, bool, bool]:
    """torch's process-wide settings as this process found them, before any test ran."""
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


@pytest.fixture(autouse=True)
def _seed_and_restore_torch(_torch_process_settings):
    """Seed every test, and put torch's process-wide settings back after it. One process (or each
    xdist worker) runs many tests: a test that calls a process-wide setter (seed_everything turns
    deterministic algorithms on) would otherwise change the kernels and speed of every test after it,
    and results would depend on the order tests run in. Restored to the process's start, not the
    test's, because a module-scoped fixture sets up before this one."""
    torch.manual_seed(0)
    yield
    threads, deterministic, warn_only = _torch_process_settings
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def pytest_collection_modifyitems(config, items):
    # scripts/test.sh hands whole files to two pytest-xdist workers in this order: files with a slow
    # test start first, so the longest (the phantom training, the gpu_check dry run) never start last
    # and leave one worker idle at the end. The sort is stable: tests keep their order within a file.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
