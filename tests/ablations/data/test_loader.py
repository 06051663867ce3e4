"""The CT-RATE loader: shapes, range and spacing; HU detection; every bad-input message."""

import ast
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ablations.data import ctrate
from ablations.data.ctrate import CTRateDataset, clean_text, collate
from ablations.data.errors import DataError
from ablations.data.layout import Layout
from ablations.data.resample import TARGET_SPACING, VOLUME_SIZES, preprocess_hu, target_shape, voxel_spacing
from ablations.data.volume_io import read_volume
from models.variant import SIZES
from tests.ablations.data.nifti import write_nifti


def test_reads_generated_tree(tiny_tree):
    ds = CTRateDataset(tiny_tree, "train", size="tiny")
    assert len(ds) >= 2
    batch = collate([ds[0], ds[1]])
    assert batch.volumes.shape == (2, 1, 12, 40, 40) and batch.volumes.dtype == torch.float32
    assert batch.volumes.min() >= -1 and batch.volumes.max() <= 1
    # Lungs (about -0.85) and soft tissue (about 0.04) are both present: HU was converted correctly.
    v = batch.volumes[0]
    assert ((v > -0.95) & (v < -0.7)).float().mean() > 0.05 and ((v > -0.05) & (v < 0.1)).float().mean() > 0.05
    meta = pd.read_csv(Layout.find(tiny_tree).metadata_csv("train")).set_index("VolumeName")
    labels = pd.read_csv(Layout.find(tiny_tree).labels_csv("train")).set_index("VolumeName")
    assert batch.labels[0].tolist() == labels.loc[batch.names[0] + ".nii.gz"].tolist()
    assert set(meta["StorageMode"]) >= {"raw"}


def test_volume_sizes_name_each_model_input_shape_once():
    # The data commands offer VOLUME_SIZES; a model size with a new input shape must be offered too.
    shapes = [target_shape(name) for name in VOLUME_SIZES]
    assert len(set(shapes)) == len(shapes)
    assert set(shapes) == {target_shape(name) for name in SIZES}


def test_spacing_and_axis_order_from_markers(tmp_path):
    # Bright planes every 15 mm along each axis at a native spacing of (2.5, 0.5, 0.6) mm: after
    # resampling to (1.5, 0.75, 0.75) mm they must repeat every 10, 20 and 20 voxels.
    shape, spacing = (36, 150, 125), (2.5, 0.5, 0.6)
    hu = np.full(shape, -1000.0, np.float32)
    for axis, period in ((0, 15.0), (1, 15.0), (2, 15.0)):
        idx = np.nonzero(np.mod(np.arange(shape[axis]) * spacing[axis], period) < spacing[axis])[0]
        sl = [slice(None)] * 3
        sl[axis] = idx
        hu[tuple(sl)] = 1000.0
    write_nifti(tmp_path / "m.nii.gz", hu, spacing)
    raw = read_volume(tmp_path / "m.nii.gz", None, None)
    assert raw.spacing == pytest.approx(spacing) and raw.hu.shape == shape
    out = preprocess_hu(raw.hu, raw.spacing, (70, 100, 100), new_spacing=TARGET_SPACING)[0]
    assert out.shape == (70, 100, 100)
    for axis, expected in ((0, 10), (1, 20), (2, 20)):
        profile = out.mean(dim=tuple(a for a in range(3) if a != axis)).numpy()
        inside = profile[5:65] if axis == 0 else profile
        peaks = np.nonzero((inside[1:-1] > inside[:-2]) & (inside[1:-1] >= inside[2:]) & (inside[1:-1] > -0.5))[0]
        assert np.median(np.diff(peaks)) == pytest.approx(expected, abs=1), axis
    assert (out[:5] == -1).all() and (out[-5:] == -1).all()  # 90 mm of data centred in 105 mm, padded with -1


def test_every_size_keeps_upstreams_360_mm_field_of_view():
    assert voxel_spacing(target_shape("paper")) == TARGET_SPACING  # exactly upstream's 1.5 x 0.75 x 0.75 mm
    for name in VOLUME_SIZES:
        shape = target_shape(name)
        assert [n * mm for n, mm in zip(shape, voxel_spacing(shape))] == pytest.approx([360.0] * 3)


