"""One real tiny cell in-process, and the FakeTensorMode estimate against the real accounting step."""

import pytest
import torch

from bench.cell import CellSpec, _accounting_step, measure
from bench.allocations import AllocationTracker
from bench.estimate import estimate_variant, resident_tensors
from bench.result import STAGES
from bench.step import TrainStep
from bench.timers import TimingSettings, warm_up
from models import SIZES, Variant, build, example_batch


def test_tiny_cell_measures_positive_stages_memory_and_flops():
    spec = CellSpec(variant=Variant.modern().as_dict(), size="tiny", batch=2, device="cpu", threads=1,
                    timing={"warmup": 2, "repeats": 6, "attempts": 1}, host_device={"type": "cpu"})
    torch.set_num_threads(2)
    result = measure(spec)
    assert torch.get_num_threads() == 2, "measure() left its cell's thread count on the caller's process"
    assert result.status == "ok", result.message
    assert result.timer == "perf_counter" and len(result.timing_windows) == 1
    for stage in STAGES + ("step",):
        assert result.stages[stage].median > 0 and result.stages[stage].n == 6
    m = result.memory
    assert m.saved_activations_bytes > 0 and m.param_bytes > 0
    assert m.grad_bytes == m.param_bytes and m.optimizer_state_bytes >= 2 * m.param_bytes
    assert m.cpu_peak_rss_bytes > m.cpu_rss_baseline_bytes > 0
    # GPU-only figures stay unmeasured on a CPU rather than reading torch.cuda's silent zeros.
    assert m.gpu_allocated_peak_bytes is None and m.nvml_used_before_bytes is None
    assert result.flops["total"] == result.flops["forward"] + result.flops["backward"] > 0
    assert result.flops["recomputed"] == 0  # nothing is checkpointed: model FLOPs are all of them
    assert result.peak is None and result.mfu is None and result.hfu is None
    assert result.tflops_per_s == pytest.approx(result.flops["total"] / result.stages["step"].median / 1e12)
    assert result.device["type"] == "cpu" and result.device["torch_threads"] == 1


def test_fp16_cell_flags_timed_steps_that_skipped_the_optimizer(monkeypatch):
    spec = CellSpec(variant=Variant.modern().replace(precision="fp16").as_dict(), size="tiny", batch=2,
                    device="cpu", threads=1, timing={"warmup": 1, "repeats": 2}, host_device={"type": "cpu"})
    settled = measure(spec)  # the warm-up steps past the overflowing loss scales
    assert settled.status == "ok", settled.message
    assert not any(f.startswith("fp16_overflow") for f in settled.flags)
    # With a warm-up of one step (as before the warm-up knew about GradScaler) the timed steps overflow.
    def one_step(step, settings, device):
        step()
        step.zero_grad()
        return 1

    monkeypatch.setattr("bench.cell.warm_up", one_step)
    assert any(f.startswith("fp16_overflow") for f in measure(spec).flags)


def test_a_failing_accounting_step_keeps_the_timings(monkeypatch):
    # On a GPU, attn=flex runs FlexAttention eagerly under FlopCounterMode, which has no rule for it.
    def no_flop_rule(step):
        raise TypeError("no implementation found for 'torch.ops.higher_order.flex_attention'")

    monkeypatch.setattr("bench.cell._accounting_step", no_flop_rule)
    spec = CellSpec(variant=Variant.faithful().as_dict(), size="tiny", batch=2, device="cpu", threads=1,
                    timing={"warmup": 1, "repeats": 2}, host_device={"type": "cpu"})
    result = measure(spec)
    assert result.status == "ok", result.message
    assert result.stages["step"].median > 0 and result.stages["step"].n == 2
    assert result.flops is None and result.mfu is None and result.memory.saved_activations_bytes is None
    assert any(f.startswith("accounting_failed: TypeError") for f in result.flags)


def test_unsupported_variant_gives_reason():
    spec = CellSpec(variant=Variant.faithful().replace(attention="sdpa_flash").as_dict(), size="tiny", batch=2,
                    device="cpu")
    result = measure(spec)
    assert result.status == "unsupported" and "learned bias" in result.reason


