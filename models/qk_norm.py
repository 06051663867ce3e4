"""The qk_norm axis: how attention L2-normalises, scales and (with RoPE) rotates q and k.

- `eager`: CT-CLIP's own PyTorch expression, `F.normalize(t, dim=-1) * scale`, then `apply_rotary`:
  about eight elementwise passes over q and k each way, and the product promotes to fp32 (the scale
  is an fp32 parameter), so under autocast q and k are written in fp32 and cast back by the kernel.
- `triton`: the same math in one Triton kernel per direction (kernels/qknorm_rope.py) that reads q or k
  once and writes it once, in its own dtype.

Both take (t, scale, rope) with t (B, H, N, D), scale (D,) and rope None or (cos, sin) of (N, D).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.norms import _kernels_reason
from models.position import apply_rotary
from models.registry import Registry

Rope = Optional[tuple[torch.Tensor, torch.Tensor]]
QK_NORMS: Registry[Callable[..., torch.Tensor]] = Registry("qk_norm")


@QK_NORMS.register("eager")
def eager(t: torch.Tensor, scale: torch.Tensor, rope: Rope = None) -> torch.Tensor:
    """CT-CLIP's PyTorch expression: F.normalize, times the learnable per-dimension scale, then RoPE."""
    t = F.normalize(t, dim=-1) * scale
    return apply_rotary(t, rope) if rope is not None else t


@QK_NORMS.register("triton", supports=_kernels_reason)
def triton(t: torch.Tensor, scale: torch.Tensor, rope: Rope = None) -> torch.Tensor:
    """The fused Triton kernel (kernels/qknorm_rope.py): one read and one write of q or k."""
    from kernels.qknorm_rope import triton_qk_norm_rope

    return triton_qk_norm_rope(t, scale, rope)
