"""Cosine-similarity vector quantiser with an EMA codebook, as CT-CLIP v2 runs it.

Reproduces `vector_quantize_pytorch==1.1.2` (the version upstream CT-CLIP pins) with
`VectorQuantize(dim, codebook_size, use_cosine_sim=True)`:
- the codebook is a buffer (not a parameter), l2-normalised kaiming-uniform at init, EMA decay 0.8,
  no k-means init, no dead-code expiry (threshold 0);
- it runs in fp32 with autocast disabled: a (tokens x codes) cosine matrix, argmax per token, and the
  output is the stored code vector (unit norm at init, drifting slightly under EMA);
- training: straight-through gradients (output value = code, gradient = identity to the input), plus
  the EMA update, which builds the (tokens x codes) one-hot and a second tokens x codes x dim einsum
  exactly as upstream does (so memory and FLOPs are faithful);
- evaluation: the output is the code with no gradient path to the encoder;
- the commitment loss is discarded by CT-CLIP and therefore not computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineVQ(nn.Module):
    def __init__(self, dim: int, codebook_size: int, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = decay
        self.codebook_size = codebook_size
        embed = torch.empty(1, codebook_size, dim)
        nn.init.kaiming_uniform_(embed)
        # Upstream buffer names and shapes (one codebook), so upstream checkpoints load unchanged.
        self.register_buffer("initted", torch.tensor([1.0]))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(embed, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> quantised (B, N, dim) in fp32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            flat = F.normalize(x.reshape(-1, x.shape[-1]), dim=-1)
            codes = self.embed[0]
            dist = flat @ F.normalize(codes, dim=-1).t()
            index = dist.argmax(dim=-1)
            quantized = F.embedding(index, codes).reshape(x.shape)
            if self.training:
                self._ema_update(flat, index, codes)
                quantized = x + (quantized - x).detach()
            return quantized

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, index: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(index, self.codebook_size).type(flat.dtype)
        bins = onehot.sum(dim=0)
        self.cluster_size[0].lerp_(bins, 1 - self.decay)
        empty = bins == 0
        embed_sum = flat.t() @ onehot  # (dim, codes)
        embed_mean = F.normalize(embed_sum.t() / bins.masked_fill(empty, 1.0)[:, None], dim=-1)
        embed_mean = torch.where(empty[:, None], F.normalize(codes, dim=-1), embed_mean)
        self.embed[0].lerp_(embed_mean, 1 - self.decay)
