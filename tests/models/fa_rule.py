"""FlashAttention's accuracy rule: against an fp64 reference, an implementation's error may be at most
twice PyTorch's own error in the same dtype (plus a tiny floor so exact-in-fp32 cases don't divide 0)."""

import torch


def max_abs_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return (x.double() - reference.double()).abs().max().item()


def assert_fa_rule(candidate: torch.Tensor, baseline: torch.Tensor, reference: torch.Tensor, what: str,
                   factor: float = 2.0) -> None:
    floor = 1e-6 * max(reference.abs().max().item(), 1.0)
    candidate_error = max_abs_error(candidate, reference)
    baseline_error = max_abs_error(baseline, reference)
    assert candidate_error <= factor * baseline_error + floor, (
        f"{what}: error {candidate_error:.3e} vs fp64 exceeds {factor}x PyTorch's same-dtype error "
        f"{baseline_error:.3e} (+ floor {floor:.1e})"
    )
