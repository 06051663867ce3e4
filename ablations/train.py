"""One short contrastive training run: AdamW, warm-up + cosine, clipping, mixed precision, checkpoints.

The recipe is CTCLIP_MODERN's (reference §5): AdamW (betas 0.9/0.99, weight decay 0.01 on ndim >= 2
parameters), linear warm-up then cosine to 1 % of the peak LR, gradient norm clipped to 0.5 (after
unscaling under fp16). Precision, activation checkpointing and compile come from the variant (the model
applies them). Runs are deterministic in their seed: the model is initialised from it, and each step's
batch and random draws (dropout) are a function of (seed, rank, step) alone, so a run resumed from a
checkpoint continues exactly where it stopped, on any device, and no two ranks share dropout masks. A NaN
or inf loss stops the run with `Diverged` before the optimiser touches the weights; the last good
checkpoint stays.

Under torchrun every rank draws the same global batch order and takes its own slice of each global batch
(data split by rank); the loss takes its negatives from all ranks (`ablations.distributed`).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ablations.distributed import DistContext, Towers, contrastive_loss
from ablations.loading import StepBatches, loader
from ablations.schedule import build_optimizer, build_scheduler


@dataclass
class TrainConfig:
    steps: int = 300
    batch: int = 8  # per process
    lr: float = 5e-4
    warmup_steps: int = 30
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 0.5
    seed: int = 0
    checkpoint_every: int = 100
    siglip_impl: str = "shift"  # multi-process SigLIP: ring exchange or all_gather
    # Text tower LR as a multiple of `lr` (its projection keeps the full LR). 1.0 is the faithful
    # recipe (one LR for everything); < 1 protects a pretrained tower (text=minilm); 0 locks it.
    text_lr_scale: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    final_loss: float = float("nan")
    wall_s: float = 0.0
    steps: int = 0
    resumed_from: "int | None" = None


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float, checkpoint: "Path | None", good_step: "int | None") -> None:
        where = (f"the last good checkpoint {checkpoint} (step {good_step}) is kept" if checkpoint
                 else "no checkpoint had been written yet")
        super().__init__(f"loss became {loss} at step {step}; training stopped before the update; {where}. "
                         "Lower --lr, use --precision fp32/bf16, or raise --warmup-steps.")
        self.step, self.loss, self.checkpoint, self.good_step = step, loss, checkpoint, good_step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Deterministic kernels where they exist; warn_only because some CUDA ops have no deterministic form.
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def batch_indices(n_items: int, global_batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The indices rank `rank` trains on at `step`: a fresh permutation each epoch drawn from the seed,
    cut into global batches (the incomplete tail of an epoch is dropped), each split evenly by rank.
    A pure function of its arguments, so resuming needs no sampler state."""
    per_epoch = n_items // global_batch
    if per_epoch == 0:
        raise ValueError(f"{n_items} training volumes cannot fill one global batch of {global_batch}; "
                         "lower --batch or add data")
    epoch, within = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    start = within * global_batch + rank * (global_batch // world)
    return perm[start:start + global_batch // world]


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of torch's generators (the CPU's and every CUDA device's) for `rank` at `step`.

    Reseeding each step, rather than saving generator states in the checkpoint, covers the CUDA
    generators that dropout draws from on a GPU (one per device and rank) as well as the CPU's.
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated last.pt


def load_checkpoint(path: "str | Path", map_location: str = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


def train(model: torch.nn.Module, dataset: Sequence, tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
          cfg: TrainConfig, checkpoint_dir: "str | Path | None" = None, dist: DistContext = DistContext(),
          extra_state: "dict | None" = None, progress: bool = True, workers: int = 0) -> TrainResult:
    """Train `model` in place on `dataset` (items with `.volume` and `.text`).

    `tokenize(texts) -> (input_ids, attention_mask)` on the model's device. Checkpoints go to
    `checkpoint_dir/last.pt` every `cfg.checkpoint_every` steps and at the end, with `extra_state`
    (variant, size, tokenizer...) so that `ablations.infer` can rebuild the model; if one exists the run
    resumes from it. `workers` DataLoader processes read the next batches ahead (ablations.loading).
    """
    device = next(model.parameters()).device
    frozen_text = cfg.text_lr_scale == 0
    if frozen_text:
        model.text_encoder.requires_grad_(False)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.text_lr_scale)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    fp16 = getattr(model, "variant", None) is not None and model.variant.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    towers: torch.nn.Module = Towers(model, frozen_text)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        towers = DDP(towers, device_ids=[device.index] if device.type == "cuda" else None)

    result = TrainResult()
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    start, good_step = 0, None
    if ckpt_path and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, "cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = good_step = state["step"]
        result.loss_curve = state["loss_curve"]
        result.resumed_from = start

    def save(step: int) -> None:
        nonlocal good_step
        if ckpt_path is None or not dist.is_main:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                      "loss_curve": result.loss_curve, "train_config": cfg.as_dict(), **(extra_state or {})},
                     ckpt_path)
        good_step = step

    model.train()
    loss_name = model.variant.loss
    t0 = time.perf_counter()

    def indices_of(step: int) -> list[int]:
        return batch_indices(len(dataset), cfg.batch * dist.world_size, step, cfg.seed, dist.rank, dist.world_size)

    batches = loader(dataset, StepBatches(indices_of, start, cfg.steps), workers=workers)
    bar = tqdm(range(start, cfg.steps), desc="train", unit="step", disable=not (progress and dist.is_main),
               initial=start, total=cfg.steps)
    for step, samples in zip(bar, batches):
        torch.manual_seed(step_seed(cfg.seed, dist.rank, step))
        volumes = torch.stack([s.volume for s in samples]).to(device, non_blocking=True)
        ids, mask = tokenize([s.text for s in samples])
        text, image = towers(volumes, ids, mask)
        loss = contrastive_loss(loss_name, text, image, model.temperature, model.logit_bias, cfg.siglip_impl)
        reported = loss.detach().clone()
        if dist.enabled:
            import torch.distributed as tdist

            tdist.all_reduce(reported)
            reported /= dist.world_size
        value = reported.item()
        if not math.isfinite(value):
            raise Diverged(step, value, ckpt_path if good_step is not None else None, good_step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        result.loss_curve.append({"step": step, "loss": value})
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save(step + 1)
    if good_step != cfg.steps:
        save(cfg.steps)
    result.steps = cfg.steps
    result.wall_s = time.perf_counter() - t0
    result.final_loss = result.loss_curve[-1]["loss"] if result.loss_curve else float("nan")
    return result
