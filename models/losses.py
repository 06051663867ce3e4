"""The `loss` axis: the contrastive objective over a batch of (text, image) latent pairs.

Both take L2-normalised latents of shape (B, dim_latent), a learnable `temperature` t (the logit scale
is exp(t), unclamped, as upstream) and, for SigLIP, a learnable bias b.
- `softmax` (CLIP InfoNCE, CT-CLIP): sim = exp(t) * T I^T; mean of the text->image and image->text
  cross-entropies with the diagonal as targets. t starts at 1.0 (scale e). Upstream writes it as
  -log(exp(diag)) + log(sum exp(row)) with an eps of 1e-20; `F.cross_entropy` is the same math computed
  stably with logsumexp (tests check the two agree).
- `siglip`: logits = exp(t) * T I^T + b, labels +1 on the diagonal and -1 elsewhere, loss =
  -sum(logsigmoid(label * logit)) / B (the SigLIP paper's normalisation). t starts at log 10, b at -10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from models.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    fn: LossFn
    init_temperature: float
    init_bias: "float | None"


LOSSES: Registry[LossSpec] = Registry("loss")


def softmax_clip_loss(text: torch.Tensor, image: torch.Tensor, temperature: torch.Tensor,
                      bias: "torch.Tensor | None" = None) -> torch.Tensor:
    logits = temperature.exp() * text @ image.t()
    targets = torch.arange(text.shape[0], device=text.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def siglip_loss(text: torch.Tensor, image: torch.Tensor, temperature: torch.Tensor,
                bias: "torch.Tensor | None" = None) -> torch.Tensor:
    logits = temperature.exp() * text @ image.t() + bias
    labels = 2 * torch.eye(text.shape[0], device=text.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / text.shape[0]


LOSSES.register("softmax", doc="CLIP InfoNCE, temperature init 1.0")(LossSpec(softmax_clip_loss, 1.0, None))
LOSSES.register("siglip", doc="sigmoid loss, t = log 10, b = -10")(LossSpec(siglip_loss, math.log(10.0), -10.0))
