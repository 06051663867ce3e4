"""pytest-benchmark hooks for the perf suites: which GPU (and software) a saved run was measured on.

pytest-benchmark names its storage folder by OS and Python only (`.benchmarks/Linux-CPython-3.12-64bit`),
so two GPU models would share it. The GPU name recorded here lets `bench.perf_gate` pick the previous
run of the same model, and makes `--benchmark-compare` refuse a run from another GPU outright.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gpu_name"] = gpu_name()
    machine_info["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["triton"] = _version("triton")
    machine_info["transformers"] = _version("transformers")


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    # Timings from another GPU model say nothing about a regression: stop rather than warn.
    theirs = compared_benchmark.get("machine_info", {}).get("gpu_name")
    ours = machine_info.get("gpu_name")
    if theirs != ours:
        raise pytest.UsageError(
            f"--benchmark-compare: the saved run was measured on {theirs or 'no GPU'}, this one on "
            f"{ours or 'no GPU'}; keep one --benchmark-storage per GPU model (see docs/perf-gate.md)")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """A run stopped inside a benchmark (scripts/gpu_check.sh stops a stage at its limit with SIGINT)
    leaves that benchmark with no timings, and pytest-benchmark's own session-finish hook, which writes
    the JSON, then fails on it and writes nothing: drop it first, so the finished ones are saved."""
    benchmarks = getattr(getattr(session.config, "_benchmarksession", None), "benchmarks", None)
    if benchmarks is not None:
        benchmarks[:] = [b for b in benchmarks if b]  # a benchmark is falsy until it has timings
    yield


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """One torch thread on a CPU, as bench.run's CPU cells use: on shared cores two threads spin-wait on
    each other and samples scatter by orders of magnitude. Restored after each test."""
    if torch.cuda.is_available():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
