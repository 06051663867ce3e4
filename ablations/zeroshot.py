"""Zero-shot multi-abnormality scoring: P(present) per volume and class from a positive/negative prompt pair.

Each volume is encoded once and the 2 x C prompts once per evaluation (CT-CLIP's script re-encoded every
volume for each of its 18 pathologies). The score is a softmax over the pair of similarities
exp(t) * cos(prompt, volume), the SigLIP bias left out as it cancels in the pair, so P(present) > 0.5
exactly when the positive prompt is the closer one. Evaluation runs in eval mode (no dropout, VQ
codebook frozen) without gradients, under the variant's own precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ablations.loading import loader
from ablations.prompts import PromptTemplate, build_prompts


@dataclass
class ZeroShotScores:
    probabilities: np.ndarray  # (N, C) P(present)
    labels: np.ndarray         # (N, C) 0/1
    names: list[str]
    classes: list[str]


@torch.no_grad()
def encode_prompts(model, tokenize: Callable, classes: Sequence[str], template: "str | PromptTemplate") -> torch.Tensor:
    """(C, 2, dim) latents of [positive, negative] prompts per class, in one text forward."""
    ids, mask = tokenize(build_prompts(classes, template))
    return model.encode_text(ids, mask).float().reshape(len(classes), 2, -1)


@torch.no_grad()
def encode_volumes(model, dataset: Sequence, batch: int = 8, workers: int = 0
                   ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Image latents (N, dim), labels (N, C) and names of every item of `dataset`, each encoded once;
    `workers` DataLoader processes read the volumes ahead (ablations.loading)."""
    device = next(model.parameters()).device
    latents, labels, names = [], [], []
    for samples in loader(dataset, batch=batch, workers=workers):
        samples = [s for s in samples if s is not None]  # a skipped bad volume
        if not samples:
            continue
        latents.append(model.encode_image(torch.stack([s.volume for s in samples]).to(device)).float().cpu())
        labels.append(torch.stack([s.labels for s in samples]).numpy())
        names += [s.name for s in samples]
    return torch.cat(latents), np.concatenate(labels).astype(int), names


def pair_probabilities(model, prompt_latents: torch.Tensor, image_latents: torch.Tensor) -> np.ndarray:
    """(N, C) softmax over each class's [positive, negative] similarity; column 0 is P(present)."""
    C = prompt_latents.shape[0]
    image_latents = image_latents.to(prompt_latents.device)
    logits = model.similarity(prompt_latents.reshape(2 * C, -1), image_latents)  # (2C, N)
    pairs = logits.t().reshape(-1, C, 2)
    return torch.softmax(pairs, dim=-1)[..., 0].cpu().numpy()


def zero_shot(model, dataset: Sequence, tokenize: Callable, classes: Sequence[str],
              template: "str | PromptTemplate" = "present", batch: int = 8, workers: int = 0) -> ZeroShotScores:
    was_training = model.training
    model.eval()
    try:
        prompts = encode_prompts(model, tokenize, classes, template)
        images, labels, names = encode_volumes(model, dataset, batch, workers)
        with torch.no_grad():
            probs = pair_probabilities(model, prompts, images)
    finally:
        model.train(was_training)
    return ZeroShotScores(probs, labels, names, list(classes))
