"""The CT-RATE data set read straight from its folder tree: one preprocessed volume, report and labels per item.

    python -m ablations.data.ctrate --src DIR --split valid --size tiny [--skip-bad]

checks a tree by reading every volume and prints what it found. In code:

    ds = CTRateDataset("DIR", "train", size="paper")
    sample = ds[0]   # Sample(volume (1, 240, 480, 480) in [-1, 1], text, labels (18,), name)
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ablations.data.errors import DataError
from ablations.data.labels import ABNORMALITIES
from ablations.data.layout import METADATA_COLUMNS, REPORT_COLUMNS, SPLITS, Layout
from ablations.data.resample import VOLUME_SIZES, preprocess_hu, target_shape
from ablations.data.volume_io import RESCALE_MODES, RawVolume, read_volume
from bench.config import parse_with_config

log = logging.getLogger(__name__)


@dataclass
class Sample:
    volume: torch.Tensor   # (1, D, H, W) float32 in [-1, 1]
    text: str
    labels: torch.Tensor   # (18,) float32
    name: str              # VolumeName without .nii.gz


def clean_text(findings: object, impressions: object) -> str:
    """Upstream's report text: findings + ' ' + impressions, "Not given." as empty, quotes and brackets dropped."""
    parts = []
    for part in (findings, impressions):
        text = "" if part is None or (isinstance(part, float) and part != part) else str(part)
        parts.append("" if text.strip() == "Not given." else text)
    text = f"{parts[0]} {parts[1]}"
    for ch in "\"'()":
        text = text.replace(ch, "")
    return text.strip()


