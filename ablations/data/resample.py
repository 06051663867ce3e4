"""CT-CLIP's preprocessing of one volume: resample, clip, scale, centre crop or pad.

Follows the upstream recipe (reference §1): trilinear `F.interpolate(align_corners=False)` to
1.5 mm slices and 0.75 mm pixels with new size int(old size x old spacing / new spacing), clip to
[-1000, 1000] HU and divide by 1000, then centre crop or pad with -1 to the target (D, H, W).

Upstream has one input size, 240 x 480 x 480 voxels: a 360 mm cube. A smaller model input keeps that
field of view with coarser voxels (`voxel_spacing`: 30 x 9 x 9 mm at `tiny`, 3 x 1.5 x 1.5 mm at
`small`), so a CPU-size run on real scans sees the whole chest, not a few centimetres of mediastinum.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.variant import get_size

TARGET_SPACING: tuple[float, float, float] = (1.5, 0.75, 0.75)  # (z, y, x) mm at the paper input
FIELD_OF_VIEW_MM: tuple[float, float, float] = (360.0, 360.0, 360.0)  # 240 x 1.5 mm, 480 x 0.75 mm
HU_MIN, HU_MAX = -1000.0, 1000.0
PAD_VALUE = -1.0
# The named sizes the data commands offer: one per distinct volume shape (paper16 reads paper's volumes).
VOLUME_SIZES: tuple[str, ...] = ("tiny", "small", "paper")


def target_shape(size: str) -> tuple[int, int, int]:
    """(D, H, W) of the model's input at a named size: (240, 480, 480) at `paper`."""
    s = get_size(size)
    return (s.depth, s.image_size, s.image_size)


def voxel_spacing(target: tuple[int, int, int]) -> tuple[float, float, float]:
    """(z, y, x) mm that fit upstream's field of view into a (D, H, W) input: (1.5, 0.75, 0.75) at paper."""
    return tuple(fov / n for fov, n in zip(FIELD_OF_VIEW_MM, target))  # type: ignore[return-value]


def resampled_shape(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                    new_spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(n * sp / t) for n, sp, t in zip(shape, spacing, new_spacing))  # type: ignore[return-value]


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
                  target: tuple[int, int, int], new_spacing: "tuple[float, float, float] | None" = None
                  ) -> torch.Tensor:
    """(D, H, W) HU volume with (z, y, x) spacing in mm -> (1, D, H, W) float32 in [-1, 1], resampled to
    `new_spacing` (default: `voxel_spacing(target)`, upstream's field of view)."""
    x = torch.as_tensor(hu, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(x.shape)}")
    new = resampled_shape(tuple(x.shape), spacing, new_spacing or voxel_spacing(target))  # type: ignore[arg-type]
    if min(new) < 1:
        raise ValueError(f"volume of shape {tuple(x.shape)} at spacing {spacing} resamples to nothing ({new})")
    if new != tuple(x.shape):
        x = F.interpolate(x[None, None], size=new, mode="trilinear", align_corners=False)[0, 0]
    x = x.clamp_(HU_MIN, HU_MAX).div_(1000.0)
    return crop_or_pad(x, target).contiguous().unsqueeze(0)
