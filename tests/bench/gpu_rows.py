"""GPU-shaped result rows for the GPU check's summary tests: what a paper-size cell on an H100 writes."""

from __future__ import annotations

import statistics

from bench.design import fastest_candidate
from bench.result import Memory, Result, StageStats, cell_key
from models import Variant

FAITHFUL = Variant.faithful().replace(precision="bf16")
MODERN = Variant.modern().replace(precision="bf16")
FAST = fastest_candidate().replace(precision="bf16")


def gpu_row(variant: Variant, samples: list[float], *, peak_gib: float = 20.0, mfu: float | None = 0.3,
            hfu: float | None = None, baseline: bool = False, flags: tuple[str, ...] = (), status: str = "ok",
            message: str | None = None, gpu: str = "NVIDIA H100 80GB HBM3") -> Result:
    """A row as a GPU cell writes it: step samples (s) with their median, an allocator peak (the ops asked
    for 2.5 % less: rounding and unsplit block tails), MFU (and HFU, the same unless given)."""
    stages = {"step": StageStats(statistics.median(samples), 0.0, min(samples), max(samples), len(samples),
                                 list(samples))} if status == "ok" else {}
    return Result(cell_key=cell_key(variant.key, "paper", 4, "cuda"), variant_key=variant.key,
                  variant=variant.as_dict(), size="paper", size_config={}, batch=4,
                  device={"type": "cuda", "name": gpu}, status=status, baseline=baseline,
                  precision=variant.precision, stages=stages,
                  memory=Memory(gpu_allocated_peak_bytes=int(peak_gib * 2**30),
                                gpu_requested_peak_bytes=int(peak_gib * 0.975 * 2**30)),
                  mfu=mfu if status == "ok" else None, tflops_per_s=None if mfu is None else mfu * 989,
                  hfu=mfu if hfu is None else hfu, flags=list(flags), message=message)