def read_csv(path: Path, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """A CT-RATE CSV indexed by VolumeName, with a clear error if it or a needed column is missing.

    A VolumeName listed twice keeps its last row, as upstream's loader (a dict filled row by row) does."""
    if not path.exists():
        raise DataError(path, "CSV file is missing", "download it with the volumes, or regenerate the data set")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise DataError(path, f"cannot parse CSV ({exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}",
                        "use CT-RATE's original CSV for this split")
    frame["VolumeName"] = frame["VolumeName"].astype(str).str.replace(".nii.gz", "", regex=False)
    distinct = frame.drop_duplicates()  # identical repeated rows are harmless; differing ones change the data
    conflicting = distinct["VolumeName"][distinct["VolumeName"].duplicated()].nunique()
    if conflicting:
        log.warning("%s: %d VolumeName(s) have rows that disagree; using the last row of each, as upstream does",
                    path, conflicting)
    return frame.drop_duplicates("VolumeName", keep="last").set_index("VolumeName")


def _spacing_xy(value: object) -> float:
    # CT-RATE stores "[0.75, 0.75]"; upstream keeps the first element.
    parsed = ast.literal_eval(value) if isinstance(value, str) else value
    return float(parsed[0] if isinstance(parsed, (list, tuple)) else parsed)


def csv_spacing(meta: "pd.Series | None") -> "tuple[float, float, float] | None":
    """(z, y, x) mm from a metadata row, as upstream reads it (ZSpacing, XYSpacing's first value twice);
    None when there is no row, no spacing column, or a value that does not parse."""
    if meta is None:
        return None
    try:
        xy = _spacing_xy(meta["XYSpacing"])
        return (float(meta["ZSpacing"]), xy, xy)
    except (KeyError, ValueError, TypeError, SyntaxError, IndexError):
        return None


@dataclass
class CTRateDataset(torch.utils.data.Dataset):
    """Map-style data set over one split of a CT-RATE tree (real or synthetic)."""

    root: "str | Path"
    split: str = "train"
    size: str = "paper"
    rescale: str = "auto"
    skip_bad: bool = False
    names: list[str] = field(init=False, default_factory=list)
    skipped: list[tuple[str, str]] = field(init=False, default_factory=list)
    noted: set[str] = field(init=False, default_factory=set)  # volumes whose reading notes were logged

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid splits: {', '.join(SPLITS)}")
        if self.rescale not in RESCALE_MODES:
            raise ValueError(f"rescale must be one of {', '.join(RESCALE_MODES)}")
        self.layout = Layout.find(self.root)
        self.target = target_shape(self.size)
        self.labels = read_csv(self.layout.labels_csv(self.split), ["VolumeName", *ABNORMALITIES])
        self.reports = read_csv(self.layout.reports_csv(self.split), REPORT_COLUMNS)
        self.metadata = read_csv(self.layout.metadata_csv(self.split), METADATA_COLUMNS)
        # v1 headers were reported blank or wrong: take those volumes' spacing from the CSV, as upstream.
        self.spacing_source = "header" if self.layout.is_fixed(self.split) else "csv"
        files = self.layout.list_volumes(self.split)
        if not files:
            raise DataError(self.layout.volume_dir(self.split), "no .nii.gz volumes found (expected "
                            f"{self.split}_fixed/<patient>/<scan>/<name>.nii.gz, or {self.split}/<patient>/<scan>/"
                            "<name>.nii.gz as in CT-RATE's original upload)", "check --src and --split")
        for path in files:
            name = path.name[: -len(".nii.gz")]
            for table, csv in ((self.labels, self.layout.labels_csv), (self.reports, self.layout.reports_csv)):
                if name not in table.index:
                    self._bad(name, DataError(csv(self.split), f"no row for volume {name}",
                                              "add it, or pass --skip-bad to leave the volume out"))
                    break
            else:
                self.names.append(name)

    def _bad(self, name: str, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        log.warning("skipping %s: %s", name, error)
        self.skipped.append((name, str(error)))

    def __len__(self) -> int:
        return len(self.names)

    def text(self, name: str) -> str:
        row = self.reports.loc[name]
        return clean_text(row["Findings_EN"], row["Impressions_EN"])

    def label_row(self, name: str) -> torch.Tensor:
        return torch.tensor(self.labels.loc[name, list(ABNORMALITIES)].to_numpy(dtype="float32"))

    def raw(self, name: str) -> RawVolume:
        """One volume in HU with its spacing, before resampling; raises DataError on a bad file."""
        meta = self.metadata.loc[name] if name in self.metadata.index else None
        slope = float(meta["RescaleSlope"]) if meta is not None else None
        intercept = float(meta["RescaleIntercept"]) if meta is not None else None
        raw = read_volume(self.layout.volume_path(name), slope, intercept, self.rescale, csv_spacing(meta),
                          self.spacing_source)
        if name not in self.noted:  # every epoch reads the volume again; say it once
            self.noted.add(name)
            for note in raw.notes:
                log.warning("%s", note)
        return raw

    def load(self, name: str) -> Sample:
        """Read and preprocess one volume by name; raises DataError on a bad file."""
        raw = self.raw(name)
        volume = preprocess_hu(raw.hu, raw.spacing, self.target)
        return Sample(volume, self.text(name), self.label_row(name), name)

    def __getitem__(self, index: int) -> "Sample | None":
        name = self.names[index]
        try:
            return self.load(name)
        except DataError as error:
            self._bad(name, error)  # raises unless skip_bad; a DataLoader then drops the None in collate
            return None

    def __iter__(self):
        for i in range(len(self)):
            sample = self[i]
            if sample is not None:
                yield sample


@dataclass
class Batch:
    volumes: torch.Tensor  # (B, 1, D, H, W)
    texts: list[str]
    labels: torch.Tensor   # (B, 18)
    names: list[str]


def collate(samples: list["Sample | None"]) -> Batch:
    """Stack samples, dropping the Nones that skipped (bad) volumes leave behind."""
    kept = [s for s in samples if s is not None]
    return Batch(torch.stack([s.volume for s in kept]), [s.text for s in kept], torch.stack([s.labels for s in kept]),
                 [s.name for s in kept])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.data.ctrate",
                                     description="Check a CT-RATE tree: read and preprocess every volume of a split.")
    parser.add_argument("--src", required=True, type=Path, help="folder holding dataset/ (or the dataset/ folder)")
    parser.add_argument("--split", default="valid", choices=SPLITS)
    parser.add_argument("--size", default="paper", choices=VOLUME_SIZES)
    parser.add_argument("--rescale", default="auto", choices=RESCALE_MODES,
                        help="apply the CSV slope/intercept: auto (detect HU), always, never")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip bad volumes instead of stopping")
    args = parse_with_config(parser, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        ds = CTRateDataset(args.src, args.split, args.size, args.rescale, args.skip_bad)
        good = sum(1 for _ in tqdm(ds, total=len(ds), desc=f"check {args.split}", unit="vol"))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{good} volumes read from {ds.layout.volume_dir(args.split)}; {len(ds.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
