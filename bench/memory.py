"""Memory accounting: device-independent (saved-for-backward, parameter/gradient/optimizer bytes),
CPU process (RSS) and GPU (caching allocator, NVML). Each figure is labelled with whose it is.

On a CPU build `torch.cuda.max_memory_allocated()` silently returns 0, so every GPU reading here is
guarded by `torch.cuda.is_available()` and a device check: a figure not measured stays None.
"""

from __future__ import annotations

import os
import resource
import weakref
from typing import Any, Iterable

import torch

from bench.result import Memory


def storage_id(t: torch.Tensor) -> int:
    # _cdata identifies the storage for real, fake and meta tensors alike (data_ptr is 0 for fakes).
    return t.untyped_storage()._cdata


class SavedBytes:
    """Bytes of tensors autograd saves for backward while active, deduplicated by storage.

    Resident tensors are excluded: the parameters (counted under `param_bytes`) and the batch, which
    stay allocated whether or not a backward is pending (a kernel that keeps the input volume for its
    backward adds no activation memory; TrainStep.resident).
    Works on real tensors and under FakeTensorMode (cpu-facts §4).

    A storage's id is its address, which a later storage can reuse once the first is freed (a saved
    tensor whose graph was dropped): a weak reference to the storage tells the two apart, so the count
    does not depend on where the allocator happens to put things.
    """

    def __init__(self, resident: Iterable[torch.Tensor] = ()) -> None:
        self._resident_storages = {storage_id(t) for t in resident}
        self._seen: dict[int, weakref.ref] = {}
        self.bytes = 0
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        sid = storage._cdata
        if sid not in self._resident_storages:
            known = self._seen.get(sid)
            if known is None or known() is not storage:
                self._seen[sid] = weakref.ref(storage)
                self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> "SavedBytes":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[storage_id(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def param_bytes(model: torch.nn.Module) -> int:
    return _unique_bytes(model.parameters())


def grad_bytes(model: torch.nn.Module) -> int:
    return _unique_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return _unique_bytes(v for state in optimizer.state.values() for v in state.values())


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


# --- NVML (nvidia-ml-py, imported lazily: its absence or a missing driver is not an error) --------------

def nvml_handle(device_index: int = 0):
    """An NVML device handle, or None where NVML (the package or the driver library) is unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:  # ImportError, pynvml.NVMLError_LibraryNotFound, no such device
        return None


def nvml_used_bytes(handle) -> int | None:
    if handle is None:
        return None
    import pynvml

    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except pynvml.NVMLError:
        return None


def nvml_process_bytes(handle, pid: int | None = None) -> int | None:
    """NVML's used-memory figure for this process (context + allocator reservation), if reported."""
    if handle is None:
        return None
    import pynvml

    pid = pid or os.getpid()
    # nvidia-ml-py raises NVMLLibraryMismatchError, not an NVMLError, when the driver lacks the
    # versioned process query; the figure is optional, so neither may fail the cell.
    errors = (pynvml.NVMLError, getattr(pynvml, "NVMLLibraryMismatchError", pynvml.NVMLError))
    try:
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except errors:
        return None
    return None


class GpuMemoryProbe:
    """Allocator peak and NVML readings around the timed steps; does nothing off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cuda" and torch.cuda.is_available()
        self.device = device
        self.handle = nvml_handle(device.index or 0) if self.active else None
        self.baseline = None
        self.nvml_before = None
        self.context_bytes = None

    def measure_context(self) -> None:
        """Call before anything else touches CUDA: NVML device-used before and after creating this
        process's context, less what the allocator reserved for the probe tensor. Works in containers,
        where NVML's per-process list shows host PIDs that do not match ours."""
        if not self.active:
            return
        before = nvml_used_bytes(self.handle)
        torch.zeros(1, device=self.device)
        torch.cuda.synchronize(self.device)
        after = nvml_used_bytes(self.handle)
        if before is not None and after is not None:
            self.context_bytes = max(0, after - before - torch.cuda.memory_reserved(self.device))

    def start(self) -> None:
        if not self.active:
            return
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        self.nvml_before = nvml_used_bytes(self.handle)

    def finish(self, memory: Memory) -> None:
        if not self.active or self.baseline is None:
            return
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        memory.gpu_allocated_baseline_bytes = self.baseline
        memory.gpu_allocated_peak_bytes = peak
        memory.gpu_peak_minus_baseline_bytes = peak - self.baseline
        memory.gpu_requested_peak_bytes = torch.cuda.memory_stats(self.device).get("requested_bytes.all.peak")
        memory.gpu_reserved_peak_bytes = torch.cuda.max_memory_reserved(self.device)
        memory.nvml_used_before_bytes = self.nvml_before
        memory.nvml_used_after_bytes = nvml_used_bytes(self.handle)
        memory.cuda_context_bytes = self.context_bytes
        process = nvml_process_bytes(self.handle)
        if memory.cuda_context_bytes is None and process is not None:
            memory.cuda_context_bytes = max(0, process - torch.cuda.memory_reserved(self.device))
