"""FlashAttention's accuracy rule, as the kernel tests apply it, and the compiled-equals-eager check.

Against an fp64 reference, a kernel's max abs error may be at most 2x the error of PyTorch's own
implementation run in the same dtype, plus a tiny floor (1e-6 of the reference's scale) so that cases
where both are exact to fp32 rounding do not compare 0 with 0.
"""

from __future__ import annotations

import torch


def max_abs_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return (x.double() - reference.double()).abs().max().item() if x.numel() else 0.0


def assert_fa_rule(kernel: torch.Tensor, pytorch: torch.Tensor, reference: torch.Tensor, what: str,
                   factor: float = 2.0) -> None:
    assert kernel.shape == reference.shape, f"{what}: shape {tuple(kernel.shape)} != {tuple(reference.shape)}"
    assert torch.isfinite(kernel).all(), f"{what}: non-finite values in the kernel's result"
    scale = reference.abs().max().item() if reference.numel() else 0.0
    floor = 1e-6 * max(scale, 1.0)
    kernel_error = max_abs_error(kernel, reference)
    pytorch_error = max_abs_error(pytorch, reference)
    assert kernel_error <= factor * pytorch_error + floor, (
        f"{what}: kernel error {kernel_error:.3e} vs fp64 exceeds {factor}x PyTorch's same-dtype error "
        f"{pytorch_error:.3e} (+ floor {floor:.1e})"
    )


def assert_compiled_grads_match_eager(model: torch.nn.Module, x: torch.Tensor,
                                      autocast: bool = False) -> None:
    """`torch.compile(model, fullgraph=True)` (a graph break fails) gives eager's parameter gradients for
    the loss sum(model(x)^2), in fp32 or under bf16 autocast on x's device."""

    def grads(module: torch.nn.Module) -> list[torch.Tensor]:
        model.zero_grad()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            module(x).float().square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = grads(model)
    torch._dynamo.reset()
    for got, want in zip(grads(torch.compile(model, fullgraph=True)), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
