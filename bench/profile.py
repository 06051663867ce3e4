"""Where one training step's time goes: the top operators of a single profiled step.

Timing says how long a variant's step takes; this says why. After a cell is timed (so nothing here
disturbs the figures), one more step runs under `torch.profiler` and the operators with the most
self time are kept: on a GPU by time on the device (kernels), on a CPU by time on the host. A row's
share is of the step's total self time, so the list answers "what limits this variant" directly:
GEMMs near the bf16 peak, memory-bound elementwise kernels, attention, the optimizer.

The totals over every operator say whether the device or the host sets the pace: on a GPU, the kernels'
summed time against the timed (unprofiled) step is how busy the GPU is; well under 1 means it waits
between kernels for Python, dispatch and launches, which no kernel can fix and CUDA graphs can.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

NAME_LIMIT = 120  # CUDA kernel names run to hundreds of template characters


@dataclass
class OpTime:
    name: str
    self_s: float  # self time summed over the step's calls, seconds
    calls: int
    share: float  # of the step's total self time on the ranked device


def _self_time_us(event: Any, on_device: bool) -> float:
    """Self time of a kernel (on a GPU) or of a host operator (on a CPU); 0 for the other kind, so
    an operator and the kernels it launched are never counted twice."""
    is_kernel = getattr(event, "device_type", DeviceType.CPU) == DeviceType.CUDA
    if not on_device:
        return 0.0 if is_kernel else float(event.self_cpu_time_total)
    if not is_kernel:
        return 0.0
    # torch >= 2.4 names it device time; older builds, CUDA time.
    return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))


def profile_step(step: Any, device: torch.device, top: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run `step` once under the profiler; return its `top` operators by self time, as dicts, and the
    totals over all of them: {"self_s": summed self time, "calls": kernel launches on a GPU (host
    operator calls on a CPU)}."""
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as prof:
        step()
        step.zero_grad()
        if on_device:
            torch.cuda.synchronize(device)
    events = [(e.key, _self_time_us(e, on_device), e.count) for e in prof.key_averages()]
    events = [e for e in events if e[1] > 0]
    total_us = sum(us for _, us, _ in events)
    if on_device and total_us == 0:  # a step always launches kernels: the profiler could not see them
        raise RuntimeError("the profiler recorded no kernel time (is CUPTI unavailable here?)")
    events.sort(key=lambda e: e[1], reverse=True)
    ops = [asdict(OpTime(name[:NAME_LIMIT], us * 1e-6, count, us / total_us)) for name, us, count in events[:top]]
    return ops, {"self_s": total_us * 1e-6, "calls": sum(count for _, _, count in events)}
