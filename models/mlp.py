"""The `mlp` axis: CT-CLIP's gated feed-forward and its activation.

Every choice has the same shape: norm -> Linear(dim, 2F, no bias) -> gate -> Linear(F, dim, no bias),
with F = int(mult * 2/3 * dim) (1365 at dim 512), so parameter counts never change with the switch.
- `geglu` (CT-CLIP): value, gate = chunk(2); value * GELU(gate) with the exact erf GELU.
- `swiglu`: a, b = chunk(2); SiLU(a) * b (the seed project's choice; gate in the first half).
- `*_triton`: the same math fused in one Triton kernel (kernels/swiglu.py).
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
        return self.proj_out(self.act(self.proj_in(normed)))