@pytest.mark.parametrize("variant", [
    Variant.faithful(), Variant.modern().replace(precision="bf16"),
    Variant.faithful().replace(precision="fp16"),  # GradScaler: the estimate must step without .item()
    Variant.faithful().replace(text="minilm"),  # pretrained weights load as real tensors
    # Triton kernels: the custom ops' fake implementations against the real (interpreted) launches.
    Variant.modern().replace(norm="rmsnorm_triton", mlp="swiglu_triton"),
], ids=lambda v: v.key)
def test_fake_tensor_estimate_equals_real_accounting(variant):
    size = SIZES["tiny"]
    torch.manual_seed(0)
    step = TrainStep(build(variant, size), example_batch(size, batch=2))
    # The cell's warm-up: fp16's GradScaler skips its first, overflowing steps, which create no AdamW state.
    warm_up(step, TimingSettings(warmup=3, warmup_time_s=0.0), torch.device("cpu"))
    real_memory, real_flops = _accounting_step(step)
    est = estimate_variant(variant, size, batch=2, dispatch="cpu")  # what the real CPU step runs
    assert est["flops"] == real_flops
    for key in ("param_bytes", "grad_bytes", "optimizer_state_bytes"):
        assert est["memory"][key] == getattr(real_memory, key), key
    # Dropout masks and the text padding differ between fake and real inputs only in values, never in
    # shapes; the saved bytes agree to within a few small tensors.
    assert est["memory"]["saved_activations_bytes"] == pytest.approx(real_memory.saved_activations_bytes, rel=0.01)
    # The same live-bytes tracking on the real step: fake tensors must allocate what real ones do.
    tracker = AllocationTracker(resident_tensors(step))
    with tracker:
        step()
        step.zero_grad()
    assert est["memory"]["predicted_peak_bytes"] == pytest.approx(tracker.peak_bytes, rel=0.01)
    assert est["memory"]["largest_transient_bytes"] == pytest.approx(tracker.largest_op_bytes, rel=0.01)


@pytest.mark.gpu
def test_cuda_cell_uses_events_and_allocator():
    spec = CellSpec(variant=Variant.modern().replace(precision="bf16").as_dict(), size="tiny", batch=2,
                    device="cuda", timing={"warmup": 2, "repeats": 5}, host_device={"type": "cuda"})
    result = measure(spec)
    assert result.status == "ok", result.message
    assert result.timer == "cuda_events"
    m = result.memory
    assert m.gpu_allocated_peak_bytes > m.gpu_allocated_baseline_bytes > 0
    assert m.gpu_reserved_peak_bytes >= m.gpu_allocated_peak_bytes
    # Requested bytes are the allocated ones before rounding up to blocks (512 B at least).
    assert m.gpu_allocated_baseline_bytes < m.gpu_requested_peak_bytes <= m.gpu_allocated_peak_bytes
    assert result.device["type"] == "cuda" and result.device["name"]


def test_estimate_declines_compile_on_because_it_would_be_the_eager_step():
    from bench.estimate import estimate_cell

    # The premise: under the estimator's dispatch modes a compiled model runs eagerly, op for op.
    size = SIZES["tiny"]
    eager = estimate_variant(Variant.faithful(), size, batch=2, dispatch="cpu")
    compiled = estimate_variant(Variant.faithful().replace(compile=True), size, batch=2, dispatch="cpu")
    assert compiled["flops"] == eager["flops"] and compiled["roofline"]["ops"] == eager["roofline"]["ops"]
    assert compiled["memory"]["predicted_peak_bytes"] == eager["memory"]["predicted_peak_bytes"]
    # So the cell is recorded unsupported, saying why, rather than reported as compile's figures.
    spec = CellSpec(variant=Variant.faithful().replace(compile=True).as_dict(), size="tiny", batch=2,
                    device="cpu")
    result = estimate_cell(spec, dispatch="cpu")
    # (Without a C++ compiler on PATH, supports() gives its own reason first.)
    assert result.status == "unsupported" and ("runs eagerly" in result.reason or "C++" in result.reason)
