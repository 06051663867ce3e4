"""Multi-process training through torchrun: process-group set-up and contrastive losses whose negatives
come from every rank.

Launch with `torchrun --nproc-per-node N -m ablations.run ...` (or the SLURM template in
ablations/slurm/). Each rank holds B of the N*B pairs of a global batch. The losses below are written so
that the mean over ranks equals the single-process loss on the combined batch and, because the
exchanges carry gradients back to the rank that owns each feature, DDP's gradient average equals the
single-process gradient on the combined batch (tests/ablations/test_distributed.py checks this).

- softmax (CLIP): each rank scores its local texts against all gathered images and its local images
  against all gathered texts (open_clip's `--local-loss --gather-with-grad`), so the logits are
  B x NB, never NB x NB. The gather is `torch.distributed.nn.functional.all_gather`, which sums the
  gradients of every rank back to the owner.
- siglip: `gather` (all_gather the texts with gradient, score local images against them) or `shift`
  (open_clip's ring neighbour exchange: the texts travel around the ring in N-1 point-to-point steps and
  each remote block counts only as negatives), which never holds more than two text blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str = "cpu") -> DistContext:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' x concatenated in rank order; gradients flow back to the rank that owns each row."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def softmax_loss(text: torch.Tensor, image: torch.Tensor, temperature: torch.Tensor,
                 bias: "torch.Tensor | None" = None) -> torch.Tensor:
    """CLIP InfoNCE with negatives from all ranks; equals models.losses.softmax_clip_loss on one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        from models.losses import softmax_clip_loss

        return softmax_clip_loss(text, image, temperature, bias)
    all_text, all_image = gather_with_grad(text), gather_with_grad(image)
    scale = temperature.exp()
    targets = torch.arange(text.shape[0], device=text.device) + dist.get_rank() * text.shape[0]
    per_text = F.cross_entropy(scale * text @ all_image.t(), targets)
    per_image = F.cross_entropy(scale * image @ all_text.t(), targets)
    return (per_text + per_image) / 2


class _NeighbourExchange(torch.autograd.Function):
    """Send `tensor` to `to_rank` and receive a same-shaped tensor from `from_rank`; the backward sends
    the gradient of the received tensor back the other way."""

    @staticmethod
    def forward(ctx, to_rank: int, from_rank: int, tensor: torch.Tensor) -> torch.Tensor:
        ctx.to_rank, ctx.from_rank = to_rank, from_rank
        received = torch.empty_like(tensor)
        ops = [dist.P2POp(dist.isend, tensor.contiguous(), to_rank), dist.P2POp(dist.irecv, received, from_rank)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        return received

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, _NeighbourExchange.apply(ctx.from_rank, ctx.to_rank, grad)


def _siglip_block(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                  negative_only: bool) -> torch.Tensor:
    logits = scale * image @ text.t() + bias
    labels = -torch.ones_like(logits)
    if not negative_only:
        labels += 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def siglip_loss(text: torch.Tensor, image: torch.Tensor, temperature: torch.Tensor,
                bias: "torch.Tensor | None" = None, impl: str = "shift") -> torch.Tensor:
    """SigLIP over every (image, text) pair of the global batch, normalised by the local batch so that
    the mean over ranks equals models.losses.siglip_loss on the combined batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        from models.losses import siglip_loss as single

        return single(text, image, temperature, bias)
    scale, rank, world = temperature.exp(), dist.get_rank(), dist.get_world_size()
    if impl == "gather":
        all_text = gather_with_grad(text)
        logits = scale * image @ all_text.t() + bias
        labels = -torch.ones_like(logits)
        cols = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
        labels[torch.arange(image.shape[0]), cols] = 1.0
        return -F.logsigmoid(labels * logits).sum() / image.shape[0]
    if impl != "shift":
        raise ValueError(f"siglip distributed impl must be 'gather' or 'shift', not {impl!r}")
    loss = _siglip_block(image, text, scale, bias, negative_only=False)
    right, left = (rank + 1) % world, (rank - 1) % world
    travelling = text
    for _ in range(world - 1):
        travelling = _NeighbourExchange.apply(right, left, travelling)
        loss = loss + _siglip_block(image, travelling, scale, bias, negative_only=True)
    return loss


def contrastive_loss(loss_name: str, text: torch.Tensor, image: torch.Tensor, temperature: torch.Tensor,
                     bias: "torch.Tensor | None", siglip_impl: str = "shift") -> torch.Tensor:
    """The variant's loss in fp32 with negatives from every rank (the single-process loss on one rank)."""
    text, image = text.float(), image.float()
    if loss_name == "softmax":
        return softmax_loss(text, image, temperature, bias)
    if loss_name == "siglip":
        return siglip_loss(text, image, temperature, bias, siglip_impl)
    raise ValueError(f"unknown loss {loss_name!r}; valid losses: softmax, siglip")


class Towers(torch.nn.Module):
    """The two encoders as one module whose forward returns (text_latents, image_latents): what DDP
    wraps, so its gradient hooks see every parameter while the loss is computed outside, across ranks.

    `frozen_text`: the text tower is locked (LiT-style, `TrainConfig.text_lr_scale = 0`), so its [CLS]
    state for a given token sequence never changes; it is computed once per distinct report, in eval
    mode (no dropout: a locked tower is used as it will be at zero-shot time), and only the text
    projection trains. This mirrors `CTCLIP.encode_text` (hidden[:, 0] -> to_text_latent -> normalise).
    """

    def __init__(self, model: torch.nn.Module, frozen_text: bool = False) -> None:
        super().__init__()
        self.model = model
        self.frozen_text = frozen_text
        self._cls: dict[bytes, torch.Tensor] = {}

    def _cached_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keys = [row.tobytes() for row in input_ids.cpu().numpy()]
        todo = sorted({i for i, k in enumerate(keys) if k not in self._cls})
        if todo:
            encoder = self.model.text_encoder
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad(), self.model.autocast():
                out = encoder(input_ids=input_ids[todo], attention_mask=attention_mask[todo])
            encoder.train(was_training)
            for i, h in zip(todo, out.last_hidden_state[:, 0]):
                self._cls[keys[i]] = h.detach()
        cls = torch.stack([self._cls[k] for k in keys])
        with self.model.autocast():
            return F.normalize(self.model.to_text_latent(cls), dim=-1)

    def forward(self, volumes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        text = (self._cached_text(input_ids, attention_mask) if self.frozen_text
                else self.model.encode_text(input_ids, attention_mask))
        return text, self.model.encode_image(volumes)
