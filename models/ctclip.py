"""CT-CLIP: a CT-ViT volume encoder and a BERT report encoder projected into one latent space.

image: CT-ViT tokens (B, t, h, w, dim) -> mean over depth t -> flatten (B, h*w*dim) [294,912 at paper
       size] -> Linear(dim_image, dim_latent, no bias) -> L2 normalise.
text:  BERT last hidden state at [CLS] -> Linear(hidden, dim_latent, no bias) -> L2 normalise.
Upstream also registers `to_text_latent_extra` / `to_visual_latent_extra` copies (151.4 M parameters)
that are never used; they are not built here.

Each public method runs under the variant's autocast, so callers (bench stages, training loops) can
time or call the stages separately and still get the mixed precision the variant asks for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.ctvit import CTViT
from models.losses import LOSSES
from models.projection import PROJECTIONS
from models.text import build_text_encoder
from models.variant import Size, Variant

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CTCLIPOutput:
    text_latents: torch.Tensor
    image_latents: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: "torch.Tensor | None"
    loss: torch.Tensor


class CTCLIP(nn.Module):
    def __init__(self, variant: Variant, size: Size, text_weights=None) -> None:
        super().__init__()
        self.variant = variant
        self.size = size
        self.visual_encoder = CTViT(variant, size)
        self.text_encoder = build_text_encoder(variant, size, text_weights)
        self.to_visual_latent = nn.Linear(size.dim_image, size.dim_latent, bias=False)
        self.to_text_latent = nn.Linear(self.text_encoder.config.hidden_size, size.dim_latent, bias=False)
        self._project = PROJECTIONS.get(variant.projection).impl
        self._loss = LOSSES.get(variant.loss).impl
        self.temperature = nn.Parameter(torch.tensor(self._loss.init_temperature))
        self.logit_bias = (
            nn.Parameter(torch.tensor(self._loss.init_bias)) if self._loss.init_bias is not None else None
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST_DTYPES.get(self.variant.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.temperature.device.type, dtype=dtype)

    def encode_image(self, volumes: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            tokens = self.visual_encoder(volumes)  # (B, t, h, w, dim)
            pooled = tokens.mean(dim=1).flatten(1)  # mean over depth, then (h, w, dim) row-major
            return F.normalize(self._project(pooled, self.to_visual_latent), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return F.normalize(self._project(hidden[:, 0], self.to_text_latent), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.temperature.exp()

    def contrastive_loss(self, text_latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
        # In fp32: the B x B logits are tiny, and exp(t) times a half-precision product loses digits.
        with torch.autocast(device_type=text_latents.device.type, enabled=False):
            return self._loss.fn(text_latents.float(), image_latents.float(), self.temperature, self.logit_bias)

    def similarity(self, text_latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
        """exp(t) * cosine, without the SigLIP bias: what zero-shot scoring uses (the bias cancels there)."""
        return self.logit_scale * text_latents.float() @ image_latents.float().t()

    def forward(self, volumes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CTCLIPOutput:
        text_latents = self.encode_text(input_ids, attention_mask)
        image_latents = self.encode_image(volumes)
        loss = self.contrastive_loss(text_latents, image_latents)
        return CTCLIPOutput(text_latents, image_latents, self.logit_scale, self.logit_bias, loss)
