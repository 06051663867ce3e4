"""CT-ViT's patch embedding: the volume cut into pt x p x p patches, LayerNorm, Linear, LayerNorm.

The patch_embed axis: how the first two steps run. `eager` is upstream's `Rearrange` (a copy of the
volume as a (B, t, h, w, C*pt*p*p) patch matrix) then `nn.LayerNorm`, which under autocast keeps that
fp32 copy for backward and is cast to bf16 for the projection. `triton` reads the volume where it lies
and writes the normalised patches once, in the dtype the projection reads, one kernel each way
(kernels/patch_norm.py); it uses the same `norm_in` parameters, so state dicts interchange.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import nn

from models.norms import _kernels_reason
from models.registry import Registry
from models.variant import Size

# (volume (B, C, D, H, W), the PatchEmbed holding norm_in and the patch sizes) -> normalised patches.
PATCH_EMBEDS: Registry[Callable[[torch.Tensor, "PatchEmbed"], torch.Tensor]] = Registry("patch_embed")


@PATCH_EMBEDS.register("eager")
def eager(volume: torch.Tensor, embed: "PatchEmbed") -> torch.Tensor:
    """CT-CLIP's: the patch matrix as a copy (einops rearrange), then nn.LayerNorm."""
    patches = rearrange(
        volume, "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)",
        pt=embed.temporal_patch_size, p1=embed.patch_size, p2=embed.patch_size,
    )
    return embed.norm_in(patches)


@PATCH_EMBEDS.register("triton", supports=_kernels_reason)
def triton(volume: torch.Tensor, embed: "PatchEmbed") -> torch.Tensor:
    """The same patches and LayerNorm in one Triton kernel each way, read from the volume in place."""
    from kernels.patch_norm import triton_patch_layer_norm

    norm = embed.norm_in
    return triton_patch_layer_norm(volume, norm.weight, norm.bias, embed.temporal_patch_size,
                                   embed.patch_size, norm.eps)


class PatchEmbed(nn.Module):
    def __init__(self, size: Size, impl: str = "eager") -> None:
        super().__init__()
        self.patch_size = size.patch_size
        self.temporal_patch_size = size.temporal_patch_size
        self._normalised_patches = PATCH_EMBEDS.get(impl).impl
        self.norm_in = nn.LayerNorm(size.patch_dim)
        self.proj = nn.Linear(size.patch_dim, size.dim)
        self.norm_out = nn.LayerNorm(size.dim)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.proj(self._normalised_patches(volume, self)))
