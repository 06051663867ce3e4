"""The synthetic CT-RATE generator: a volume depends only on the seed and its own plan.

`tiny_tree` (conftest.py) is 6 volumes, seed 3, valid fraction 0.5, made in one process. Its first
patient has two scans, which share one airway tree; its third has two, of which n=4 keeps one.
"""

import nibabel as nib
import numpy as np
import pandas as pd

from ablations.data.layout import Layout
from ablations.data.synthetic import generate_dataset, generate_volume, plan_volumes

SEED, VALID_FRACTION = 3, 0.5


def _volume(layout: Layout, name: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    img = nib.load(str(layout.volume_path(name)))
    return np.asarray(img.dataobj.get_unscaled()), img.affine, img.header.get_slope_inter()


def _assert_same_volume(a: Layout, b: Layout, name: str) -> None:
    (data_a, affine_a, scaling_a), (data_b, affine_b, scaling_b) = _volume(a, name), _volume(b, name)
    assert data_a.dtype == data_b.dtype == np.int16
    np.testing.assert_array_equal(data_a, data_b, err_msg=name)
    np.testing.assert_array_equal(affine_a, affine_b, err_msg=name)
    assert scaling_a == scaling_b, name  # (None, None) unless stored with the scaling in the header


def test_a_volume_depends_on_neither_n_nor_workers(tiny_tree, tmp_path):
    reference, fewer = Layout.find(tiny_tree), generate_dataset(tmp_path, 4, "tiny", SEED, VALID_FRACTION,
                                                               workers=2, progress=False)
    plans = plan_volumes(4, VALID_FRACTION)
    assert plans == plan_volumes(6, VALID_FRACTION)[:4]
    for plan in plans:
        _assert_same_volume(reference, fewer, plan.vid.name)
    for split in ("train", "valid"):
        for csv in (Layout.metadata_csv, Layout.reports_csv, Layout.labels_csv):
            mine = pd.read_csv(csv(fewer, split))
            full = pd.read_csv(csv(reference, split)).set_index("VolumeName").loc[mine["VolumeName"]]
            pd.testing.assert_frame_equal(mine, full.reset_index(), check_dtype=False)


def test_sharing_a_patients_airway_tree_changes_no_voxel(tiny_tree, tmp_path):
    # The dataset grows patient 0's tree once for both its scans; rendered alone, its second scan
    # grows its own, as any single volume did before trees were shared.
    second_scan = plan_volumes(6, VALID_FRACTION)[1]
    assert (second_scan.patient_index, second_scan.scan_index) == (0, 1)
    alone = Layout(tmp_path / "dataset")
    generate_volume(second_scan, "tiny", SEED, alone)
    _assert_same_volume(Layout.find(tiny_tree), alone, second_scan.vid.name)
