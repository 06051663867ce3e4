"""What real CT-RATE trees bring that the synthetic one does not: the original (v1) folder layout with
CSV spacing, header/CSV spacing disagreements, a stale header intercept on HU data, duplicated CSV
rows, volumes behind Hugging Face cache symlinks, and the `data` block the rows document."""

import ast
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ablations.data import prepare
from ablations.data.ctrate import CTRateDataset, read_csv
from ablations.data.errors import DataError
from ablations.data.labels import ABNORMALITIES
from ablations.data.layout import Layout
from ablations.data.resample import target_shape
from ablations.data.volume_io import read_volume
from ablations.infer import TreeMetadata, tree_metadata
from ablations.tree_info import describe_data
from tests.ablations.data.nifti import write_nifti

REPO = Path(__file__).resolve().parents[3]
# Air, lung, soft tissue and bone: at least 1 % air near -1000 HU, as `auto` needs to recognise HU.
TISSUES_HU = np.array([-1000.0, -850.0, 40.0, 700.0], np.float32)


def _hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(TISSUES_HU, size=shape)


def _append_rows(layout: Layout, split: str, name: str, xy_spacing: str, z_spacing: float) -> None:
    """Give a new volume the three CSV rows the loader needs (slope 1 / intercept -1024, as CT-RATE's)."""
    rows = {layout.metadata_csv(split): {"VolumeName": f"{name}.nii.gz", "XYSpacing": xy_spacing,
                                         "ZSpacing": z_spacing, "RescaleSlope": 1.0, "RescaleIntercept": -1024.0},
            layout.reports_csv(split): {"VolumeName": f"{name}.nii.gz", "Findings_EN": "Lungs clear.",
                                        "Impressions_EN": "Normal."},
            layout.labels_csv(split): {"VolumeName": f"{name}.nii.gz", **{k: 0 for k in ABNORMALITIES}}}
    for csv, row in rows.items():
        pd.concat([pd.read_csv(csv), pd.DataFrame([row])], ignore_index=True).to_csv(csv, index=False)


@pytest.fixture()
def tree(tiny_tree: Path, tmp_path: Path) -> Layout:
    shutil.copytree(tiny_tree, tmp_path / "copy")
    return Layout.find(tmp_path / "copy")


def test_original_v1_layout_is_read_with_the_csv_spacing(tree: Layout):
    n_valid = len(CTRateDataset(tree.root, "valid", size="tiny"))
    (tree.root / "valid_fixed").rename(tree.root / "valid")
    # A v1 file as reported: blank header pixdim (1, 1, 1), raw stored values (HU + 1024), odd shape;
    # the CSV holds the true spacing, 1.5 mm slices of 0.7 mm pixels.
    name, hu = "valid_901_a_1", _hu((7, 13, 11), seed=1)
    write_nifti(tree.root / "valid" / "valid_901" / "valid_901_a" / f"{name}.nii.gz", hu + 1024.0, (1.0, 1.0, 1.0))
    _append_rows(tree, "valid", name, "[0.7, 0.7]", 1.5)

    ds = CTRateDataset(tree.root, "valid", size="tiny")
    assert len(ds) == n_valid + 1 and name in ds.names
    raw = ds.raw(name)
    assert raw.spacing == pytest.approx((1.5, 0.7, 0.7)) and raw.spacing_source == "csv"
    # ablations.infer, handed the same file, finds the same scaling and spacing in the tree.
    assert tree_metadata(tree.volume_path(name)) == TreeMetadata(1.0, -1024.0, (1.5, 0.7, 0.7), "csv")
    assert raw.how == "csv-rescaled"
    np.testing.assert_array_equal(raw.hu, hu)
    assert ds.names[0] != name and ds[0].volume.shape == (1, *target_shape("tiny"))  # a synthetic one, read end to end

    # With both folders present the v2 one wins, as on Hugging Face today.
    (tree.root / "valid_fixed").mkdir()
    assert tree.volume_dir("valid") == tree.root / "valid_fixed"
    (tree.root / "valid_fixed").rmdir()

    # A v1 volume without a metadata row has no trustworthy spacing at all: refused, naming the file.
    meta = pd.read_csv(tree.metadata_csv("valid"))
    meta[meta["VolumeName"] != f"{name}.nii.gz"].to_csv(tree.metadata_csv("valid"), index=False)
    with pytest.raises(DataError, match=f"{name}.nii.gz: this volume from CT-RATE's original upload takes its "
                                        "spacing from the metadata CSV"):
        CTRateDataset(tree.root, "valid", size="tiny").raw(name)