def test_a_real_size_chest_fits_whole_into_the_tiny_input(tmp_path):
    # A 320 x 240 mm body (elliptic cylinder, soft tissue in air) on a 511 x 509 grid at 0.7 mm, 301
    # slices of 1 mm: at tiny's 9 mm pixels the body spans 320 / 9 = 35.6 of the 40 columns, with air on
    # both sides (a crop at upstream's 0.75 mm would be all body).
    depth, rows, cols, pixel = 301, 509, 511, 0.7
    y, x = ((np.arange(n) + 0.5 - n / 2) * pixel for n in (rows, cols))
    body = (x[None, :] / 160.0) ** 2 + (y[:, None] / 120.0) ** 2 <= 1.0
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)[None].repeat(depth, axis=0)
    write_nifti(tmp_path / "chest.nii.gz", hu, (1.0, pixel, pixel))
    raw = read_volume(tmp_path / "chest.nii.gz", None, None)
    out = preprocess_hu(raw.hu, raw.spacing, target_shape("tiny"))[0]
    assert out.shape == target_shape("tiny")
    middle = out[out.shape[0] // 2, out.shape[1] // 2]
    assert 34 <= int((middle > -0.5).sum()) <= 37
    assert middle[0] < -0.9 and middle[-1] < -0.9
    column = out[out.shape[0] // 2, :, out.shape[2] // 2]  # 240 mm / 9 mm = 26.7 rows of body
    assert 25 <= int((column > -0.5).sum()) <= 28


def test_phantom_files_record_the_real_size_spacing(tiny_tree):
    # A tiny phantom is a whole chest on coarse voxels: its header and CSV spacing times its voxel count
    # cover about the input's 360 mm (generated 1.0-1.1x in-plane and 0.85-1.1x along z).
    layout = Layout.find(tiny_tree)
    meta = pd.read_csv(layout.metadata_csv("train")).set_index("VolumeName")
    for path in layout.list_volumes("train"):
        header = nib.load(str(path)).header
        (rows, cols, slices), (sy, sx, sz) = header.get_data_shape(), header.get_zooms()
        assert 1.0 * 360 <= rows * sy <= 1.1 * 360 + sy and 1.0 * 360 <= cols * sx <= 1.1 * 360 + sx
        assert 0.85 * 360 - sz <= slices * sz <= 1.1 * 360 + sz
        row = meta.loc[path.name]
        assert float(row["ZSpacing"]) == pytest.approx(sz)
        assert ast.literal_eval(row["XYSpacing"]) == pytest.approx([sy, sx])


def test_hu_storage_modes_agree_and_double_rescale_is_refused(tmp_path):
    hu = np.random.default_rng(0).choice([-1000.0, -850.0, 40.0, 700.0], size=(8, 20, 20)).astype(np.float32)
    write_nifti(tmp_path / "raw.nii.gz", hu + 1024, (2.0, 0.8, 0.8))
    write_nifti(tmp_path / "hu.nii.gz", hu, (2.0, 0.8, 0.8))
    write_nifti(tmp_path / "hdr.nii.gz", hu + 1024, (2.0, 0.8, 0.8), (1.0, -1024.0))
    reads = {k: read_volume(tmp_path / f"{k}.nii.gz", 1.0, -1024.0) for k in ("raw", "hu", "hdr")}
    assert [r.how for r in reads.values()] == ["csv-rescaled", "already-hu", "header-scaled"]
    for r in reads.values():
        np.testing.assert_array_equal(r.hu, hu)
    with pytest.raises(DataError, match="hu.nii.gz.*already in HU.*refusing"):
        read_volume(tmp_path / "hu.nii.gz", 1.0, -1024.0, rescale="always")


def test_clean_text_matches_upstream():
    assert clean_text('Lungs "clear" (ok).', "Not given.") == "Lungs clear ok."
    assert clean_text("A's.", "B.") == "As. B."
    assert clean_text(float("nan"), "Impression.") == "Impression."


@pytest.fixture()
def tree_copy(tiny_tree, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_tree, dst)
    return Layout.find(dst)


def test_missing_volume_file(tree_copy):
    ds = CTRateDataset(tree_copy.root, "train", size="tiny")
    path = tree_copy.volume_path(ds.names[0])
    path.unlink()
    with pytest.raises(DataError, match=f"{path.name}: volume file is missing"):
        ds[0]


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_corrupt_volume(tree_copy, damage):
    ds = CTRateDataset(tree_copy.root, "train", size="tiny")
    path = tree_copy.volume_path(ds.names[1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a nifti at all" * 10)
    with pytest.raises(DataError, match=f"{path.name}: cannot read the NIfTI volume.*corrupt or truncated"):
        ds[1]
    skipping = CTRateDataset(tree_copy.root, "train", size="tiny", skip_bad=True)
    kept = list(skipping)
    assert len(kept) == len(ds) - 1 and [n for n, _ in skipping.skipped] == [ds.names[1]]


def test_csv_without_expected_columns(tree_copy):
    csv = tree_copy.reports_csv("train")
    pd.read_csv(csv).drop(columns=["Findings_EN"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="train_reports.csv: missing column\\(s\\) Findings_EN"):
        CTRateDataset(tree_copy.root, "train", size="tiny")


def test_missing_label_row_and_skip_bad(tree_copy, capsys):
    csv = tree_copy.labels_csv("train")
    frame = pd.read_csv(csv)
    dropped = frame["VolumeName"].iloc[0].replace(".nii.gz", "")
    frame.iloc[1:].to_csv(csv, index=False)
    with pytest.raises(DataError, match=f"train_predicted_labels.csv: no row for volume {dropped}"):
        CTRateDataset(tree_copy.root, "train", size="tiny")
    assert ctrate.main(["--src", str(tree_copy.root), "--split", "train", "--size", "tiny"]) == 2
    assert "no row for volume" in capsys.readouterr().err
    assert ctrate.main(["--src", str(tree_copy.root), "--split", "train", "--size", "tiny", "--skip-bad"]) == 0
    assert "1 skipped" in capsys.readouterr().out


def test_missing_csv_and_folder(tree_copy, tmp_path):
    tree_copy.metadata_csv("train").unlink()
    with pytest.raises(DataError, match="train_metadata.csv: CSV file is missing"):
        CTRateDataset(tree_copy.root, "train", size="tiny")
    with pytest.raises(DataError, match="data folder does not exist"):
        CTRateDataset(tmp_path / "nowhere", "train", size="tiny")


