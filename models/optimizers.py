"""The optimizer axis: how AdamW applies the update, the training step's last stage.

- `adamw`: torch.optim.AdamW on its default multi-tensor (foreach) path, as upstream trains CT-CLIP.
  Each elementwise operation of the update is its own pass over all parameters (mul, lerp, addcmul,
  sqrt, div, addcdiv...), so the parameters, gradients and moments are read and written several times.
- `adamw_fused`: the same update with `fused=True`: one kernel per parameter group and dtype that reads
  each parameter, gradient and moment once and writes each once (about 2.6x less memory traffic;
  `bench.roofline` counts it). Numerically the same update up to fp32 rounding.

`make_optimizer(variant, params, **options)` builds either with any AdamW options (lr, betas, eps,
weight decay, parameter groups), so bench.step and ablations.train share it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from models.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


def _fused_reason(variant: object, device: torch.device) -> "str | None":
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - every torch this project supports has it
        return None
    devices = _get_fused_kernels_supported_devices()
    if device.type not in devices:
        return f"torch's fused AdamW runs on {', '.join(devices)}, not {device.type}"
    return None


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    """torch.optim.AdamW, default (foreach) implementation: upstream's optimizer."""
    return torch.optim.AdamW(params, **options)


@OPTIMIZERS.register("adamw_fused", supports=_fused_reason)
def adamw_fused(params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    """torch.optim.AdamW(fused=True): the whole update in one kernel per parameter group and dtype."""
    return torch.optim.AdamW(params, fused=True, **options)


def make_optimizer(variant: Any, params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
    """The variant's optimizer over `params` (tensors or parameter groups) with AdamW `options`."""
    return OPTIMIZERS.get(getattr(variant, "optimizer", "adamw")).impl(params, **options)
