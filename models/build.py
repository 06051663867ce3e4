"""`build(variant, size)` and `supports(variant, device)`: the only entry points other packages need."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from torch.utils.checkpoint import noop_context_fn

from models.attention_backends import ATTENTION
from models.ctclip import CTCLIP
from models.losses import LOSSES
from models.mlp import ACTIVATIONS
from models.norms import NORMS
from models.optimizers import OPTIMIZERS
from models.patch_embed import PATCH_EMBEDS
from models.peg import PEG_IMPLS
from models.position import POSITIONS
from models.projection import PROJECTIONS
from models.qk_norm import QK_NORMS
from models.registry import Registry
from models.residual import RESIDUALS
from models.text import TEXT_TOWERS
from models.transformer import checkpoint_options
from models.variant import Size, Variant, get_size
from models.vq import VQ_IMPLS

# Axes whose every value is a registered backend with its own `supports`.
AXIS_REGISTRIES: dict[str, Registry] = {
    "attention": ATTENTION, "position": POSITIONS, "norm": NORMS, "mlp": ACTIVATIONS,
    "loss": LOSSES, "text": TEXT_TOWERS, "vq_impl": VQ_IMPLS, "optimizer": OPTIMIZERS, "qk_norm": QK_NORMS,
    "peg_impl": PEG_IMPLS, "patch_embed": PATCH_EMBEDS, "projection": PROJECTIONS,
    "residual": RESIDUALS,
}


def _compile_reason(device: torch.device) -> "str | None":
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return "torch.compile (inductor) on CPU needs a C++ compiler (g++), and none is on PATH"
    return None


def _precision_reason(variant: Variant, device: torch.device) -> "str | None":
    if device.type == "cuda" and variant.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    return None


def supports(variant: Variant, device: "torch.device | str" = "cpu") -> "str | None":
    """None if `variant` can train (forward, backward, optimizer step) on `device`, else the reason."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "device is cuda but no CUDA GPU is available"
    for axis, registry in AXIS_REGISTRIES.items():
        reason = registry.supports(getattr(variant, axis), variant, device)
        if reason:
            return f"{axis}={getattr(variant, axis)}: {reason}"
    if variant.compile and (reason := _compile_reason(device)):
        return f"compile=on: {reason}"
    if reason := _precision_reason(variant, device):
        return f"precision={variant.precision}: {reason}"
    return None


def build(variant: Variant, size: "Size | str", device: "torch.device | str" = "cpu",
          text_weights: "str | Path | None" = None) -> CTCLIP:
    """A CT-CLIP with one implementation per axis of `variant`, fp32 weights on `device`.

    Raises ValueError with the reason when `supports(variant, device)` says it cannot run, rather than
    building something that would silently fall back to another kernel.
    """
    size = get_size(size)
    reason = supports(variant, device)
    if reason:
        raise ValueError(f"variant {variant.key} cannot run on {device}: {reason}")
    model = CTCLIP(variant, size, text_weights=text_weights)
    device = torch.device(device)
    # Skip the move when the weights already live there: built inside a FakeTensorMode (bench.estimate)
    # the parameters are fake CPU tensors, and Module.to cannot swap those in place.
    if any(p.device != device for p in model.parameters()):
        model = model.to(device)
    if variant.checkpointing:
        enable_text_checkpointing(model.text_encoder)
    if variant.compile:
        # Compile the two towers in place (state-dict keys unchanged) so the stage methods
        # encode_image / encode_text, which call the towers, run compiled.
        model.visual_encoder.compile()
        model.text_encoder.compile()
    return model


def make_current(device: "torch.device | str") -> None:
    """Make an indexed CUDA device the current one (a no-op for CPU and for a bare "cuda").

    Triton launches its kernels on the current device's stream, whatever device their tensors are on
    (torch.library custom ops add no device guard), and CUDA events record on that stream too: a model
    on cuda:1 with cuda:0 current would run its kernels against another GPU's memory.
    """
    device = torch.device(device)
    # set_device raises for a device with no index ("cuda"), which means the current one anyway.
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def enable_text_checkpointing(text: torch.nn.Module, context_fn: Callable = noop_context_fn) -> None:
    """Non-reentrant checkpointing of every layer of a transformers text tower, with torch.utils.checkpoint's
    `context_fn` (bench.recompute passes one that counts the recomputation; the default is the no-op)."""
    kwargs = checkpoint_options(context_fn)
    if hasattr(text, "activation_checkpointing_enable"):  # transformers >= 5 renamed the method
        text.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        text.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def example_batch(size: "Size | str", batch: "int | None" = None, device: "torch.device | str" = "cpu",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic synthetic inputs: volumes in [-1, 1] (CT-CLIP's normalised HU) and padded token ids.

    Reports have random lengths between a quarter of and the full `text_max_len`, framed by [CLS] (101)
    and [SEP] (102) and padded with 0, as the BERT uncased vocabulary lays them out.
    """
    size = get_size(size)
    batch = batch or size.batch
    gen = torch.Generator().manual_seed(seed)
    volumes = torch.rand((batch, *size.volume_shape), generator=gen) * 2 - 1
    max_len = size.text_max_len
    lengths = torch.randint(max(3, max_len // 4), max_len + 1, (batch,), generator=gen)
    input_ids = torch.zeros(batch, max_len, dtype=torch.long)
    attention_mask = torch.zeros(batch, max_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        words = torch.randint(1000, size.text_vocab_size, (length - 2,), generator=gen)
        input_ids[row, :length] = torch.cat([torch.tensor([101]), words, torch.tensor([102])])
        attention_mask[row, :length] = 1
    return volumes.to(device), input_ids.to(device), attention_mask.to(device)
