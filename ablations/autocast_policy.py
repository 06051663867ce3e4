"""Whose autocast policy a training run on a CPU follows: the CPU's own, or CUDA's, emulated.

Autocast picks each op's dtype by device. The CPU's policy keeps layer_norm, rms_norm, softmax and the
reductions in the input's 16-bit dtype where CUDA's runs them in fp32, so on a CPU upstream CT-CLIP's
residual stream is bf16 from the patch embedding's norm on, while on a GPU it is fp32: a bf16 CPU run
does not have a GPU run's numerics, and cannot tell the `residual` axis's two values apart.
`cuda` registers CUDA's casts for the CPU's autocast for the run's duration (bench.cuda_autocast, whose
op lists the tests check against ATen's), so CPU accuracy runs in bf16/fp16 compute what a GPU would up
to kernel rounding order. fp32 cells run no autocast, and a CUDA device has CUDA's policy already.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

POLICIES = ("device", "cuda")


@dataclass(frozen=True)
class AutocastPolicy:
    name: str  # what the result row records: "none" (fp32), "cpu", "cuda" or "cuda (emulated on the cpu)"
    emulate_cuda: bool

    @property
    def key_suffix(self) -> str:
        """Appended to a row's cell key so that rows under an emulated policy never resume or pair with
        rows under the device's own."""
        return "|cuda-autocast" if self.emulate_cuda else ""

    def context(self) -> AbstractContextManager:
        if not self.emulate_cuda:
            return nullcontext()
        from bench.cuda_autocast import cuda_autocast_policy

        return cuda_autocast_policy()


def autocast_policy(requested: str, precision: str, device: torch.device) -> AutocastPolicy:
    """The policy a cell of `precision` on `device` runs under when `requested` ("device" or "cuda")."""
    if requested not in POLICIES:
        raise ValueError(f"unknown autocast policy {requested!r}; choices: {', '.join(POLICIES)}")
    if precision == "fp32":
        return AutocastPolicy("none", False)
    if requested == "device" or device.type == "cuda":
        return AutocastPolicy(device.type, False)
    return AutocastPolicy(f"cuda (emulated on the {device.type})", True)
