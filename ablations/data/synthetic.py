"""Generate a synthetic CT-RATE: chest-CT phantoms with reports and labels, in CT-RATE's own layout.

    python -m ablations.data.synthetic --out DIR --n 200 --size tiny --seed 0

Patients get one or two scans, scans one or two reconstructions (as in CT-RATE, reconstructions of a
scan share its report and labels). Volumes are stored like real scans: int16 in a native spacing finer
than the model input's voxels (0.75 x 0.75 x 1.5 mm at paper size, coarser below it: see
resample.voxel_spacing), with a field of view a little wider and a length a little shorter or longer
than the input's, so the loader really resamples, crops and pads. Each volume
is stored one of three ways that real data mixes: raw values with slope/intercept in the metadata
CSV only, already-HU values (while the CSV still lists an intercept: CT-RATE v2's pitfall), or raw
values with the scaling in the NIfTI header. Everything is deterministic in --seed, and volume i does
not depend on --n or --workers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from ablations.data.airways import Branch, airway_tree
from ablations.data.anatomy import Anatomy
from ablations.data.findings import sample_findings
from ablations.data.geometry import Grid
from ablations.data.labels import ABNORMALITIES, sample_labels
from ablations.data.layout import Layout, VolumeId
from ablations.data.phantom import render_scan
from ablations.data.reports import write_report
from ablations.data.resample import TARGET_SPACING, VOLUME_SIZES, target_shape, voxel_spacing
from bench.config import parse_with_config

NOMINAL_FOV_MM = 360.0  # the paper input: 480 x 0.75 mm; smaller sizes draw the chest on coarser voxels
INTERCEPT = -1024.0


@dataclass(frozen=True)
class VolumePlan:
    vid: VolumeId
    patient_index: int
    scan_index: int
    recon: int


def plan_volumes(n: int, valid_fraction: float) -> list[VolumePlan]:
    """Which volume names exist, patient by patient, until n volumes."""
    plans: list[VolumePlan] = []
    counters = {"train": 0, "valid": 0}
    every = round(1 / valid_fraction) if valid_fraction > 0 else 0
    k = 0
    while len(plans) < n:
        split = "valid" if every and (k + 1) % every == 0 else "train"
        counters[split] += 1
        rng = np.random.default_rng([k, 7])
        n_scans = 2 if rng.random() < 0.2 else 1
        for s in range(n_scans):
            for r in range(1, (2 if rng.random() < 0.5 else 1) + 1):
                plans.append(VolumePlan(VolumeId(split, counters[split], "abcdefgh"[s], r), k, s, r))
        k += 1
    return plans[:n]


@dataclass
class Generated:
    name: str
    metadata: dict
    report: dict
    labels: dict


def patient_anatomy(seed: int, patient_index: int) -> Anatomy:
    return Anatomy.sample(np.random.default_rng([seed, patient_index]))


def generate_volume(plan: VolumePlan, size: str, seed: int, layout: Layout,
                    tree: list[Branch] | None = None) -> Generated:
    """Render and write one volume; returns its CSV rows. `tree`: the patient's airway tree, if grown."""
    depth, side, _ = target_shape(size)
    scale = NOMINAL_FOV_MM / (side * TARGET_SPACING[1])
    stretch = tuple(v / t for v, t in zip(voxel_spacing((depth, side, side))[:2], TARGET_SPACING[:2]))  # (z, xy)
    anatomy = patient_anatomy(seed, plan.patient_index)
    scan_rng = np.random.default_rng([seed, plan.patient_index, plan.scan_index, 1])
    labels = sample_labels(scan_rng)
    findings = sample_findings(labels, scan_rng)
    findings_text, impression = write_report(labels, findings, scan_rng)

    rng = np.random.default_rng([seed, plan.patient_index, plan.scan_index, plan.recon + 1])
    xy = round(float(rng.uniform(0.62, 0.9)), 3)
    z = float(rng.choice([1.0, 1.25, 1.5]) if plan.recon == 1 else rng.choice([1.5, 2.0]))
    fov_xy = side * TARGET_SPACING[1] * rng.uniform(1.0, 1.1)
    fov_z = depth * TARGET_SPACING[0] * rng.uniform(0.85, 1.1)
    grid = Grid((max(2, round(fov_z / z)), round(fov_xy / xy), round(fov_xy / xy)), (z, xy, xy), scale)
    noise = 12.0 if plan.recon == 1 else 25.0  # soft vs sharp reconstruction kernel
    hu = render_scan(anatomy, findings, grid, noise_hu=noise, noise_seed=int(rng.integers(2**31)), tree=tree).hu

    storage = str(rng.choice(["raw", "hu", "header"], p=[0.6, 0.25, 0.15]))
    stored = hu if storage == "hu" else hu - INTERCEPT
    data = np.clip(np.rint(stored), -32768, 32767).astype(np.int16).transpose(1, 2, 0)  # (H, W, D) on disk
    # The grid is drawn in the paper input's voxel units (`scale` anatomy mm each); the file records real
    # mm, the spacing at which the loader's voxel_spacing(size) fits the whole chest into the input.
    # In-plane that factor is `scale` itself; along z it is (360 / depth) / 1.5, so at tiny (12 x 40 x 40)
    # a phantom's chest reads 5/3 longer than it was drawn.
    z_mm, xy_mm = (round(v * f, 6) for v, f in zip((z, xy), stretch))
    img = nib.Nifti1Image(data, np.diag([xy_mm, xy_mm, z_mm, 1.0]))
    img.header.set_data_dtype(np.int16)
    if storage == "header":
        img.header.set_slope_inter(1.0, INTERCEPT)
    path = layout.volume_path(plan.vid.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))

    name = plan.vid.name + ".nii.gz"
    sex = "M" if rng.random() < 0.55 else "F"
    metadata = {"VolumeName": name, "Manufacturer": "SYNTHETIC", "PatientSex": sex,
                "PatientAge": f"{int(rng.integers(25, 90)):03d}Y", "Rows": grid.shape[1], "Columns": grid.shape[2],
                "NumberofSlices": grid.shape[0], "XYSpacing": f"[{xy_mm}, {xy_mm}]", "ZSpacing": z_mm,
                "RescaleIntercept": INTERCEPT, "RescaleSlope": 1.0, "RescaleType": "HU", "StorageMode": storage}
    report = {"VolumeName": name, "ClinicalInformation_EN": "Not given.",
              "Technique_EN": "Non-contrast thorax CT.", "Findings_EN": findings_text, "Impressions_EN": impression}
    label_row = {"VolumeName": name, **{k: int(v) for k, v in zip(ABNORMALITIES, labels)}}
    return Generated(name, metadata, report, label_row)


