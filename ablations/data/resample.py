"""CT-CLIP's preprocessing of one volume: resample, clip, scale, centre crop or pad.

Follows the upstream recipe (reference §1): trilinear `F.interpolate(align_corners=False)` to
1.5 mm slices and 0.75 mm pixels with new size int(old size x old spacing / new spacing), clip to
[-1000, 1000] HU and divide by 1000, then centre crop or pad with -1 to the target (D, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.variant import get_size

TARGET_SPACING: tuple[float, float, float] = (1.5, 0.75, 0.75)  # (z, y, x) mm
HU_MIN, HU_MAX = -1000.0, 1000.0
PAD_VALUE = -1.0
# The named sizes the data commands offer: one per distinct volume shape (paper16 reads paper's volumes).
VOLUME_SIZES: tuple[str, ...] = ("tiny", "small", "paper")


def target_shape(size: str) -> tuple[int, int, int]:
    """(D, H, W) of the model's input at a named size: (240, 480, 480) at `paper`."""
    s = get_size(size)
    return (s.depth, s.image_size, s.image_size)


def resampled_shape(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(n * sp / t) for n, sp, t in zip(shape, spacing, TARGET_SPACING))  # type: ignore[return-value]


def crop_or_pad(volume: torch.Tensor, target: tuple[int, int, int], value: float = PAD_VALUE) -> torch.Tensor:
    """Centre-crop or pad a (D, H, W) tensor to `target`, upstream's split (extra voxel after)."""
    for axis, want in enumerate(target):
        have = volume.shape[axis]
        if have > want:
            start = (have - want) // 2
            volume = volume.narrow(axis, start, want)
        elif have < want:
            before = (want - have) // 2
            pad = [0, 0] * 3
            # F.pad lists the last axis first.
            pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = before, want - have - before
            volume = F.pad(volume, pad, value=value)
    return volume


def preprocess_hu(hu: "np.ndarray | torch.Tensor", spacing: tuple[float, float, float],
                  target: tuple[int, int, int]) -> torch.Tensor:
    """(D, H, W) HU volume with (z, y, x) spacing in mm -> (1, D, H, W) float32 in [-1, 1]."""
    x = torch.as_tensor(hu, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(x.shape)}")
    new = resampled_shape(tuple(x.shape), spacing)  # type: ignore[arg-type]
    if min(new) < 1:
        raise ValueError(f"volume of shape {tuple(x.shape)} at spacing {spacing} resamples to nothing ({new})")
    if new != tuple(x.shape):
        x = F.interpolate(x[None, None], size=new, mode="trilinear", align_corners=False)[0, 0]
    x = x.clamp_(HU_MIN, HU_MAX).div_(1000.0)
    return crop_or_pad(x, target).contiguous().unsqueeze(0)
