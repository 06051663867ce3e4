"""Render a normal chest (with the anatomy-level findings already folded into `Anatomy`) into HU.

Paint order matters: each structure overwrites what lies under it, from the body outline inwards,
then the mediastinum, lungs, heart, vessels, airways and bones. `where=` restricts a painter to the
tissues it may replace, e.g. pulmonary vessels only replace lung.
"""

from __future__ import annotations

import numpy as np

from ablations.data.airways import Branch, airway_tree
from ablations.data.anatomy import Anatomy
from ablations.data.geometry import Canvas, Grid, Vec3
from ablations.data.tissues import HU, LUNG_GRADIENT_HU, Tissue

T = Tissue
_NOT_BONE = tuple(t for t in Tissue if t not in (T.BONE, T.MARROW, T.AIR))


def lung_value(anatomy: Anatomy):
    """Lung attenuation with the gravity gradient: dependent (posterior) lung is denser."""
    _, cb = anatomy.cavity_ab
    top = anatomy.body_cy - cb

    def value(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        frac = np.clip((y - top) / (2 * cb), 0.0, 1.0)
        return HU[T.LUNG] - LUNG_GRADIENT_HU / 2 + LUNG_GRADIENT_HU * frac

    return value


def aorta_path(a: Anatomy) -> list[Vec3]:
    hx, hy, hz = a.heart_c
    rx, ry, rz = (r * a.heart_scale for r in a.heart_radii)
    ty, cz = a.trachea_y, a.carina_z
    desc_y = a.spine_y - a.spine_radius - 6.0
    return [(hx - 0.35 * rx, hy + 0.2 * ry, hz + 0.55 * rz), (-18.0, ty - 28.0, cz + 5.0),
            (-10.0, ty - 22.0, cz + 32.0), (6.0, ty - 4.0, cz + 42.0), (22.0, desc_y - 8.0, cz + 26.0),
            (25.0, desc_y, cz - 20.0), (22.0, desc_y, -400.0)]


def coronary_paths(a: Anatomy) -> dict[str, list[Vec3]]:
    """LAD, LCx and RCA on the heart surface, in the epicardial fat."""
    hx, hy, hz = a.heart_c
    rx, ry, rz = (r * a.heart_scale + 2.5 for r in a.heart_radii)

    def surface(theta: float, phi: float) -> Vec3:
        # theta: angle in the axial plane from +x (patient left) towards +y (posterior).
        return (hx + rx * np.cos(phi) * np.cos(theta), hy + ry * np.cos(phi) * np.sin(theta), hz + rz * np.sin(phi))

    deg = np.deg2rad
    return {
        "LAD": [surface(deg(-70), p) for p in np.linspace(0.55, -0.6, 8)],
        "LCx": [surface(deg(t), 0.25) for t in np.linspace(-60, 30, 6)],
        "RCA": [surface(deg(t), 0.15) for t in np.linspace(-115, -215, 8)],
    }


def render_chest(a: Anatomy, grid: Grid, tree: list[Branch] | None = None) -> Canvas:
    """The normal chest of `a` on `grid`, before findings, smoothing and noise."""
    c = Canvas(grid, HU[T.AIR], T.AIR)
    full = grid.full
    ca, cb = a.cavity_ab
    cy = a.body_cy

    # Body wall: fat outline, muscle inside it.
    c.paint(full, lambda z, y, x: (x / a.body_a) ** 2 + ((y - cy) / a.body_b) ** 2 <= 1, HU[T.FAT], T.FAT)
    ia, ib = a.body_a - a.fat_mm, a.body_b - a.fat_mm
    c.paint(full, lambda z, y, x: (x / ia) ** 2 + ((y - cy) / ib) ** 2 <= 1, HU[T.SOFT], T.SOFT)

    # Upper abdomen under the diaphragm: fat, the liver on the right, the stomach on the left.
    def below(z, y, x):
        return ((x / ca) ** 2 + ((y - cy) / cb) ** 2 <= 1) & (z <= a.diaphragm_z(y, x))

    c.paint(full, below, HU[T.FAT], T.FAT)
    c.paint(full, lambda z, y, x: below(z, y, x) & (x < 20) & (z > a.diaphragm_z(y, x) - 150), HU[T.LIVER], T.LIVER)
    c.ellipsoid((0.6 * ca, cy + 0.55 * cb, a.dome_left - 45), (30, 0.3 * cb, 40), HU[T.SOFT], T.SOFT, where=(T.FAT,))
    _stomach(c, (0.42 * ca, cy - 0.15 * cb, a.dome_left - 42), (42.0, 36.0, 30.0), where=(T.FAT,))

    # Thorax: mediastinal fat everywhere in the cavity, then the lungs carved out of it.
    c.paint(full, lambda z, y, x: a.in_cavity(z, y, x) & (z > a.diaphragm_z(y, x)), HU[T.FAT], T.FAT)
    c.paint(full, a.in_lung, lung_value(a), T.LUNG)

    _heart(c, a)
    _great_vessels(c, a)
    _airways_and_vessels(c, a, airway_tree(a) if tree is None else tree)
    _skeleton(c, a)
    return c


def _stomach(c: Canvas, center: Vec3, radii: Vec3, where: tuple[int, ...] | None) -> None:
    """A gastric wall around fluid, with a gas cap on top (the patient lies supine: gas is anterior)."""
    cx, cy, cz = center
    c.ellipsoid(center, radii, HU[T.SOFT], T.SOFT, where=where)
    inner = tuple(r - 4.0 for r in radii)
    c.ellipsoid(center, inner, HU[T.FLUID], T.FLUID, where=(T.SOFT,))
    c.ellipsoid((cx, cy - 0.35 * inner[1], cz), (inner[0] * 0.85, inner[1] * 0.55, inner[2] * 0.8), HU[T.AIR], T.AIR,
                where=(T.FLUID,))


def _heart(c: Canvas, a: Anatomy) -> None:
    center = a.heart_c
    outer = a.heart_outer_radii
    heart = tuple(r * a.heart_scale for r in a.heart_radii)
    c.ellipsoid(center, outer, HU[T.SOFT], T.SOFT)  # pericardium
    shell = tuple(r - 1.5 for r in outer)
    if a.pericardial_fluid_mm > 0:
        c.ellipsoid(center, shell, HU[T.FLUID], T.LESION)
    else:
        c.ellipsoid(center, shell, HU[T.FAT], T.FAT)
    c.ellipsoid(center, heart, HU[T.HEART], T.HEART)
    for path in coronary_paths(a).values():
        c.tube(path, 1.6, HU[T.BLOOD], T.BLOOD, where=(T.FAT, T.LESION, T.HEART))


def _great_vessels(c: Canvas, a: Anatomy) -> None:
    r = a.aorta_radius
    ty, cz = a.trachea_y, a.carina_z
    hx, hy, hz = a.heart_c
    hr = [x * a.heart_scale for x in a.heart_radii]
    path = aorta_path(a)
    for radius, value, tissue, where in ((r + 3.0, HU[T.FAT], T.FAT, (T.LUNG,)), (r + 1.5, HU[T.SOFT], T.SOFT, None),
                                         (r, HU[T.BLOOD], T.BLOOD, None)):
        c.tube(path[:4], radius, value, tissue, where)
        c.tube(path[3:], radius * 0.8, value, tissue, where)
    # Pulmonary trunk and arteries to the hila; superior vena cava on the right.
    trunk = [(hx - 0.05 * hr[0], hy - 0.55 * hr[1], hz + 0.6 * hr[2]), (12.0, ty - 14.0, cz - 10.0)]
    c.tube(trunk, 0.85 * r, HU[T.BLOOD], T.BLOOD)
    for hilum in ((-0.3 * a.cavity_ab[0], ty + 4.0, cz - 22.0), (0.33 * a.cavity_ab[0], ty + 8.0, cz - 30.0)):
        c.tube([trunk[1], hilum], 0.55 * r, HU[T.BLOOD], T.BLOOD)
    c.tube([(-34.0, ty - 18.0, a.z_top + 80.0), (-30.0, ty - 20.0, cz), (hx - 0.7 * hr[0], hy, hz + 0.5 * hr[2])],
           9.0, HU[T.BLOOD], T.BLOOD)
    # Oesophagus behind the trachea, through the hiatus into the stomach (a hernia pulls it up).
    ey = a.spine_y - a.spine_radius - 12.0
    eso = [(6.0, ey, a.z_top + 80.0), (12.0, ey, a.dome_left), (0.42 * a.cavity_ab[0], a.body_cy, a.dome_left - 40)]
    c.tube(eso, 7.0, HU[T.SOFT], T.SOFT, where=_NOT_BONE)
    c.tube(eso[:2], 1.5, HU[T.AIR], T.AIR, where=(T.SOFT,))
    if a.hernia_mm > 0:
        h = a.hernia_mm
        _stomach(c, (14.0, ey - 0.15 * h, a.dome_left + 0.45 * h), (0.55 * h, 0.45 * h, 0.6 * h),
                 where=(T.LUNG, T.FAT, T.SOFT, T.VESSEL))


def _airways_and_vessels(c: Canvas, a: Anatomy, tree: list[Branch]) -> None:
    # Pulmonary arteries run beside their bronchus with about the same calibre (artery:bronchus ~ 1).
    arteries = [b for b in tree if b.lobe is not None]
    starts, ends = [], []
    for b in arteries:
        p0, p1 = np.array(b.p0), np.array(b.p1)
        d = p1 - p0
        perp = np.array([d[1], -d[0], 0.0])  # d x (0, 0, 1), without np.cross's general-case overhead
        if np.linalg.norm(perp) < 1e-6:
            perp = np.array([1.0, 0.0, 0.0])
        offset = perp / np.linalg.norm(perp) * (b.radius * 2.2 + b.wall(a) + 0.5)
        starts.append(p0 + offset)
        ends.append(p1 + offset)
    c.capsules(starts, ends, [b.radius for b in arteries], HU[T.VESSEL], T.VESSEL, where=(T.LUNG,))
    walls = (T.LUNG, T.FAT, T.SOFT, T.VESSEL, T.AIRWAY_WALL)
    starts, ends = [b.p0 for b in tree], [b.p1 for b in tree]
    c.capsules(starts, ends, [b.lumen(a) + b.wall(a) for b in tree], HU[T.AIRWAY_WALL], T.AIRWAY_WALL, where=walls)
    c.capsules(starts, ends, [b.lumen(a) for b in tree], HU[T.AIRWAY], T.AIRWAY, where=walls + (T.AIRWAY,))


def _skeleton(c: Canvas, a: Anatomy) -> None:
    grid = c.grid
    sy, sr, period = a.spine_y, a.spine_radius, a.rib_spacing
    full = grid.full

    def vertebra(z: np.ndarray) -> np.ndarray:
        return np.mod(z - a.z_top, period) > 5.0  # 5 mm discs between vertebrae

    c.paint(full, lambda z, y, x: ((x / sr) ** 2 + ((y - sy) / sr) ** 2 <= 1) & vertebra(z), HU[T.BONE], T.BONE)
    ir = sr - 2.5
    c.paint(full, lambda z, y, x: ((x / ir) ** 2 + ((y - sy) / ir) ** 2 <= 1) & vertebra(z), HU[T.MARROW], T.MARROW)
    c.paint(full, lambda z, y, x: ((x / sr) ** 2 + ((y - sy) / sr) ** 2 <= 1) & ~vertebra(z), HU[T.SOFT], T.SOFT)
    canal_y = sy + sr + 9.0
    c.paint(full, lambda z, y, x: ((x / 13) ** 2 + ((y - canal_y) / 13) ** 2 <= 1) & vertebra(z), HU[T.BONE], T.BONE)
    c.paint(full, lambda z, y, x: (np.abs(x) < 4) & (y > canal_y) & (y < canal_y + 35) & vertebra(z),
            HU[T.BONE], T.BONE)
    c.paint(full, lambda z, y, x: (x / 8) ** 2 + ((y - canal_y) / 8) ** 2 <= 1, HU[T.FLUID], T.FLUID)

    ca, cb = a.cavity_ab
    for side in (-1.0, 1.0):
        for k in range(12):
            z0 = a.z_top - 5.0 - k * period
            end = np.deg2rad(155.0 - 5.0 * k)
            thetas = np.arange(0.2, end, 0.12)
            pts = []
            for t in thetas:
                z = z0 - 40.0 * t / np.pi
                s = float(a.cavity_scale(np.float32(z))) if z > a.z_top - 55 else 1.0
                s = max(s, 0.35)
                pts.append((side * (ca * s + 6.0) * np.sin(t), a.body_cy + (cb * s + 6.0) * np.cos(t), z))
            c.tube(pts, 5.0, HU[T.BONE], T.BONE, where=_NOT_BONE)
            c.tube(pts, 2.8, HU[T.MARROW], T.MARROW, where=(T.BONE,))
    # Sternum: a flat bone plate at the anterior midline, above the heart's lower edge.
    st_y = a.body_cy - cb - 6.0
    zlo, zhi = a.heart_c[2] - 20.0, a.z_top - 5.0
    box = grid.box((-16, st_y - 8, zlo), (16, st_y + 8, zhi))
    c.paint(box, lambda z, y, x: (x / 15) ** 2 + ((y - st_y) / 7) ** 2 <= 1, HU[T.BONE], T.BONE)
    c.paint(box, lambda z, y, x: (x / 12.5) ** 2 + ((y - st_y) / 4.5) ** 2 <= 1, HU[T.MARROW], T.MARROW)
