"""Read a CT-RATE `.nii.gz` into Hounsfield units, deciding whether slope/intercept still apply.

CT-RATE's metadata CSV lists RescaleSlope/RescaleIntercept for every volume, but some NIfTI files
are already in HU (the v2 `_fixed` files among them) and others carry the scaling in their header,
which nibabel applies. Applying the CSV's intercept to such a volume shifts air to about -2000 HU and
silently ruins it, so the loader looks at the data: in a plausible HU reading of a chest CT some air
sits near -1000 HU and almost nothing lies below it. `rescale="auto"` picks the plausible reading;
`"always"` applies the CSV values but refuses when the data are plainly HU already; `"never"`
trusts the file as HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ablations.data.errors import DataError

RESCALE_MODES = ("auto", "always", "never")
_AIR = (-1100.0, -900.0)
_MIN_AIR_FRACTION = 0.01


@dataclass(frozen=True)
class RawVolume:
    hu: np.ndarray                        # (D, H, W) float32
    spacing: tuple[float, float, float]   # (z, y, x) mm from the header
    how: str                              # "csv-rescaled", "header-scaled" or "already-hu"


def _plausible_hu(values: np.ndarray) -> bool:
    """Does this reading look like chest CT in HU: air near -1000 present, almost nothing below it?

    Already-HU data rescaled again puts air near -2000; raw stored values read as HU have no air
    near -1000 at all (it sits near +24). A constant fill below -1100 (outside the scanner's circular
    field of view) is ignored.
    """
    values = values.ravel()
    lo = values.min()
    fill = values == lo
    if lo < _AIR[0] and fill.mean() > 0.01:
        values = values[~fill]
    if values.size == 0:
        return False
    air = np.mean((values >= _AIR[0]) & (values <= _AIR[1]))
    return bool(air >= _MIN_AIR_FRACTION and np.mean(values < -1200.0) < 0.02)


def read_volume(path: "str | Path", slope: float | None, intercept: float | None, rescale: str = "auto") -> RawVolume:
    """Load one volume as HU in (D, H, W) order (NIfTI axes 0, 1, 2 are H, W, D, as upstream)."""
    path = Path(path)
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {rescale!r}")
    if not path.exists():
        raise DataError(path, "volume file is missing", "re-download it, or pass --skip-bad to leave it out")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj.get_unscaled(), dtype=np.float32)
        hdr_slope, hdr_inter = float(img.dataobj.slope), float(img.dataobj.inter)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # nibabel, gzip and zlib raise many types for a damaged file
        raise DataError(path, f"cannot read the NIfTI volume ({type(exc).__name__}: {exc}); it is corrupt or "
                        "truncated", "re-download it, or pass --skip-bad to leave it out") from None
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, found shape {data.shape}", "pass --skip-bad to leave it out")
    if min(zooms) <= 0 or not all(np.isfinite(zooms)):
        raise DataError(path, f"header spacing {zooms} is invalid", "fix the header (CT-RATE's *_fixed files have it)")

    header_scaled = (hdr_slope, hdr_inter) != (1.0, 0.0)
    if header_scaled:
        data *= np.float32(hdr_slope)
        data += np.float32(hdr_inter)
    sample = data[::2, ::2, ::2]
    have_csv = slope is not None and intercept is not None and np.isfinite(slope) and np.isfinite(intercept)
    looks_hu = _plausible_hu(sample)
    rescaled_ok = have_csv and _plausible_hu(sample * np.float32(slope) + np.float32(intercept))

    if rescale == "never" or (rescale == "auto" and (looks_hu or not rescaled_ok)):
        if rescale == "auto" and not looks_hu and not header_scaled:
            raise DataError(path, "neither the stored values nor the metadata CSV's RescaleSlope/RescaleIntercept "
                            "put air near -1000 HU", "check the CSV values, or pass --rescale never")
        how = "header-scaled" if header_scaled else "already-hu"
    else:
        if not have_csv:
            raise DataError(path, "--rescale always needs RescaleSlope/RescaleIntercept in the metadata CSV")
        if looks_hu and not rescaled_ok:
            raise DataError(path, "volume is already in HU (air near -1000 as stored); refusing to apply "
                            f"slope {slope} / intercept {intercept} a second time",
                            "use --rescale auto (default) or never")
        if not rescaled_ok:
            raise DataError(path, "neither the stored values nor slope/intercept put air near -1000 HU",
                            "check RescaleSlope/RescaleIntercept in the metadata CSV")
        data *= np.float32(slope)
        data += np.float32(intercept)
        how = "csv-rescaled"
    hu = np.ascontiguousarray(data.transpose(2, 0, 1))
    return RawVolume(hu, (zooms[2], zooms[0], zooms[1]), how)