def test_missing_volume_folder_names_both_layouts(tree: Layout):
    shutil.rmtree(tree.root / "valid_fixed")
    with pytest.raises(DataError, match=r"no .nii.gz volumes found \(expected valid_fixed/.*, or valid/.*original"):
        CTRateDataset(tree.root, "valid", size="tiny")


def test_fixed_volume_keeps_header_spacing_and_warns_once_when_the_csv_disagrees(tree: Layout, caplog):
    name = "valid_902_b_2"
    path = write_nifti(tree.volume_path(name), _hu((5, 9, 15), seed=2), (1.25, 0.8, 0.8))
    assert path.parent.parent.parent.name == "valid_fixed"
    _append_rows(tree, "valid", name, "[0.7, 0.7]", 1.25)  # x/y 12.5 % off the header's 0.8 mm
    ds = CTRateDataset(tree.root, "valid", size="tiny")
    with caplog.at_level(logging.WARNING, logger="ablations.data.ctrate"):
        first, again = ds.raw(name), ds.raw(name)  # as two epochs read it
    for raw in (first, again):
        assert raw.spacing == pytest.approx((1.25, 0.8, 0.8)) and raw.spacing_source == "header"
        assert len(raw.notes) == 1
    warnings = [r.getMessage() for r in caplog.records if "differs from the metadata CSV" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{name}.nii.gz" in warnings[0] and "(1.25, 0.8, 0.8)" in warnings[0] and "(1.25, 0.7, 0.7)" in warnings[0]

    # Within 1 % on every axis (0.805 vs 0.8 mm), and without a CSV spacing at all (infer, old callers): silent.
    other = write_nifti(tree.root.parent / "other.nii.gz", _hu((5, 9, 15), seed=3), (1.25, 0.8, 0.8))
    close = read_volume(other, 1.0, -1024.0, csv_spacing=(1.25, 0.805, 0.805))
    assert close.spacing_source == "header" and close.notes == ()
    alone = read_volume(other, 1.0, -1024.0)
    assert alone.spacing == pytest.approx((1.25, 0.8, 0.8)) and alone.notes == ()


@pytest.mark.parametrize("csv", [(1.0, -1024.0), (None, None)])
def test_stale_header_intercept_on_hu_data_is_ignored(tmp_path, csv):
    # Stored values already in HU, but the header says intercept -1024 (the v2 double-scaling pitfall,
    # CT-CLIP#50, through the header): read as the header says, air would sit at -2024 HU.
    hu = _hu((9, 17, 13), seed=4)
    path = write_nifti(tmp_path / "stale.nii.gz", hu, (1.5, 0.7, 0.7), slope_inter=(1.0, -1024.0))
    assert nib.load(str(path)).dataobj.inter == -1024.0  # the file really carries the stale intercept
    raw = read_volume(path, *csv)
    assert raw.how == "already-hu"
    np.testing.assert_array_equal(raw.hu, hu)
    assert raw.hu.min() == -1000.0
    assert len(raw.notes) == 1 and "ignoring the header's slope 1 / intercept -1024" in raw.notes[0]


def test_nothing_plausible_with_a_header_scaling_is_refused(tmp_path):
    # No reading puts air near -1000 HU: stored 200/700, header-scaled -824/-324, CSV on top -1848/-1348.
    tissue = np.random.default_rng(5).choice([200.0, 700.0], size=(6, 11, 7))
    path = write_nifti(tmp_path / "noair.nii.gz", tissue, (1.5, 0.7, 0.7), slope_inter=(1.0, -1024.0))
    with pytest.raises(DataError, match="noair.nii.gz: neither the stored values nor the metadata CSV"):
        read_volume(path, 1.0, -1024.0)


def test_duplicated_volume_rows_keep_the_last_and_warn_on_conflicts(tmp_path, caplog):
    csv = tmp_path / "validation_reports.csv"
    pd.DataFrame({"VolumeName": ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz", "valid_1_a_1", "valid_3_a_1.nii.gz",
                                 "valid_3_a_1.nii.gz", "valid_2_a_1.nii.gz"],
                  "Findings_EN": ["first", "same", "last", "x", "y", "same"],
                  "Impressions_EN": ["i", "j", "i", "k", "k", "j"]}).to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="ablations.data.ctrate"):
        frame = read_csv(csv, ["VolumeName", "Findings_EN", "Impressions_EN"])
    assert frame.index.tolist() == ["valid_1_a_1", "valid_3_a_1", "valid_2_a_1"]
    assert frame["Findings_EN"].tolist() == ["last", "y", "same"]  # upstream: a dict filled row by row
    # valid_1 and valid_3 disagree; valid_2's repeat is identical and harmless.
    assert [r.getMessage() for r in caplog.records] == [
        f"{csv}: 2 VolumeName(s) have rows that disagree; using the last row of each, as upstream does"]


