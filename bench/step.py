"""One CT-CLIP training step split into the stages the matrix times.

text forward -> vision forward -> loss -> backward -> optimizer step, with a `mark` callback at every
boundary so a timer can record there (perf_counter on a CPU, a CUDA event on a GPU) without the step
knowing which. Called with no `mark`, the step has nothing inside it: that is the "whole step" timing.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.optimizers import make_optimizer

Mark = Callable[[], None]


def _no_mark() -> None:
    return None


class TrainStep:
    """Model, optimizer, inputs and (for fp16) a GradScaler, bound into a callable step."""

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 lr: float = 1e-5) -> None:
        self.model = model
        self.volumes, self.input_ids, self.attention_mask = inputs
        variant = getattr(model, "variant", None)
        # AdamW as upstream trains CT-CLIP: torch's foreach path, or fused (the variant's optimizer axis).
        self.optimizer = make_optimizer(variant, model.parameters(), lr=lr)
        precision = getattr(variant, "precision", "fp32")
        device_type = self.volumes.device.type
        # fp16 autocast needs loss scaling to train; bf16 and fp32 do not (as upstream's AMP recipe).
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None

    def resident(self) -> list[torch.Tensor]:
        """Tensors allocated whether or not a backward is pending (the parameters and the batch): what
        autograd saves of these is not activation memory (bench.memory.SavedBytes)."""
        return [*self.model.parameters(), self.volumes, self.input_ids, self.attention_mask]

    def forward(self, mark: Mark = _no_mark) -> torch.Tensor:
        text = self.model.encode_text(self.input_ids, self.attention_mask)
        mark()
        image = self.model.encode_image(self.volumes)
        mark()
        loss = self.model.contrastive_loss(text, image)
        mark()
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def zero_grad(self) -> None:
        # set_to_none so every iteration allocates its gradients afresh, as a real training step does.
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, mark: Mark = _no_mark) -> torch.Tensor:
        mark()
        loss = self.forward(mark)
        self.backward(loss)
        mark()
        self.optimizer_step()
        mark()
        return loss.detach()