def generate_patient(plans: list[VolumePlan], size: str, seed: int, layout: Layout) -> list[Generated]:
    """Render one patient's volumes, growing their shared airway tree once: 1200 volumes come from 662
    patients, and sharing cut their rendering on 2 workers by a fifth (231 s to 186 s when capsules were
    still painted one at a time), byte for byte the same."""
    tree = airway_tree(patient_anatomy(seed, plans[0].patient_index))
    return [generate_volume(plan, size, seed, layout, tree) for plan in plans]


def generate_dataset(out: "str | Path", n: int, size: str = "tiny", seed: int = 0, valid_fraction: float = 0.1,
                     workers: int = 1, progress: bool = True) -> Layout:
    """Write n volumes and the CSVs into `out/dataset`; returns its Layout."""
    layout = Layout(Path(out) / "dataset")
    plans = plan_volumes(n, valid_fraction)
    target_shape(size)  # fail on a bad size before any work
    patients = [list(group) for _, group in itertools.groupby(plans, key=lambda plan: plan.patient_index)]
    k = len(patients)
    rows: list[Generated] = []
    with (tqdm(total=len(plans), desc=f"synthetic {size}", unit="vol", disable=not progress) as bar,
          ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool):
        mapper = map if pool is None else pool.map
        for patient_rows in mapper(generate_patient, patients, [size] * k, [seed] * k, [layout] * k):
            rows.extend(patient_rows)
            bar.update(len(patient_rows))
    for split in ("train", "valid"):
        mine = [r for r, p in zip(rows, plans) if p.vid.split == split]
        if not mine:
            continue
        for path, key in ((layout.metadata_csv(split), "metadata"), (layout.reports_csv(split), "report"),
                          (layout.labels_csv(split), "labels")):
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame([getattr(r, key) for r in mine]).to_csv(path, index=False)
    return layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ablations.data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to create; volumes go to OUT/dataset/...")
    parser.add_argument("--n", type=int, default=200, help="number of volumes (default 200)")
    parser.add_argument("--size", default="tiny", choices=VOLUME_SIZES,
                        help="model size whose crop the phantoms are made for (default tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of patients in the valid split")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    layout = generate_dataset(args.out, args.n, args.size, args.seed, args.valid_fraction, args.workers)
    print(f"wrote {args.n} volumes and their CSVs under {layout.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