def test_infer_finds_the_metadata_of_a_volume_in_a_hugging_face_cache(tmp_path):
    # The HF cache: snapshots/<rev>/dataset/... are symlinks into blobs/, outside the tree.
    blob = write_nifti(tmp_path / "hub" / "blobs" / "volume.nii.gz", _hu((5, 7, 9)), (1.5, 0.7, 0.7))
    blob = blob.rename(blob.with_name("3f2a9c"))  # blobs are named by hash, without an extension
    dataset = tmp_path / "hub" / "snapshots" / "rev0" / "dataset"
    volume = dataset / "valid_fixed" / "valid_7" / "valid_7_a" / "valid_7_a_1.nii.gz"
    volume.parent.mkdir(parents=True)
    volume.symlink_to(blob)
    (dataset / "metadata").mkdir()
    pd.DataFrame({"VolumeName": ["valid_6_a_1.nii.gz", "valid_7_a_1.nii.gz", "valid_7_a_1.nii.gz"],
                  "RescaleSlope": [1.0, 1.0, 2.0], "RescaleIntercept": [-1024.0, -1000.0, -8192.0]}
                 ).to_csv(dataset / "metadata" / "validation_metadata.csv", index=False)
    assert volume.resolve() == blob.resolve()
    # The last of the duplicated rows, as the training loader's read_csv keeps it.
    assert tree_metadata(volume) == TreeMetadata(2.0, -8192.0, None, "header")


def test_schema_documents_every_data_field_that_run_writes(tiny_tree, tmp_path):
    # run.py's `data_info` literal becomes each row's `data` block: its own keys, and what it unpacks
    # from describe_data, for a tree and for shards; `classes` is popped into the row's top-level
    # `classes` before the row is written.
    tree = ast.parse((REPO / "ablations" / "run.py").read_text())
    literal = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "data_info" for t in node.targets))
    assert any(key is None and "describe_data" in ast.unparse(value)
               for key, value in zip(literal.keys, literal.values))
    written = {key.value for key in literal.keys if key is not None} - {"classes"}
    assert prepare.main(["--src", str(tiny_tree), "--out", str(tmp_path), "--size", "tiny", "--split", "train"]) == 0
    written |= set(describe_data(tiny_tree, ["train"])) | set(describe_data(tmp_path, ["train"]))
    row = next(line for line in (REPO / "docs" / "accuracy-schema.md").read_text().splitlines()
               if line.startswith("| `data` |"))
    documented = set(row.split("|")[3].replace("`", " ").replace(",", " ").split())
    assert written and written <= documented, sorted(written - documented)
