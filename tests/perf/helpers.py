"""Shared by the perf suites (the layout of lightning-thunder's benchmarks/targets.py): helpers first, so
each test body is a few lines: build, make inputs, measure, check.

GPU timing: pytest-benchmark times `timer(); fn(); timer()`, so without a synchronising timer a GPU
test would time kernel launches, not kernels. `measure_cuda` installs one on the fixture itself, so
the figures are right whatever `--benchmark-timer` says (passing
`--benchmark-timer=torch.utils.benchmark.utils.timer.timer` gives the same sync-then-read behaviour).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from bench.memory import GpuMemoryProbe
from bench.perf_gate import PEAK_KEY
from bench.result import Memory

# Modest counts: the GPU suite has to fit in a couple of minutes on one H100, beside bench.gpu_check.
GPU_WARMUP_ROUNDS = 3
GPU_ROUNDS = 10
CPU_WARMUP_ROUNDS = 1
CPU_ROUNDS = 3


def sync_timer() -> float:
    """torch.cuda.synchronize() then perf_counter: each timer read waits for queued kernels."""
    torch.cuda.synchronize()
    return time.perf_counter()


def measure_cuda(benchmark: Any, fn: Callable[[], Any], setup: Callable[[], Any] | None = None,
                 rounds: int = GPU_ROUNDS, warmup_rounds: int = GPU_WARMUP_ROUNDS) -> Any:
    """Time `fn` with explicit round counts and a synchronising timer; record the allocator peak.

    The peak is reset once before the warm-up rounds and read once after the last round (never inside
    `fn`, which would add a synchronize to what is timed), so it is the largest any round reached:
    parameters, gradients, optimizer state and the step's own activations.
    """
    memory = Memory()
    probe = GpuMemoryProbe(torch.device("cuda"))
    probe.start()  # gc, empty_cache, synchronize, reset the peak, record the baseline: as bench cells do
    # pytest-benchmark's runner binds the fixture's timer when each round starts, so this covers them all.
    benchmark._timer = sync_timer
    result = benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds)
    probe.finish(memory)
    benchmark.extra_info.update({
        PEAK_KEY: memory.gpu_allocated_peak_bytes,
        "max_memory_reserved_bytes": memory.gpu_reserved_peak_bytes,
        "baseline_allocated_bytes": memory.gpu_allocated_baseline_bytes,
        "gpu_name": torch.cuda.get_device_name(),
        "timer": "torch.cuda.synchronize + perf_counter",
    })
    return result


def clear_grads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None
