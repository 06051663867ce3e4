"""Optimiser and learning-rate schedule of CTCLIP_MODERN's recipe (reference §5).

AdamW with weight decay only on parameters with ndim >= 2 (matrices, convolution kernels, embeddings);
biases, norm gains, the temperature and the SigLIP bias are not decayed, because shrinking a gain or the
logit scale towards zero is not regularisation. The schedule is a linear warm-up then a cosine down to
`min_lr_ratio` of the peak, stepped every optimiser step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.optimizers import make_optimizer


def param_groups(model: nn.Module, weight_decay: float, lr: "float | None" = None,
                 text_lr_scale: float = 1.0) -> list[dict]:
    """Decay / no-decay groups; with `text_lr_scale` != 1 the text tower (`model.text_encoder`, not its
    projection) gets its own pair of groups at `lr * text_lr_scale`. A pretrained text tower keeps more
    of what it knows at a lower LR while the randomly initialised parts move at the full one."""
    text = {id(p) for p in model.text_encoder.parameters()} if text_lr_scale != 1.0 else set()
    if text and lr is None:
        raise ValueError("a text-tower LR scale needs the peak lr")
    groups = []
    for is_text in ((False, True) if text else (False,)):
        decay, no_decay = [], []
        for param in model.parameters():
            if param.requires_grad and (id(param) in text) == is_text:
                (decay if param.ndim >= 2 else no_decay).append(param)
        extra = {"lr": lr * text_lr_scale} if is_text else {}
        groups += [{"params": decay, "weight_decay": weight_decay, **extra},
                   {"params": no_decay, "weight_decay": 0.0, **extra}]
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01,
                    betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                    text_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the decay groups, foreach or fused as the model's variant says (models/optimizers.py)."""
    groups = param_groups(model, weight_decay, lr, text_lr_scale)
    return make_optimizer(getattr(model, "variant", None), groups, lr=lr, betas=betas, eps=eps)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01) -> float:
    """Multiplier of the peak LR at optimiser step `step` (0-based)."""
    if step < warmup_steps:
        # (step + 1): the very first step already moves, instead of spending it at LR 0.
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, min_lr_ratio))
