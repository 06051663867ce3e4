"""GPU regressions (skipped without CUDA): the paper design's four rows at `small` size in bf16, and each
Triton kernel at the model's shapes, timed with a synchronising timer, allocator peak in extra_info.

    pytest tests/perf -m gpu --benchmark-enable                     # time and print
    pytest tests/perf -m gpu --benchmark-enable --benchmark-autosave # and save for the gate
See docs/perf-gate.md for the gate run on pull requests.
"""

from __future__ import annotations

import pytest
import torch

from bench.design import expand
from bench.step import TrainStep
from models import SIZES, build, example_batch, supports
from tests.perf.helpers import PEAK_KEY, clear_grads, measure_cuda

pytestmark = pytest.mark.gpu

PAPER_ROWS = expand("paper", precision="bf16")
SIZE = "small"
# The Triton kernels at the paper size: 13,824 tokens per volume x the paper batch (4) rows.
KERNEL_ROWS = 13824 * SIZES["paper"].batch
KERNEL_WIDTH = {"rmsnorm": SIZES["paper"].dim, "swiglu": SIZES["paper"].ff_inner, "geglu": SIZES["paper"].ff_inner}


@pytest.mark.parametrize("cell", PAPER_ROWS, ids=[c.key for c in PAPER_ROWS])
def test_paper_row_small_bf16(benchmark, cell):
    device = torch.device("cuda")
    if reason := supports(cell.variant, device):
        pytest.skip(reason)
    torch.manual_seed(0)
    model = build(cell.variant, SIZE, device=device)
    step = TrainStep(model, example_batch(SIZE, device=device))
    step()  # untimed: cuDNN plans, autotuning, AdamW's lazy state
    step.zero_grad()
    loss = measure_cuda(benchmark, step, setup=step.zero_grad)
    assert torch.isfinite(loss), loss
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # Weights, their gradients and AdamW's two moments are resident at the peak, at the very least.
    assert benchmark.extra_info[PEAK_KEY] >= 4 * params
    benchmark.extra_info.update(variant=cell.key, size=SIZE, batch=SIZES[SIZE].batch, baseline=cell.baseline)


def _fp32_reference(kernel: str, x: torch.Tensor, weight: torch.Tensor | None, dy: torch.Tensor):
    from kernels.bench import eager_module

    module = eager_module(kernel, KERNEL_WIDTH[kernel]).to(x.device)
    if weight is not None:
        with torch.no_grad():
            module.weight.copy_(weight.float())
    xr = x.detach().float().requires_grad_(True)
    yr = module(xr)
    yr.backward(dy.float())
    return yr.detach(), xr.grad


@pytest.mark.parametrize("provider", ["triton", "eager"])
@pytest.mark.parametrize("kernel", ["rmsnorm", "swiglu", "geglu"])
def test_kernel_fwd_bwd_model_shape(benchmark, kernel, provider):
    from kernels import supports as kernel_supports
    from kernels.bench import build as build_provider

    device = torch.device("cuda")
    if provider == "triton" and (reason := kernel_supports(device)):
        pytest.skip(reason)
    width = KERNEL_WIDTH[kernel]
    module, _ = build_provider(kernel, provider, width)
    module = module.to(device=device, dtype=torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    in_width = width if kernel == "rmsnorm" else 2 * width
    x = torch.randn(KERNEL_ROWS, in_width, generator=gen, device=device).bfloat16().requires_grad_(True)
    dy = torch.randn(KERNEL_ROWS, width, generator=gen, device=device).bfloat16()
    weight = getattr(module, "weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.copy_(torch.rand(width, generator=gen, device=device) + 0.5)

    # Correctness first (FlashAttention's rule): against fp32, the error is at most 2x that of eager bf16.
    ref_y, ref_dx = _fp32_reference(kernel, x, weight, dy)
    eager, _ = build_provider(kernel, "eager", width)
    eager = eager.to(device=device, dtype=torch.bfloat16)
    if weight is not None:
        with torch.no_grad():
            eager.weight.copy_(weight)
    errors = {}
    for name, mod in (("provider", module), ("eager", eager)):
        xk = x.detach().clone().requires_grad_(True)
        yk = mod(xk)
        yk.backward(dy)
        errors[name] = ((yk.float() - ref_y).abs().max().item(), (xk.grad.float() - ref_dx).abs().max().item())
    for i, what in enumerate(("output", "dx")):
        assert errors["provider"][i] <= 2 * errors["eager"][i] + 1e-6, (what, errors)

    params = [x, *module.parameters()]
    measure_cuda(benchmark, lambda: module(x).backward(dy), setup=lambda: clear_grads(*params))
    benchmark.extra_info.update(kernel=kernel, provider=provider, rows=KERNEL_ROWS, width=width, dtype="bf16")
