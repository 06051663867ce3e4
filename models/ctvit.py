"""CT-ViT, the visual encoder of CT-CLIP v2, as used on the CLIP path (encoder + VQ; no decoder).

volume (B, C, D, H, W)
  -> patches of pt x p x p voxels flattened in (c, pt, p1, p2) order   (B, t, h, w, C*pt*p*p)
  -> LayerNorm -> Linear -> LayerNorm                                   (B, t, h, w, dim)
  -> spatial stage: each of the t slabs is one sequence of h*w tokens, with the position signal
  -> temporal stage: each (row, column) is one sequence of t tokens, no position signal
  -> cosine VQ over all t*h*w tokens (when the variant has `vq`)        (B, t, h, w, dim)
Upstream's first-frame embedder, to-pixels heads and decoder transformers are never used on this path
and are not built.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import noop_context_fn

from models.patch_embed import PatchEmbed
from models.position import POSITIONS
from models.transformer import Transformer, maybe_checkpointed
from models.variant import Size
from models.vq import VQ_IMPLS


class CTViT(nn.Module):
    def __init__(self, variant, size: Size) -> None:
        super().__init__()
        self.size = size
        self.patch_embed = PatchEmbed(size, variant.patch_embed)
        self.position = POSITIONS.get(variant.position).impl(size.dim, size.heads, size.dim_head)
        layer_args = (size.heads, size.dim_head, size.ff_inner, variant)
        self.spatial = Transformer(size.dim, size.spatial_depth, *layer_args, stage="spatial")
        self.temporal = Transformer(size.dim, size.temporal_depth, *layer_args, stage="temporal")
        self.vq = VQ_IMPLS.get(variant.vq_impl).impl(size.dim, size.codebook_size) if variant.vq else None
        self.checkpointing = variant.checkpointing
        self.checkpoint_context_fn = noop_context_fn

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> quantised tokens (B, t, h, w, dim)."""
        # Checkpointed, the patch norm no longer keeps the fp32 patch copy and its bf16 cast for backward
        # (1.2 GiB at paper size, batch 4): more than the checkpointed transformer layers keep.
        tokens = maybe_checkpointed(self.checkpointing, self.patch_embed, volume,
                                    context_fn=self.checkpoint_context_fn)
        b, t, h, w, _ = tokens.shape
        grid = (b, t, h, w)
        position = self.position(h, w, tokens.device)

        tokens = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        tokens = self.spatial(tokens, grid, position)
        tokens = rearrange(tokens, "(b t) (h w) d -> (b h w) t d", b=b, h=h, w=w)
        tokens = self.temporal(tokens, grid)
        tokens = rearrange(tokens, "(b h w) t d -> b (t h w) d", b=b, h=h, w=w)
        if self.vq is not None:
            tokens = self.vq(tokens)
        return rearrange(tokens, "b (t h w) d -> b t h w d", t=t, h=h, w=w)
