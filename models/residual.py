"""The residual axis: the dtype of the visual transformer's residual stream under autocast.

- `fp32`: upstream's. The stream enters each stage as the patch embedding's (or the spatial stage's)
  norm writes it, in fp32 under CUDA's autocast, and every residual add promotes the bf16 branch
  output back to fp32. Every pass over the stream (the adds, the norms, the PEG, K/V's cast to bf16,
  and their gradients in backward) moves 4 bytes an element.
- `autocast`: the stream in autocast's dtype (bf16 or fp16) from each stage's entry on, as Megatron-LM
  keeps it unless told `--fp32-residual-connection`. The adds then round each sum to 16 bits, and the
  stream's gradient is 16-bit too: a change of numerics, not only of speed, which is why it is a switch
  whose accuracy the ablations measure. Norms still compute in fp32 inside (CUDA autocast's layer_norm
  and rms_norm, the Triton kernels' registers) and matmuls still accumulate in fp32. With
  `norm=add_rmsnorm_triton` the K/V input is the stream itself instead of a bf16 copy of it.
  Needs autocast: with precision fp32 there is no 16-bit dtype to keep it in.

The text tower is transformers' BERT and is left as it is; the VQ casts its input to fp32 either way.
Each entry maps a stage's input stream to the dtype the stage keeps it in.
"""

from __future__ import annotations

from typing import Callable

import torch

from models.registry import Registry

RESIDUALS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("residual")


def _needs_autocast(variant: object, device: torch.device) -> "str | None":
    if getattr(variant, "precision", "fp32") == "fp32":
        return "the stream is kept in autocast's dtype, and precision=fp32 runs without autocast"
    return None


@RESIDUALS.register("fp32")
def as_given(stream: torch.Tensor) -> torch.Tensor:
    """Upstream's: the stream stays in the dtype it arrives in (fp32 under autocast)."""
    return stream


@RESIDUALS.register("autocast", supports=_needs_autocast)
def in_autocast_dtype(stream: torch.Tensor) -> torch.Tensor:
    """The stream cast once, at the stage's entry, to autocast's dtype when autocast is on for its device."""
    device = stream.device.type
    if not torch.is_autocast_enabled(device):
        return stream
    return stream.to(torch.get_autocast_dtype(device))
