"""Saved-for-backward and optimizer-state accounting against hand-computed byte counts."""

import torch
from torch import nn

from bench.memory import GpuMemoryProbe, SavedBytes, grad_bytes, optimizer_state_bytes, param_bytes
from bench.result import Memory


def test_saved_bytes_counts_storage_once_and_skips_parameters():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(16, 8, requires_grad=True)
    with SavedBytes(lin.parameters()) as saved:
        y = lin(x)          # saves x (16*8*4 bytes) and the weight (excluded)
        z = x.sin()         # saves x again: same storage, counted once
        w = y.exp()         # saves its output (16*4*4 bytes)
    assert saved.bytes == 16 * 8 * 4 + 16 * 4 * 4
    (w.sum() + z.sum()).backward()


def test_saved_bytes_skips_the_resident_batch():
    # A kernel that keeps its input batch for backward (kernels/patch_norm.py keeps the volume) adds no
    # activation memory: the batch is allocated anyway. TrainStep.resident names the batch.
    import models
    from bench.step import TrainStep

    weight = nn.Parameter(torch.randn(8))
    batch = torch.randn(16, 8)
    counted = []
    for resident in ([weight], [weight, batch]):
        with SavedBytes(resident) as saved:
            (batch * weight).sum()  # mul saves both operands
        counted.append(saved.bytes)
    assert counted == [16 * 8 * 4, 0]

    model = models.build(models.Variant.faithful(), "tiny")
    step = TrainStep(model, models.example_batch("tiny"))
    resident = step.resident()
    assert all(any(t is r for r in resident) for t in (step.volumes, step.input_ids, step.attention_mask))
    assert sum(t.numel() for t in resident) == sum(p.numel() for p in model.parameters()) + sum(
        t.numel() for t in (step.volumes, step.input_ids, step.attention_mask))


def test_saved_bytes_counts_a_new_storage_at_a_freed_ones_address(monkeypatch):
    # Storage ids are addresses: once a saved tensor is freed (its graph dropped), the allocator may put
    # the next one at the same address. Every storage is given one id here, as if it always did.
    monkeypatch.setattr(torch.UntypedStorage, "_cdata", property(lambda self: 1))
    x = torch.randn(16, 8, requires_grad=True)
    with SavedBytes() as saved:
        dropped = (x * 2).exp()  # saves its output (16*8*4 bytes)
        del dropped              # and frees it with the graph
        kept = (x * 3).exp()     # saves another output, at the "same address"
        again = kept.sin()       # saves `kept` again: the same live storage, counted once
    assert saved.bytes == 2 * 16 * 8 * 4
    again.sum().backward()


def test_param_grad_and_adamw_state_bytes():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 3))
    n = 10 * 20 + 20 + 20 * 3 + 3
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    assert param_bytes(model) == n * 4 and grad_bytes(model) == n * 4
    # exp_avg and exp_avg_sq per parameter, plus a 4-byte float32 step counter per parameter tensor.
    assert optimizer_state_bytes(opt) == 2 * n * 4 + 4 * 4


def test_gpu_probe_records_nothing_on_cpu():
    probe = GpuMemoryProbe(torch.device("cpu"))
    probe.start()
    memory = Memory()
    probe.finish(memory)
    assert memory.gpu_allocated_peak_bytes is None and memory.nvml_used_after_bytes is None


def test_nvml_process_query_failures_read_as_unknown(monkeypatch):
    import sys
    import types

    from bench.memory import nvml_process_bytes

    class NVMLError(Exception):
        pass

    class NVMLLibraryMismatchError(Exception):  # nvidia-ml-py: not an NVMLError
        pass

    for error in (NVMLError, NVMLLibraryMismatchError):
        def query(handle, error=error):
            raise error("driver lacks the versioned query")

        fake = types.SimpleNamespace(NVMLError=NVMLError, NVMLLibraryMismatchError=NVMLLibraryMismatchError,
                                     nvmlDeviceGetComputeRunningProcesses=query)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        assert nvml_process_bytes(object(), pid=1) is None
    process = types.SimpleNamespace(pid=7, usedGpuMemory=123)
    fake.nvmlDeviceGetComputeRunningProcesses = lambda handle: [process]
    assert nvml_process_bytes(object(), pid=7) == 123
