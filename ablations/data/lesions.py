"""Paint the findings that sit on top of anatomy: lesions, fluid, calcium and metal.

One painter per abnormality, registered in `PAINTERS`. Thin structures (wires, plaques, septa) get a
radius of at least about half a voxel so they still show at coarse grids, the way partial-volume
blooming makes small dense objects visible on real low-resolution CT.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ablations.data.anatomy import LOBES, Anatomy
from ablations.data.chest import aorta_path, coronary_paths
from ablations.data.findings import Finding
from ablations.data.geometry import Canvas, Vec3
from ablations.data.tissues import CALCIUM_HU, HU, METAL_HU, Tissue

T = Tissue
L = T.LESION
_LUNGISH = (T.LUNG, T.VESSEL, T.LESION)
_SOFTISH = (T.FAT, T.SOFT, T.BLOOD, T.LUNG, T.HEART, T.LESION)

Painter = Callable[[Canvas, Anatomy, Finding, np.random.Generator], None]
PAINTERS: dict[str, Painter] = {}


def _painter(name: str) -> Callable[[Painter], Painter]:
    def register(fn: Painter) -> Painter:
        PAINTERS[name] = fn
        return fn
    return register


def _vis(c: Canvas, radius: float) -> float:
    return max(radius, 0.55 * max(c.grid.step(1), c.grid.step(2)))


def _vis3(c: Canvas, radii: tuple[float, float, float]) -> tuple[float, float, float]:
    """Per-axis radii of at least 0.87 voxel: then the voxel nearest the centre is always inside."""
    return tuple(max(r, 0.87 * c.grid.step(axis)) for r, axis in zip(radii, (2, 1, 0)))  # type: ignore[return-value]


def _along(path: list[Vec3], t: float) -> tuple[np.ndarray, np.ndarray]:
    """Point and unit tangent at fraction t of a polyline's length."""
    pts = np.array(path, dtype=np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = t * seg.sum()
    i = int(min(np.searchsorted(np.cumsum(seg), s), len(seg) - 1))
    frac = (s - (np.cumsum(seg)[i] - seg[i])) / seg[i]
    d = (pts[i + 1] - pts[i]) / seg[i]
    return pts[i] + frac * (pts[i + 1] - pts[i]), d


def _perp(d: np.ndarray, angle: float) -> np.ndarray:
    a = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(d, a)
    return np.cos(angle) * a + np.sin(angle) * b


def paint_findings(c: Canvas, anatomy: Anatomy, findings: list[Finding]) -> None:
    """Paint every finding that has a painter; anatomy-level findings were applied before rendering."""
    # Effusions go last among lung findings: fluid lies over whatever the dependent lung contained.
    order = sorted(findings, key=lambda f: (f.name == "Pleural effusion", f.name == "Medical material"))
    for f in order:
        painter = PAINTERS.get(f.name)
        if painter is not None:
            painter(c, anatomy, f, np.random.default_rng(f.seed))


@_painter("Medical material")
def _metal(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    hx, hy, hz = a.heart_c
    front = a.body_cy - a.body_b + a.fat_mm * 0.5 + 3.0
    atrium = (hx - 0.6 * a.heart_radii[0] * a.heart_scale, hy, hz + 0.2 * a.heart_radii[2])
    svc = (-30.0, a.trachea_y - 20.0, a.carina_z)
    wire = _vis(c, 1.0)
    if f.kind in ("pacemaker", "port catheter"):
        side = 1.0 if f.kind == "pacemaker" else -1.0
        device = (side * 0.5 * a.body_a, front, a.z_top - 35.0)
        radii = (22.0, 5.0, 17.0) if f.kind == "pacemaker" else (12.0, 6.0, 12.0)
        c.ellipsoid(device, radii, METAL_HU, L)
        c.tube([device, (side * 0.25 * a.body_a, front + 15.0, a.z_top - 10.0),
                (-32.0, a.trachea_y - 20.0, a.z_top), svc, atrium], wire, METAL_HU, L, where=_SOFTISH)
    elif f.kind == "sternotomy wires":
        st_y = a.body_cy - a.cavity_ab[1] - 6.0
        for z in np.linspace(a.heart_c[2], a.z_top - 15.0, 5):
            ring = [(17.0 * np.cos(t), st_y + 9.0 * np.sin(t), z) for t in np.linspace(0, 2 * np.pi, 13)]
            c.tube(ring, wire, METAL_HU, L)
    else:  # surgical clips near a hilum
        hilum = np.array([rng.choice([-1.0, 1.0]) * 0.33 * a.cavity_ab[0], a.trachea_y + 8.0, a.carina_z - 25.0])
        for _ in range(int(rng.integers(4, 8))):
            p = hilum + rng.normal(0, 10, 3)
            d = rng.normal(0, 1, 3)
            c.capsule(tuple(p), tuple(p + 6.0 * d / np.linalg.norm(d)), wire, METAL_HU, L)


@_painter("Arterial wall calcification")
def _aortic_calcium(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    path = aorta_path(a)[1:6]
    count = {"mild": 6, "moderate": 14, "extensive": 28}[f.kind]
    for _ in range(count):
        p, d = _along(path, rng.uniform(0.05, 1.0))
        r = a.aorta_radius * (0.8 if p[2] < a.carina_z + 20 else 1.0)
        centre = p + _perp(d, rng.uniform(0, 2 * np.pi)) * r
        length = rng.uniform(3, 9)
        c.capsule(tuple(centre - d * length / 2), tuple(centre + d * length / 2), _vis(c, 1.5), CALCIUM_HU, L,
                  where=(T.SOFT, T.BLOOD, T.FAT))


@_painter("Coronary artery wall calcification")
def _coronary_calcium(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    paths = coronary_paths(a)
    for vessel in f.sites:
        for _ in range(int(rng.integers(3, 7))):
            p, d = _along(paths[vessel], rng.uniform(0.0, 0.7))
            c.capsule(tuple(p - 2 * d), tuple(p + 2 * d), _vis(c, 1.8), CALCIUM_HU, L, where=(T.BLOOD, T.FAT, T.HEART))


def _station(a: Anatomy, name: str) -> Vec3:
    ty, cz, ca = a.trachea_y, a.carina_z, a.cavity_ab[0]
    return {"right paratracheal": (-(a.trachea_radius + 12.0), ty, cz + 22.0),
            "subcarinal": (0.0, ty + 14.0, cz - 20.0),
            "prevascular": (2.0, ty - 45.0, cz + 22.0),
            "right hilar": (-0.3 * ca - 8.0, ty + 4.0, cz - 34.0),
            "left hilar": (0.33 * ca + 8.0, ty + 8.0, cz - 42.0),
            "aortopulmonary window": (20.0, ty - 10.0, cz + 6.0)}[name]


@_painter("Lymphadenopathy")
def _nodes(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    for site, short_axis in zip(f.sites, f.sizes):
        r = short_axis / 2
        c.ellipsoid(_station(a, site), _vis3(c, (r * 1.15, r, r * 1.4)), 38.0, L,
                    where=(T.FAT, T.LUNG, T.VESSEL, T.SOFT))


@_painter("Emphysema")
def _emphysema(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    count, (rlo, rhi) = {"centrilobular": (40, (2.5, 6.0)), "paraseptal": (25, (4.0, 8.0)),
                         "bullous": (4, (12.0, 25.0))}[f.kind]
    for lobe in f.sites:
        for p in a.random_points(rng, lobe, count):
            r = rng.uniform(rlo, rhi)
            c.ellipsoid(tuple(p), _vis3(c, (r, r, r * 1.1)), -985.0, L, where=(T.LUNG,))


@_painter("Atelectasis")
def _atelectasis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    for lobe in f.sites:
        pts = a.random_points(rng, lobe, 40, margin=4.0)
        p = pts[np.argmax(pts[:, 1] - 0.5 * pts[:, 2])]  # posterior and basal: where lung collapses first
        if f.kind == "subsegmental":
            d = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0.15)])
            d /= np.linalg.norm(d)
            half = rng.uniform(18, 30)
            c.capsule(tuple(p - d * half), tuple(p + d * half), _vis(c, 2.5), 25.0, L, where=_LUNGISH)
        else:
            radii = (rng.uniform(18, 28), rng.uniform(8, 12), rng.uniform(12, 20))
            c.ellipsoid(tuple(p), radii, 30.0, L, where=_LUNGISH)


@_painter("Lung nodule")
def _nodules(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    value = 450.0 if f.kind == "calcified" else 40.0
    for lobe, size in zip(f.sites, f.sizes):
        p = a.random_points(rng, lobe, 1, margin=size / 2 + 4.0)[0]
        r = size / 2
        c.ellipsoid(tuple(p), _vis3(c, (r, r * rng.uniform(0.85, 1.0), r * rng.uniform(0.85, 1.1))), value, L,
                    where=_LUNGISH)


def _patches(c: Canvas, a: Anatomy, lobes: tuple[str, ...], rng: np.random.Generator, n: tuple[int, int],
             radius: tuple[float, float], value: float, where: tuple[int, ...], sizes: tuple[float, ...] = ()) -> None:
    for i, lobe in enumerate(lobes):
        centre = a.random_points(rng, lobe, 1, margin=10.0)[0]
        spread = sizes[i] / 3 if sizes else 15.0
        for _ in range(int(rng.integers(*n))):
            r = rng.uniform(*radius)
            c.ellipsoid(tuple(centre + rng.normal(0, spread, 3)), (r, r * 0.9, r * 1.1), value, L, where=where)


@_painter("Lung opacity")
def _ground_glass(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    # Ground glass leaves vessels visible, so it only replaces aerated lung.
    _patches(c, a, f.sites, rng, (4, 8), (8.0, 18.0), -560.0, (T.LUNG,))


@_painter("Consolidation")
def _consolidation(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    # Airways are left untouched: they stay dark inside the dense lung as air bronchograms.
    _patches(c, a, f.sites, rng, (3, 6), (12.0, 22.0), 35.0, _LUNGISH, f.sizes)


@_painter("Pulmonary fibrotic sequela")
def _fibrosis(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    for lobe in f.sites:
        for p in a.random_points(rng, lobe, int(rng.integers(4, 8)), margin=5.0):
            d = rng.normal(0, 1, 3)
            d /= np.linalg.norm(d)
            half = rng.uniform(8, 20) if f.kind == "bands" else rng.uniform(4, 9)
            c.capsule(tuple(p - d * half), tuple(p + d * half), _vis(c, 1.5), -60.0, L, where=_LUNGISH)


@_painter("Pleural effusion")
def _pleural_effusion(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    ca, cb = a.cavity_ab
    for side, depth in zip(f.sites, f.sizes):
        sign = -1.0 if side == "right" else 1.0
        dome = a.dome_right if side == "right" else a.dome_left
        base = dome - 1.6 * a.dome_height
        top = dome + 2.5 * depth

        def mask(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
            s = a.cavity_scale(z)
            half = np.sqrt(np.clip(1 - (x / (ca * s + 1e-3)) ** 2, 0, 1))
            posterior = a.body_cy + cb * s * half  # the cavity's back wall at this x
            taper = np.clip((top - z) / (top - base), 0.0, 1.0)  # the fluid layer thins towards its meniscus
            return ((sign * x > 0) & (y > posterior - depth * (0.3 + taper)) & a.in_cavity(z, y, x)
                    & (z > a.diaphragm_z(y, x)))

        box = c.grid.box((min(0, sign * ca), a.body_cy - cb, base), (max(0, sign * ca), a.body_cy + cb, top))
        c.paint(box, mask, HU[T.FLUID] + 2.0, L, where=(T.LUNG, T.VESSEL, T.LESION, T.AIRWAY, T.AIRWAY_WALL))


@_painter("Mosaic attenuation pattern")
def _mosaic(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    for lobe in f.sites:
        for i, p in enumerate(a.random_points(rng, lobe, 8)):
            r = rng.uniform(12, 22)
            c.ellipsoid(tuple(p), (r, r, r), -945.0 if i % 2 == 0 else -740.0, L, where=(T.LUNG,))


@_painter("Interlobular septal thickening")
def _septa(c: Canvas, a: Anatomy, f: Finding, rng: np.random.Generator) -> None:
    period = rng.uniform(11, 15)  # secondary pulmonary lobules are 1-2.5 cm across
    width = _vis(c, 0.9)
    phase = rng.uniform(0, period, 3)
    ca, cb = a.cavity_ab
    wanted = np.array([LOBES.index(s) for s in f.sites])

    def mask(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        s = a.cavity_scale(z) + 1e-3
        peripheral = (x / (ca * s)) ** 2 + ((y - a.body_cy) / (cb * s)) ** 2 > 0.45
        lattice = ((np.abs(np.mod(x + phase[0], period) - period / 2) < width / 2)
                   | (np.abs(np.mod(y + phase[1], period) - period / 2) < width / 2)
                   | (np.abs(np.mod(z + phase[2], period) - period / 2) < width / 2))
        return peripheral & lattice & np.isin(a.lobe_of(z, y, x), wanted)

    c.paint(c.grid.full, mask, -250.0, L, where=(T.LUNG,))


# Drawn as anatomy changes in findings.apply_to_anatomy; listed so every label has a known renderer.
ANATOMY_LEVEL = ("Cardiomegaly", "Pericardial effusion", "Hiatal hernia", "Peribronchial thickening", "Bronchiectasis")
