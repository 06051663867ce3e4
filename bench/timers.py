"""Stage timers and statistics: perf_counter on a CPU, CUDA events on a GPU.

A staged step (marks at the five stage boundaries) and a whole step (nothing inside it) are
interleaved in one loop, alternating which goes first, so clock drift and background load hit both
alike. On a GPU every mark is an event recorded on the current stream and there is exactly one
synchronize, after the loop. Python's garbage collector is off during the timed loop (as
`torch.utils.benchmark.Timer` does) so a collection does not land inside one sample.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bench.result import FLAG_TOLERANCE, STAGES, StageStats, stage_flags

# Six marks delimit the five stages of `TrainStep`.
N_MARKS = len(STAGES) + 1


def summarize(samples: list[float]) -> StageStats:
    """Median, IQR (p75 - p25), p10, p90 and n of samples in seconds; the samples are kept."""
    if not samples:
        raise ValueError("no samples to summarize")
    arr = np.asarray(samples, dtype=float)
    p10, p25, p50, p75, p90 = np.percentile(arr, [10, 25, 50, 75, 90])
    return StageStats(median=float(p50), iqr=float(p75 - p25), p10=float(p10), p90=float(p90), n=len(samples),
                      samples=[float(s) for s in samples])


@dataclass
class TimingSettings:
    warmup: int = 5            # at least this many untimed steps ...
    warmup_time_s: float = 0.025  # ... and at least this long
    repeats: int = 30          # at least this many timed steps of each kind ...
    min_time_s: float = 0.0    # ... and keep going until this much time has passed
    max_repeats: int = 1000    # a ceiling on the min_time rule for very fast steps
    attempts: int = 1          # timing windows to try when a window is disturbed (see time_stable)


class _PerfCounterClock:
    name = "perf_counter"

    def __init__(self) -> None:
        self.staged: list[list[float]] = []
        self.whole: list[list[float]] = []

    def new(self, kind: str) -> Callable[[], None]:
        marks: list[float] = []
        (self.staged if kind == "staged" else self.whole).append(marks)
        return lambda: marks.append(time.perf_counter())

    def finish(self) -> tuple[list[list[float]], list[list[float]]]:
        # Differences in seconds between consecutive marks.
        def diffs(rows):
            return [[b - a for a, b in zip(r, r[1:])] for r in rows]

        return diffs(self.staged), diffs(self.whole)


class _CudaEventClock:
    name = "cuda_events"

    def __init__(self) -> None:
        self.staged: list[list[torch.cuda.Event]] = []
        self.whole: list[list[torch.cuda.Event]] = []

    def new(self, kind: str) -> Callable[[], None]:
        marks: list[torch.cuda.Event] = []
        (self.staged if kind == "staged" else self.whole).append(marks)

        def mark() -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append(event)

        return mark

    def finish(self) -> tuple[list[list[float]], list[list[float]]]:
        torch.cuda.synchronize()  # the one synchronize of the timed loop

        def diffs(rows):  # elapsed_time is in milliseconds
            return [[a.elapsed_time(b) / 1e3 for a, b in zip(r, r[1:])] for r in rows]

        return diffs(self.staged), diffs(self.whole)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# GradScaler starts at 2**16 and halves on every overflowing step; 16 halvings reach 1.
FP16_SETTLE_STEPS = 32


def loss_scale_settled(step, scale_before: float) -> bool:
    """Whether the fp16 step just taken updated the weights: GradScaler skips `optimizer.step()` and
    halves its scale when the gradients overflow, and AdamW creates its state on its first real step."""
    return step.scaler.get_scale() >= scale_before and bool(step.optimizer.state)


def warm_up(step, settings: TimingSettings, device: torch.device) -> int:
    """Untimed steps (compilation, autotuning, lazy optimizer state) by count and by time, and with
    fp16 until GradScaler stops skipping (at most FP16_SETTLE_STEPS more): the first fp16 steps
    overflow at the initial scale and do no optimizer work, so timing them would flatter the step."""
    scaler = getattr(step, "scaler", None)
    n, start, settled, at_least = 0, time.perf_counter(), scaler is None, max(1, settings.warmup)
    while (n < at_least or time.perf_counter() - start < settings.warmup_time_s
           or (not settled and n < at_least + FP16_SETTLE_STEPS)):
        scale_before = scaler.get_scale() if scaler is not None else 0.0  # get_scale syncs: untimed here
        step()
        step.zero_grad()
        n += 1
        settled = scaler is None or loss_scale_settled(step, scale_before)
    _sync(device)
    return n


def time_stages(step, settings: TimingSettings, device: torch.device) -> tuple[str, dict[str, StageStats]]:
    """Run the interleaved staged/whole loop; returns the timer's name and stats per stage and `step`.

    `step(mark)` must call `mark` N_MARKS times; `step()` with no mark is the whole step.
    `step.zero_grad()` runs between iterations, outside every timed region.
    """
    clock = _CudaEventClock() if device.type == "cuda" else _PerfCounterClock()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n, start = 0, time.perf_counter()
        # On a GPU the host runs ahead of the device, so elapsed host time is a (slight) under-estimate
        # of device time; it only decides when to stop, never what is recorded.
        while n < settings.repeats or (time.perf_counter() - start < settings.min_time_s
                                       and n < settings.max_repeats):
            order = ("staged", "whole") if n % 2 == 0 else ("whole", "staged")
            for kind in order:
                mark = clock.new(kind)
                if kind == "staged":
                    step(mark)
                else:
                    mark()
                    step()
                    mark()
                step.zero_grad()
            n += 1
        staged, whole = clock.finish()
    finally:
        if gc_was_enabled:
            gc.enable()
    for row in staged:
        if len(row) != len(STAGES):
            raise RuntimeError(f"the step recorded {len(row) + 1} marks, expected {N_MARKS}")
    stats = {name: summarize([row[i] for row in staged]) for i, name in enumerate(STAGES)}
    stats["step"] = summarize([row[0] for row in whole])
    return clock.name, stats


def _spread(stats: dict[str, StageStats]) -> float:
    step = stats["step"]
    return step.iqr / step.median if step.median > 0 else float("inf")


def time_stable(step, settings: TimingSettings, device: torch.device
                ) -> tuple[str, dict[str, StageStats], list[dict[str, float]]]:
    """`time_stages` in up to `settings.attempts` windows, stopping at the first undisturbed one.

    A window is undisturbed when its stage medians add up to the step median within 10 % and the
    step's IQR/median is within 10 %. On a shared machine another process can make one window
    bimodal (every other sample twice as slow); rather than report that, a fresh window is timed, and
    if none is clean the one with the smallest step spread is kept, still flagged. Every window's
    summary is returned so the row can show what was discarded.
    """
    runs: list[tuple[str, dict[str, StageStats]]] = []
    kept = 0
    for attempt in range(max(1, settings.attempts)):
        runs.append(time_stages(step, settings, device))
        stats = runs[-1][1]
        if _spread(stats) < _spread(runs[kept][1]):
            kept = attempt
        if "stage_sum_mismatch" not in stage_flags(stats) and _spread(stats) <= FLAG_TOLERANCE:
            kept = attempt
            break
    windows = [{"step_median": st["step"].median, "stage_sum": sum(st[s].median for s in STAGES),
                "step_iqr": st["step"].iqr, "n": st["step"].n, "kept": i == kept}
               for i, (_, st) in enumerate(runs)]
    return runs[kept][0], runs[kept][1], windows
