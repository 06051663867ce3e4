"""The phantom: tissue HU ranges from the literature, each abnormality changes the volume where it should."""

import numpy as np
import pytest

from ablations.data.anatomy import Anatomy
from ablations.data.findings import _sample_one
from ablations.data.geometry import Grid
from ablations.data.labels import ABNORMALITIES
from ablations.data.phantom import render_scan
from ablations.data.tissues import Tissue as T

GRID = Grid((40, 96, 96), (9.0, 3.75, 3.75), 1.0)  # a whole 360 mm chest, coarse enough to be quick
ANATOMY = Anatomy.sample(np.random.default_rng(11))

# Unenhanced-CT attenuation of each tissue, from radiology texts (not from the generator's table).
LITERATURE_HU = {T.AIR: (-1100, -950), T.FAT: (-150, -50), T.SOFT: (20, 70), T.LUNG: (-950, -700),
                 T.HEART: (20, 60), T.BLOOD: (20, 60), T.LIVER: (40, 70), T.MARROW: (100, 450), T.BONE: (300, 1900)}


@pytest.fixture(scope="module")
def base():
    return render_scan(ANATOMY, [], GRID, blur=False)


def test_tissue_hu_ranges_with_noise():
    ph = render_scan(ANATOMY, [], GRID, noise_hu=15.0, noise_seed=1)
    for tissue, (lo, hi) in LITERATURE_HU.items():
        values = ph.hu[ph.tissue == tissue]
        assert values.size > 20, tissue.name
        assert lo <= np.median(values) <= hi, (tissue.name, float(np.median(values)))
    # Scanner noise is there, and not absurd: measured in the air outside the body (a corner).
    assert 8 < np.std(ph.hu[:, :6, :6]) < 25


def test_render_is_deterministic():
    a = render_scan(Anatomy.sample(np.random.default_rng(5)), [], GRID, noise_hu=10.0, noise_seed=2)
    b = render_scan(Anatomy.sample(np.random.default_rng(5)), [], GRID, noise_hu=10.0, noise_seed=2)
    c = render_scan(Anatomy.sample(np.random.default_rng(6)), [], GRID, noise_hu=10.0, noise_seed=2)
    assert np.array_equal(a.hu, b.hu) and not np.array_equal(a.hu, c.hu)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        for axis in range(3):
            grown |= np.roll(out, 1, axis) | np.roll(out, -1, axis)
        out = grown
    return out


LUNGISH = (T.LUNG, T.VESSEL, T.AIRWAY, T.AIRWAY_WALL)


def _check(name, base, new):
    t0, v0, v1 = base.tissue, base.hu, new.hu
    changed = np.abs(v1 - v0) > 5
    assert changed.sum() > 0, "nothing changed"
    in_lung = np.isin(t0[changed], LUNGISH).mean()
    up, down = (v1 - v0)[changed] > 0, (v1 - v0)[changed] < 0
    new_vals = v1[changed]
    zz, yy, _ = np.nonzero(changed)
    lz, ly, _ = np.nonzero(t0 == T.LUNG)
    if name == "Medical material":
        assert new_vals.max() > 2000
    elif name in ("Arterial wall calcification", "Coronary artery wall calcification"):
        near = _dilate(t0 == (T.BLOOD if name.startswith("Arterial") else T.HEART), 2)
        assert new_vals.min() > 300 and near[changed].mean() > 0.9
    elif name == "Cardiomegaly":
        assert (new.tissue == T.HEART).sum() > 1.3 * (t0 == T.HEART).sum()
        assert (new.tissue == T.LUNG).sum() < (t0 == T.LUNG).sum()
    elif name == "Pericardial effusion":
        fluid = changed & (v1 >= 0) & (v1 <= 25)
        assert fluid.sum() > 50 and _dilate(t0 == T.HEART, 6)[fluid].mean() > 0.95
        assert (new.tissue == T.HEART).sum() == (t0 == T.HEART).sum()
    elif name == "Hiatal hernia":
        assert np.isin(t0[changed], (T.LUNG, T.FAT, T.SOFT, T.VESSEL)).all() and lz.min() <= zz.mean()
    elif name == "Lymphadenopathy":
        assert np.isin(t0[changed], (T.FAT, T.LUNG, T.VESSEL, T.SOFT)).all() and (20 <= new_vals).all()
        assert (np.abs(GRID.coord(2, np.nonzero(changed)[2])) < 90).all()  # mediastinum and hila
    elif name == "Emphysema":
        assert in_lung == 1 and down.all() and new_vals.max() < -950
    elif name in ("Atelectasis", "Lung nodule", "Consolidation", "Pulmonary fibrotic sequela"):
        assert in_lung > 0.95 and up.all() and new_vals.min() > -100
        if name == "Lung nodule":
            assert changed.sum() < 200
        if name == "Consolidation":
            assert changed.sum() > 200
    elif name == "Lung opacity":
        assert in_lung > 0.95 and ((-700 < new_vals) & (new_vals < -400)).all()
    elif name == "Pleural effusion":
        assert in_lung > 0.95 and ((0 <= new_vals) & (new_vals <= 30)).all()
        assert yy.mean() > ly.mean() and zz.mean() < lz.mean()  # dependent: posterior and basal
    elif name == "Mosaic attenuation pattern":
        assert in_lung > 0.95 and up.any() and down.any()
    elif name in ("Peribronchial thickening", "Bronchiectasis"):
        assert _dilate(np.isin(t0, (T.AIRWAY, T.AIRWAY_WALL)), 3)[changed].mean() > 0.9
        assert (up if name.startswith("Peri") else down).sum() > 0
    elif name == "Interlobular septal thickening":
        assert in_lung == 1 and up.all() and ((-400 < new_vals) & (new_vals < -100)).all()
    else:
        raise AssertionError(f"no expectation for {name}")


@pytest.mark.parametrize("name", ABNORMALITIES)
def test_each_abnormality_changes_the_volume_where_it_should(name, base):
    rng = np.random.default_rng(4)
    finding = _sample_one(name, rng)
    if name == "Lung nodule":
        finding = type(finding)(name, "solid", ("right upper lobe",), (8.0,), finding.seed)
    _check(name, base, render_scan(ANATOMY, [finding], GRID, blur=False))
