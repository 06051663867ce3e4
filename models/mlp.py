"""The `mlp` axis: CT-CLIP's gated feed-forward and its activation.

Every choice has the same shape: norm -> Linear(dim, 2F, no bias) -> gate -> Linear(F, dim, no bias),
with F = int(mult * 2/3 * dim) (1365 at dim 512), so parameter counts never change with the switch.
- `geglu` (CT-CLIP): value, gate = chunk(2); value * GELU(gate) with the exact erf GELU.
- `swiglu`: a, b = chunk(2); SiLU(a) * b (the seed project's choice; gate in the first half).
- `*_triton`: the same math fused in one Triton kernel (kernels/swiglu.py).
- `*_gemm`: the gate computed in the epilogues of Triton matmuls, the up projection's forward and the
  down projection's input gradient (kernels/gated_linear.py): the same parameters and math, two fewer
  passes over the [tokens, F] activations per layer each step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.norms import _kernels_reason, make_norm
from models.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("mlp")


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


@ACTIVATIONS.register("geglu")
def geglu() -> nn.Module:
    """value * GELU(gate), exact erf GELU, gate in the second half (CT-CLIP)."""
    return GEGLU()


@ACTIVATIONS.register("swiglu")
def swiglu() -> nn.Module:
    """SiLU(first half) * second half."""
    return SwiGLU()


@ACTIVATIONS.register("swiglu_triton", supports=_kernels_reason)
def swiglu_triton() -> nn.Module:
    """Fused Triton SwiGLU on the [..., 2F] projection output."""
    from kernels import TritonSwiGLU

    return TritonSwiGLU()


@ACTIVATIONS.register("geglu_triton", supports=_kernels_reason)
def geglu_triton() -> nn.Module:
    """Fused Triton GEGLU (exact erf GELU) on the [..., 2F] projection output."""
    from kernels import TritonGEGLU

    return TritonGEGLU()


class GemmFusedGate(nn.Module):
    """The gate inside the projections' matmuls: FeedForward hands it both weights (their modules and
    parameter names stay, so checkpoints load the same)."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, normed: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        from kernels.gated_linear import triton_gated_mlp

        return triton_gated_mlp(normed, w_in, w_out, self.activation)


@ACTIVATIONS.register("swiglu_gemm", supports=_kernels_reason)
def swiglu_gemm() -> nn.Module:
    """SwiGLU computed in the epilogues of the feed-forward's Triton matmuls."""
    return GemmFusedGate("swiglu")


@ACTIVATIONS.register("geglu_gemm", supports=_kernels_reason)
def geglu_gemm() -> nn.Module:
    """GEGLU (exact erf GELU) computed in the epilogues of the feed-forward's Triton matmuls."""
    return GemmFusedGate("geglu")


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int, norm: str, mlp: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, dim, "ff")
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.act = ACTIVATIONS.get(mlp).impl()
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.norm(x))

    def transform(self, normed: torch.Tensor) -> torch.Tensor:
        """The block after its norm (the entry used when the norm is fused with the residual add)."""
        if isinstance(self.act, GemmFusedGate):
            return self.act(normed, self.proj_in.weight, self.proj_out.weight)
        return self.proj_out(self.act(self.proj_in(normed)))
