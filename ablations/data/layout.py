"""CT-RATE's on-disk layout: where volumes and CSVs live, and what a VolumeName means.

The tree mirrors the Hugging Face data set (`ibrahimhamamci/CT-RATE`), so the same loader reads real
and synthetic data:
  dataset/{train_fixed,valid_fixed}/<split>_<patient>/<split>_<patient>_<scan>/<name>.nii.gz
      (v2; CT-RATE's original upload has the same tree under dataset/{train,valid}/)
  dataset/metadata/{train,validation}_metadata.csv
  dataset/radiology_text_reports/{train,validation}_reports.csv
  dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ablations.data.errors import DataError

SPLITS: tuple[str, ...] = ("train", "valid")
_LONG = {"train": "train", "valid": "validation"}

METADATA_COLUMNS: tuple[str, ...] = ("VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept")
REPORT_COLUMNS: tuple[str, ...] = ("VolumeName", "Findings_EN", "Impressions_EN")

_NAME = re.compile(r"^(train|valid)_(\d+)_([a-z]+)_(\d+)$")


@dataclass(frozen=True)
class VolumeId:
    split: str
    patient: int
    scan: str
    recon: int

    @property
    def name(self) -> str:
        return f"{self.split}_{self.patient}_{self.scan}_{self.recon}"

    @classmethod
    def parse(cls, name: str) -> "VolumeId":
        stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name
        match = _NAME.match(stem)
        if not match:
            raise ValueError(f"{name!r} is not a CT-RATE volume name such as 'valid_53_a_1'")
        return cls(match[1], int(match[2]), match[3], int(match[4]))


@dataclass(frozen=True)
class Layout:
    """Paths inside one CT-RATE `dataset/` folder."""

    root: Path

    @classmethod
    def find(cls, path: "str | Path") -> "Layout":
        """Accept either the folder holding `dataset/` or the `dataset/` folder itself."""
        path = Path(path)
        if not path.exists():
            raise DataError(path, "data folder does not exist", "check --src, or generate one with "
                            "`python -m ablations.data.synthetic --out DIR`")
        if (path / "dataset").is_dir():
            path = path / "dataset"
        return cls(path)

    def is_fixed(self, split: str) -> bool:
        """Whether `split`'s volumes come from the v2 `<split>_fixed` folder, whose headers were rewritten
        to carry the right spacing, rather than the original `<split>` upload (v1), whose headers were
        reported blank or wrong. A tree with neither folder counts as v2: that is what gets written."""
        return (self.root / f"{_check(split)}_fixed").is_dir() or not (self.root / split).is_dir()

    def volume_dir(self, split: str) -> Path:
        """`<split>_fixed` when it exists, else CT-RATE's original `<split>` folder (see `is_fixed`)."""
        return self.root / (f"{split}_fixed" if self.is_fixed(split) else split)

    def metadata_csv(self, split: str) -> Path:
        return self.root / "metadata" / f"{_LONG[_check(split)]}_metadata.csv"

    def reports_csv(self, split: str) -> Path:
        return self.root / "radiology_text_reports" / f"{_LONG[_check(split)]}_reports.csv"

    def labels_csv(self, split: str) -> Path:
        return self.root / "multi_abnormality_labels" / f"{_check(split)}_predicted_labels.csv"

    def volume_path(self, name: str) -> Path:
        vid = VolumeId.parse(name)
        patient = f"{vid.split}_{vid.patient}"
        return self.volume_dir(vid.split) / patient / f"{patient}_{vid.scan}" / f"{vid.name}.nii.gz"

    def list_volumes(self, split: str) -> list[Path]:
        """Every volume file of a split, sorted by name (CT-RATE's glob `*/*/*.nii.gz`)."""
        return sorted(self.volume_dir(split).glob("*/*/*.nii.gz"), key=lambda p: p.name)


def _check(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split
