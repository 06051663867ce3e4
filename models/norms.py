"""The `norm` axis: which normalisation sits in each slot of a transformer block.

Slots (CT-CLIP names in brackets):
- `attn`: the attention pre-norm on the query path [`Attention.norm`, a bias-less LayerNorm],
- `ff`:   the feed-forward input norm [`FeedForward[0]`, a standard `nn.LayerNorm` with bias],
- `out`:  the norm after the last layer of each transformer [`Transformer.norm_out`, bias-less].

`layernorm` keeps exactly those. `rmsnorm` and `rmsnorm_triton` replace all three slots (unlike the
seed project, whose RMSNorm switch skipped the FF norm). `add_rmsnorm_triton` is `rmsnorm_triton` that
also takes the residual add before the attention and FF norms into its kernel (kernels/add_rmsnorm.py;
`models.transformer.Layer` calls its `add_and_norm`). The two patch-embedding LayerNorms are not
transformer-block norms and never change.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch._guards import detect_fake_mode

from models.registry import Registry

NormFactory = Callable[[int, str], nn.Module]
NORMS: Registry[NormFactory] = Registry("norm")

# nn.RMSNorm's eps placement (inside the square root); the Triton kernel uses the same.
RMS_EPS = 1e-6


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a learnable gain and no bias (CT-CLIP's `LayerNorm`: gamma plus a zero beta buffer)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, None, self.eps)


# Whether this build's autocast policy for a device runs rms_norm in fp32 (CUDA's does, since torch 2.x;
# the CPU's does not). A fact of the build, read once: torch.compile cannot trace the dispatcher query.
_AUTOCAST_UPCASTS_RMS_NORM = {
    device: torch._C._dispatch_has_kernel_for_dispatch_key("aten::rms_norm", key)
    for device, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA"))
}


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input's dtype where autocast leaves the two apart.

    Under an autocast that does not cover rms_norm (the CPU's) the input arrives in fp16/bf16 while the
    weight stays fp32; torch.rms_norm then refuses its fused kernel ("Cannot dispatch to fused
    implementation") and runs the composite one, which saves more for backward. Casting the weight, as
    the Triton kernel's output dtype also does, keeps the fused path. CUDA's autocast upcasts both to
    fp32 itself, so there the weight is left alone rather than rounded to bf16 and back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        device = x.device.type
        if weight is not None and not (torch.is_autocast_enabled(device)
                                       and _AUTOCAST_UPCASTS_RMS_NORM.get(device, False)):
            weight = weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def _kernels_reason(variant: object, device: torch.device) -> "str | None":
    if device.type == "cpu" and detect_fake_mode() is not None:
        # On fake tensors (bench.estimate) each launch is a custom op's fake implementation: no kernel
        # runs, so the model can be built and stepped whether or not the kernels could run here.
        return None
    try:
        import kernels
    except ImportError as err:  # pragma: no cover - kernels/ ships with the project
        return f"kernels/ cannot be imported: {err}"
    supports = getattr(kernels, "supports", None)
    if supports is None:
        return "kernels/ does not provide the Triton kernels yet"
    return supports(device)


@NORMS.register("layernorm")
def layernorm(dim: int, slot: str) -> nn.Module:
    """CT-CLIP's own: bias-less LayerNorm in the attention and output slots, nn.LayerNorm in the FF slot."""
    return nn.LayerNorm(dim) if slot == "ff" else BiasFreeLayerNorm(dim)


@NORMS.register("rmsnorm")
def rmsnorm(dim: int, slot: str) -> nn.Module:
    """torch's RMSNorm (y = x / sqrt(mean(x^2) + eps) * w) in every block slot."""
    return RMSNorm(dim, eps=RMS_EPS)


@NORMS.register("rmsnorm_triton", supports=_kernels_reason)
def rmsnorm_triton(dim: int, slot: str) -> nn.Module:
    """The fused Triton RMSNorm (kernels/rmsnorm.py), same math and parameter names as `rmsnorm`."""
    from kernels import TritonRMSNorm

    return TritonRMSNorm(dim, eps=RMS_EPS)


@NORMS.register("add_rmsnorm_triton", supports=_kernels_reason)
def add_rmsnorm_triton(dim: int, slot: str) -> nn.Module:
    """`rmsnorm_triton` with the residual add that precedes the attention and FF norms fused in: one
    kernel writes the new residual stream and the norm, in the next matmul's dtype (and its backward
    sums the gradients of both). Same math and parameter names as `rmsnorm`."""
    from kernels import TritonAddRMSNorm

    return TritonAddRMSNorm(dim, eps=RMS_EPS)


def fuses_residual_add(norm: nn.Module) -> bool:
    """Whether `norm` can take the residual add before it (a TritonAddRMSNorm's `add_and_norm`)."""
    return callable(getattr(norm, "add_and_norm", None))


def make_norm(name: str, dim: int, slot: str) -> nn.Module:
    if slot not in ("attn", "ff", "out"):
        raise ValueError(f"unknown norm slot {slot!r}; slots: attn, ff, out")
    return NORMS.get(name).impl(dim, slot)
