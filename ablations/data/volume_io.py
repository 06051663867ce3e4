"""Read a CT-RATE `.nii.gz` into Hounsfield units, deciding whether slope/intercept still apply.

CT-RATE's metadata CSV lists RescaleSlope/RescaleIntercept for every volume, but some NIfTI files
are already in HU (the v2 `_fixed` files among them) and others carry the scaling in their header,
which nibabel applies. Applying the CSV's intercept to such a volume shifts air to about -2000 HU and
silently ruins it, so the loader looks at the data: in a plausible HU reading of a chest CT some air
sits near -1000 HU and almost nothing lies below it. `rescale="auto"` picks the plausible reading
(the header-scaled one, else the CSV-rescaled one, else the stored values with a stale header scaling
ignored) and refuses when there is none; `"always"` applies the CSV values but refuses when the data
are plainly HU already; `"never"` trusts the file as HU.

The spacing comes from the header, cross-checked against the CSV's XYSpacing/ZSpacing when the caller
passes them, or from the CSV for CT-RATE's original (v1) files, whose headers were reported blank or wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ablations.data.errors import DataError

RESCALE_MODES = ("auto", "always", "never")
SPACING_SOURCES = ("header", "csv")
_AIR = (-1100.0, -900.0)
_MIN_AIR_FRACTION = 0.01
_SPACING_TOLERANCE = 0.01  # relative: header and CSV spacings further apart than 1 % on an axis are reported



@dataclass(frozen=True)
class RawVolume:
    hu: np.ndarray                        # (D, H, W) float32
    spacing: tuple[float, float, float]   # (z, y, x) mm
    how: str                              # "csv-rescaled", "header-scaled" or "already-hu"
    spacing_source: str                   # where `spacing` came from: "header" (NIfTI pixdim) or "csv"
    notes: tuple[str, ...] = ()           # what the reader should warn about: a guess made, a disagreement


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


def _valid_spacing(spacing: "tuple[float, ...] | None") -> bool:
    return spacing is not None and all(np.isfinite(spacing)) and min(spacing) > 0


def _mm(spacing: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in spacing)  # float32 pixdim: 0.800000011920929 reads as 0.8


def _choose_spacing(path: Path, header: tuple[float, float, float], csv: "tuple[float, float, float] | None",
                    source: str, notes: list[str]) -> tuple[float, float, float]:
    """The (z, y, x) spacing to resample with: the header's, or the metadata CSV's when `source` is "csv"."""
    if source == "csv":
        # CT-RATE's original (v1) files: their header spacing was reported blank or wrong, and a blank
        # pixdim of 1.0 would pass any sanity check, so upstream CT-CLIP's loader takes the CSV's.
        if csv is None or not _valid_spacing(csv):
            found = "has none for it" if csv is None else f"gives {csv}"
            raise DataError(path, "this volume from CT-RATE's original upload takes its spacing from the metadata "
                            f"CSV (XYSpacing, ZSpacing), which {found}",
                            "fix its row in the metadata CSV, use the *_fixed volumes, or pass --skip-bad")
        return csv
    if not _valid_spacing(header):
        raise DataError(path, f"header spacing {header} is invalid", "fix the header (CT-RATE's *_fixed files have it)")
    if csv is not None and _valid_spacing(csv) and any(abs(h - c) > _SPACING_TOLERANCE * c
                                                       for h, c in zip(header, csv)):
        # The *_fixed headers were rewritten to fix the spacing, so they win; a disagreement still
        # changes the resample scale against upstream (which reads the CSV), so it must not be silent.
        notes.append(f"{path}: header spacing (z, y, x) {_mm(header)} mm differs from the metadata CSV's "
                     f"{_mm(csv)} mm by more than 1 %; using the header's")
    return header


def read_volume(path: "str | Path", slope: float | None, intercept: float | None, rescale: str = "auto",
                csv_spacing: "tuple[float, float, float] | None" = None, spacing_source: str = "header"
                ) -> RawVolume:
    """Load one volume as HU in (D, H, W) order (NIfTI axes 0, 1, 2 are H, W, D, as upstream).

    `csv_spacing`: the metadata CSV's (ZSpacing, XYSpacing, XYSpacing) in mm, if known. With
    `spacing_source="header"` it only cross-checks the header (a warning when they differ by more
    than 1 %); with `"csv"` it is the spacing used (CT-RATE's original v1 files)."""
    path = Path(path)
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {rescale!r}")
    if spacing_source not in SPACING_SOURCES:
        raise ValueError(f"spacing_source must be one of {SPACING_SOURCES}, got {spacing_source!r}")
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
    notes: list[str] = []
    spacing = _choose_spacing(path, (zooms[2], zooms[0], zooms[1]), csv_spacing, spacing_source, notes)

    # Judge each candidate reading on a sample, then scale the whole volume once, in place.
    header_scaled = (hdr_slope, hdr_inter) != (1.0, 0.0)
    stored = data[::2, ::2, ::2]
    header = stored * np.float32(hdr_slope) + np.float32(hdr_inter) if header_scaled else stored
    have_csv = slope is not None and intercept is not None and np.isfinite(slope) and np.isfinite(intercept)
    looks_hu = _plausible_hu(header)
    rescaled_ok = have_csv and _plausible_hu(header * np.float32(slope) + np.float32(intercept))

    use_header, use_csv = header_scaled, False
    if rescale == "never" or (rescale == "auto" and looks_hu):
        how = "header-scaled" if header_scaled else "already-hu"
    elif rescale == "auto" and not rescaled_ok:
        # A header slope/intercept can be stale on a file already in HU (the v2 double-scaling pitfall,
        # CT-CLIP#50, entering through the header): air would sit near -2000 HU. Only when the stored
        # values themselves are plausible HU is the header ignored; otherwise nothing is trusted.
        if not (header_scaled and _plausible_hu(stored)):
            raise DataError(path, "neither the stored values nor the metadata CSV's RescaleSlope/RescaleIntercept "
                            "put air near -1000 HU", "check the CSV values, or pass --rescale never")
        notes.append(f"{path}: ignoring the header's slope {hdr_slope:g} / intercept {hdr_inter:g}, which move "
                     "air away from -1000 HU; the stored values are already HU")
        use_header, how = False, "already-hu"
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
        use_csv, how = True, "csv-rescaled"
    for apply, a, b in ((use_header, hdr_slope, hdr_inter), (use_csv, slope, intercept)):
        if apply:
            data *= np.float32(a)
            data += np.float32(b)
    hu = np.ascontiguousarray(data.transpose(2, 0, 1))
    return RawVolume(hu, spacing, how, spacing_source, tuple(notes))
