"""Test volumes written as CT-RATE stores them."""

from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, stored_dhw: np.ndarray, pixdim_zyx: tuple[float, float, float],
                slope_inter: "tuple[float, float] | None" = None) -> Path:
    """An int16 NIfTI stored (H, W, D), with the given header spacing and, if any, header scaling."""
    z, y, x = pixdim_zyx
    img = nib.Nifti1Image(stored_dhw.transpose(1, 2, 0).astype(np.int16), np.diag([y, x, z, 1.0]))
    img.header.set_data_dtype(np.int16)
    if slope_inter:
        img.header.set_slope_inter(*slope_inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
